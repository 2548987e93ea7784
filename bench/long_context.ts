// One very long request against a live tsglang server: a token-id prompt of --input-len tokens
// through /generate (streamed), then the engine's pools and rank 0's device memory from
// /get_server_info. Prints one JSON line: time to first token (the prefill), the decode rate of
// the remaining tokens, and the memory figures to set beside `tsglang plan`.
//   node dist/bench/long_context.js --url http://127.0.0.1:30000 --input-len 1000000 --output-len 32
// node:http rather than fetch: a million-token prefill can outlast fetch's 300 s header timeout.

import { request } from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:30000" },
    "input-len": { type: "string", default: "1000000" },
    "output-len": { type: "string", default: "32" },
    vocab: { type: "string", default: "4096" },
  },
});
const inLen = Number(values["input-len"]);
const outLen = Number(values["output-len"]);
const vocab = Number(values.vocab);
const url = new URL(values.url!);

// Ids spread over the vocabulary (no tokenizer involved); a fixed pattern, so a rerun is the same prompt.
const ids = Array.from({ length: inLen }, (_, j) => 1000 + ((j * 104729) % (vocab - 1000)));
const body = JSON.stringify({ input_ids: ids, sampling_params: { max_new_tokens: outLen, temperature: 0, ignore_eos: true }, stream: true });

function post(): Promise<{ ttft: number; tokenTimes: number[]; completion: number; error: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const tokenTimes: number[] = [];
    let completion = 0;
    let buf = "";
    let error = "";
    const req = request({ host: url.hostname, port: url.port, path: "/generate", method: "POST", headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buf += chunk;
        let at: number;
        while ((at = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, at);
          buf = buf.slice(at + 2);
          const data = event.replace(/^data: /, "");
          if (data === "[DONE]") continue;
          try {
            const m = JSON.parse(data);
            if (m.error) error = JSON.stringify(m.error);
            const c = m.meta_info?.completion_tokens;
            if (typeof c === "number" && c > completion) {
              for (let i = completion; i < c; i++) tokenTimes.push(performance.now() - t0);
              completion = c;
            }
          } catch {
            error = `unparsable event: ${data.slice(0, 200)}`;
          }
        }
      });
      res.on("end", () => resolve({ ttft: tokenTimes[0] ?? NaN, tokenTimes, completion, error: res.statusCode === 200 ? error : `HTTP ${res.statusCode}: ${buf.slice(0, 500)}` }));
      res.on("error", reject);
    });
    req.setTimeout(0);
    req.on("error", reject);
    req.end(body);
  });
}

async function serverInfo(): Promise<Record<string, unknown>> {
  const res = await fetch(new URL("/get_server_info", url));
  const info = (await res.json()) as { internal_states?: Record<string, unknown>[] };
  return info.internal_states?.[0] ?? {};
}

const r = await post();
const state = await serverInfo();
const decodeMs = r.tokenTimes.length > 1 ? (r.tokenTimes[r.tokenTimes.length - 1] - r.tokenTimes[0]) / (r.tokenTimes.length - 1) : NaN;
console.log(
  JSON.stringify({
    input_len: inLen,
    output_len: outLen,
    completion_tokens: r.completion,
    error: r.error || undefined,
    ttft_s: +(r.ttft / 1000).toFixed(2),
    prefill_tokens_per_s: Math.round(inLen / (r.ttft / 1000)),
    decode_ms_per_token: +decodeMs.toFixed(2),
    decode_tokens_per_s: +(1000 / decodeMs).toFixed(1),
    server: state,
  }),
);
