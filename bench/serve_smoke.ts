// A short serving run against a live tsglang server: N concurrent /generate requests with
// token-id prompts (no tokenizer dependence), reporting request and token throughput.
//   node dist/bench/serve_smoke.js --url http://127.0.0.1:30000 --requests 64 --concurrency 16 --input-len 1024 --output-len 128 [--temperature 0.7]

import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:30000" },
    requests: { type: "string", default: "32" },
    concurrency: { type: "string", default: "8" },
    "input-len": { type: "string", default: "1024" },
    "output-len": { type: "string", default: "128" },
    vocab: { type: "string", default: "4096" },
    temperature: { type: "string", default: "0" },
  },
});
const n = Number(values.requests);
const conc = Number(values.concurrency);
const inLen = Number(values["input-len"]);
const outLen = Number(values["output-len"]);
const vocab = Number(values.vocab);

async function one(i: number): Promise<{ latency: number; ttft: number; tokens: number }> {
  const ids = Array.from({ length: inLen }, (_, j) => 1000 + ((i * 7919 + j * 104729) % (vocab - 1000)));
  const t0 = performance.now();
  const res = await fetch(`${values.url}/generate`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ input_ids: ids, sampling_params: { max_new_tokens: outLen, temperature: Number(values.temperature), ignore_eos: true }, stream: true }),
  });
  if (!res.ok || !res.body) throw new Error(`request ${i}: HTTP ${res.status} ${await res.text()}`);
  let ttft = 0;
  let last = "";
  const dec = new TextDecoder();
  for await (const chunk of res.body) {
    if (!ttft) ttft = performance.now() - t0;
    last += dec.decode(chunk as Uint8Array, { stream: true });
    if (last.length > 1 << 16) last = last.slice(-(1 << 15));
  }
  const m = [...last.matchAll(/"completion_tokens":\s*(\d+)/g)].pop();
  return { latency: performance.now() - t0, ttft, tokens: m ? Number(m[1]) : 0 };
}

const t0 = performance.now();
const results: { latency: number; ttft: number; tokens: number }[] = [];
let next = 0;
await Promise.all(
  Array.from({ length: conc }, async () => {
    while (next < n) results.push(await one(next++));
  }),
);
const wall = (performance.now() - t0) / 1000;
const tokens = results.reduce((a, r) => a + r.tokens, 0);
/** The median (the mean of the middle two for an even count: with 2 requests, not the slower one). */
const med = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
};
console.log(
  JSON.stringify({
    requests: n,
    concurrency: conc,
    input_len: inLen,
    output_len: outLen,
    temperature: Number(values.temperature),
    wall_s: wall,
    output_tokens_per_s: tokens / wall,
    requests_per_s: n / wall,
    median_ttft_ms: med(results.map((r) => r.ttft)),
    median_latency_ms: med(results.map((r) => r.latency)),
    median_decode_tokens_per_s_per_request: med(results.map((r) => (r.tokens - 1) / ((r.latency - r.ttft) / 1000))),
  }),
);
