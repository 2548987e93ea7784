// Acceptance tests: `tsglang launch` on the tiny fixtures, driven by the `openai` client and
// plain HTTP on loopback, compared with `tsglang generate` and transformers' references.

import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { readGolden, type Golden } from "../../src/model/golden.js";
import { Tokenizer } from "../../src/tokenizer/tokenizer.js";
import { fixturePath } from "../../src/util/repo.js";
import { post, sse } from "./harness.js";
import { launch, tsglang, type Launched } from "./launch_helper.js";

const CONTEXT = 512;

for (const fixture of ["scout-tiny", "maverick-tiny"]) {
  describe(`live server (${fixture})`, () => {
    let srv: Launched;
    let client: OpenAI;
    let golden: Golden;
    let tok: Tokenizer;
    const dir = fixturePath(fixture);

    before(async () => {
      srv = await launch(["--model-path", dir, "--served-model-name", fixture, "--context-length", String(CONTEXT), "--enable-metrics"]);
      client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none", maxRetries: 0 });
      golden = readGolden(dir);
      tok = await Tokenizer.load(dir);
    });
    after(async () => {
      await srv?.stop("SIGKILL");
    });

    it("greedy outputs equal `tsglang generate` and the reference", async () => {
      for (const p of golden.prompts) {
        const gen = tsglang("generate", "--model-path", dir, "--input-ids", p.prompt_ids.join(","), "--max-new-tokens", "16", "--json");
        assert.equal(gen.code, 0, gen.stderr);
        const want = JSON.parse(gen.stdout) as { output_ids: number[]; text: string };
        assert.deepEqual(want.output_ids, p.greedy_ids);

        const native = await post(`${srv.url}/generate`, { input_ids: p.prompt_ids, sampling_params: { max_new_tokens: 16, temperature: 0 } });
        assert.equal(native.status, 200, native.text);
        assert.deepEqual(native.json.output_ids, want.output_ids);

        const cmpl = await client.completions.create({ model: fixture, prompt: p.prompt_ids, max_tokens: 16, temperature: 0 });
        // The server trims a final EOS from the text, as SGLang does.
        const ids = want.output_ids;
        const trimmed = golden.prompts && tok.eosIds.includes(ids[ids.length - 1]) ? ids.slice(0, -1) : ids;
        assert.equal(cmpl.choices[0].text, tok.decode(trimmed, { skipSpecialTokens: true }));
        assert.equal(cmpl.usage!.completion_tokens, ids.length);
        if (p.text !== null) {
          const byText = await client.completions.create({ model: fixture, prompt: p.text, max_tokens: 16, temperature: 0 });
          assert.equal(byText.choices[0].text, cmpl.choices[0].text);
        }
      }
    });

    it("chat and completions, streaming and not, agree", async () => {
      const chatReq = { model: fixture, messages: [{ role: "system" as const, content: "Be brief." }, { role: "user" as const, content: "Tell me about foxes." }], max_tokens: 12, temperature: 0 };
      const full = await client.chat.completions.create(chatReq);
      let text = "";
      let usage: any;
      for await (const ch of await client.chat.completions.create({ ...chatReq, stream: true, stream_options: { include_usage: true } })) {
        text += ch.choices[0]?.delta.content ?? "";
        if (ch.usage) usage = ch.usage;
      }
      assert.equal(text, full.choices[0].message.content);
      assert.equal(usage.completion_tokens, full.usage!.completion_tokens);

      const cReq = { model: fixture, prompt: "Serving engines batch many requests", max_tokens: 12, temperature: 0 };
      const c = await client.completions.create(cReq);
      let ctext = "";
      for await (const ch of await client.completions.create({ ...cReq, stream: true })) ctext += ch.choices[0]?.text ?? "";
      assert.equal(ctext, c.choices[0].text);
    });

    it("32 concurrent greedy requests give exactly what each gives alone", async () => {
      const base = golden.prompts[2].prompt_ids;
      const reqs = Array.from({ length: 32 }, (_, i) => ({
        input_ids: [0, ...base.slice(1 + (i % 7), 8 + ((i * 13) % (base.length - 8)))],
        sampling_params: { max_new_tokens: 4 + ((i * 5) % 17), temperature: 0, ignore_eos: i % 2 === 0 },
      }));
      const alone: any[] = [];
      for (const r of reqs) alone.push((await post(`${srv.url}/generate`, r)).json);
      const together = await Promise.all(reqs.map((r) => post(`${srv.url}/generate`, r)));
      together.forEach((t, i) => {
        assert.equal(t.status, 200, t.text);
        assert.deepEqual(t.json.output_ids, alone[i].output_ids, `request ${i}`);
        assert.equal(t.json.text, alone[i].text);
      });
    });

    it("a repeated long prefix reports cached_tokens > 0", async () => {
      const prefix = golden.prompts[1].text!;
      const a = await client.completions.create({ model: fixture, prompt: prefix + " first", max_tokens: 2, temperature: 0 });
      const b = await client.completions.create({ model: fixture, prompt: prefix + " second", max_tokens: 2, temperature: 0 });
      assert.ok(a.usage!.prompt_tokens > 30);
      const cached = (b.usage as any).prompt_tokens_details.cached_tokens;
      assert.ok(cached > 20, `cached_tokens ${cached}`);
    });

    it("echo + logprobs returns the reference prompt logprobs (1e-3)", async () => {
      const V = golden.vocabSize;
      for (const p of golden.prompts) {
        const r = await client.completions.create({ model: fixture, prompt: p.prompt_ids, max_tokens: 1, temperature: 0, echo: true, logprobs: 1 });
        const lp = r.choices[0].logprobs!;
        const P = p.prompt_ids.length;
        assert.equal(lp.token_logprobs!.length, P + 1);
        assert.equal(lp.token_logprobs![0], null);
        for (let i = 1; i < P; i++) {
          const want = p.logprobs[(i - 1) * V + p.prompt_ids[i]];
          assert.ok(Math.abs(lp.token_logprobs![i]! - want) < 1e-3, `position ${i}: ${lp.token_logprobs![i]} vs ${want}`);
        }
        const wantGen = p.logprobs[(P - 1) * V + p.greedy_ids[0]];
        assert.ok(Math.abs(lp.token_logprobs![P]! - wantGen) < 1e-3);
        // lm_eval's is_greedy check: the top-1 alternative at each position is the token itself.
        const top = lp.top_logprobs![P]!;
        assert.equal(Object.keys(top)[0], lp.tokens![P]);
      }
    });

    it("stop strings and max_tokens 0", async () => {
      const p = golden.prompts[1];
      const full = await client.completions.create({ model: fixture, prompt: p.prompt_ids, max_tokens: 16, temperature: 0 });
      const text = full.choices[0].text;
      const stop = text.slice(3, 6);
      const r = await client.completions.create({ model: fixture, prompt: p.prompt_ids, max_tokens: 16, temperature: 0, stop: [stop] });
      assert.equal(r.choices[0].text, text.slice(0, text.indexOf(stop)));
      assert.equal(r.choices[0].finish_reason, "stop");
      assert.equal((r.choices[0] as any).matched_stop, stop);
      const z = await client.completions.create({ model: fixture, prompt: p.prompt_ids, max_tokens: 0, echo: true, logprobs: 0 });
      assert.equal(z.usage!.completion_tokens, 0);
      assert.equal(z.choices[0].logprobs!.token_logprobs!.length, p.prompt_ids.length);
    });

    it("bad input is answered 400/404 while a stream keeps flowing", async () => {
      const streaming = fetch(`${srv.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ model: fixture, prompt: "keep going", max_tokens: 40, ignore_eos: true, temperature: 0, stream: true }),
      }).then(sse);
      const chat = (extra: object) => ({ model: fixture, messages: [{ role: "user", content: "x" }], max_tokens: 2, ...extra });
      const bad: [string, unknown, number][] = [
        ["/v1/chat/completions", "{oops", 400],
        ["/v1/chat/completions", chat({ max_tokens: "many" }), 400],
        ["/v1/chat/completions", chat({ max_tokens: -3 }), 400],
        ["/v1/chat/completions", chat({ temperature: -1 }), 400],
        ["/v1/chat/completions", chat({ top_p: 2 }), 400],
        ["/v1/chat/completions", chat({ n: 0 }), 400],
        ["/v1/completions", { model: fixture, prompt: Array(CONTEXT + 1).fill(5) }, 400],
        ["/v1/completions", { model: fixture, prompt: [0, golden.vocabSize + 3] }, 400],
        ["/v1/chat/completions", chat({ model: "no-such-model" }), 404],
        ["/v1/chat/completions", chat({ messages: [] }), 400],
        ["/v1/chat/completions", chat({ messages: [{ role: "robot", content: "x" }] }), 400],
        ["/v1/unknown", {}, 404],
      ];
      for (const [path, body, status] of bad) {
        const r = await post(`${srv.url}${path}`, body);
        assert.equal(r.status, status, `${path} ${JSON.stringify(body).slice(0, 80)}: ${r.text}`);
        assert.equal(typeof r.json.error.message, "string");
      }
      const events = await streaming;
      assert.equal(events.at(-1), "[DONE]");
      assert.equal(events.at(-2).choices[0].finish_reason, "length");
    });

    it("a client that disconnects mid-stream frees its request", async () => {
      const ac = new AbortController();
      const res = await fetch(`${srv.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ model: fixture, prompt: "x", max_tokens: CONTEXT - 8, ignore_eos: true, stream: true }),
        signal: ac.signal,
      });
      await res.body!.getReader().read();
      ac.abort();
      let running = -1;
      for (let i = 0; i < 100; i++) {
        const info = await (await fetch(`${srv.url}/server_info`)).json();
        running = info.internal_states[0].num_running_reqs + info.internal_states[0].num_queue_reqs;
        if (running === 0) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(running, 0);
    });

    it("health, info, metrics, tokenize, flush", async () => {
      assert.equal((await fetch(`${srv.url}/health`)).status, 200);
      assert.equal((await fetch(`${srv.url}/health_generate`)).status, 200);
      const models = await client.models.list();
      assert.equal(models.data[0].id, fixture);
      assert.equal((models.data[0] as any).max_model_len, CONTEXT);
      const mi = await (await fetch(`${srv.url}/model_info`)).json();
      assert.equal(mi.model_type, "llama4");
      const si = await (await fetch(`${srv.url}/server_info`)).json();
      assert.equal(si.swa_full_tokens_ratio, 0.8);
      assert.equal(si.context_length, CONTEXT);
      const t = await post(`${srv.url}/tokenize`, { model: fixture, prompt: "hello there" });
      assert.deepEqual(t.json.tokens, tok.encode("hello there"));
      const d = await post(`${srv.url}/detokenize`, { model: fixture, tokens: t.json.tokens });
      assert.equal(d.json.prompt, "<|begin_of_text|>hello there");
      assert.match(await (await fetch(`${srv.url}/metrics`)).text(), /sglang:generation_tokens_total\{model_name="[^"]+"\} [1-9]/);
      assert.equal((await fetch(`${srv.url}/flush_cache`, { method: "POST" })).status, 200);
    });
  });
}

describe("launch lifecycle and flags", () => {
  it("--help lists SGLang's flags with defaults", () => {
    const r = tsglang("launch", "--help");
    assert.equal(r.code, 0);
    for (const f of [
      "--model-path", "--host", "--port", "--context-length", "--chat-template", "--max-running-requests", "--chunked-prefill-size",
      "--schedule-policy", "--mem-fraction-static", "--max-total-tokens", "--swa-full-tokens-ratio", "--disable-hybrid-swa-memory",
      "--disable-radix-cache", "--api-key", "--enable-metrics", "--served-model-name", "--log-level",
    ]) {
      assert.ok(r.stdout.includes(f), f);
    }
    assert.match(r.stdout, /--swa-full-tokens-ratio N\|auto\s+[^\n]*\[default: 0\.8\]/);
    assert.match(r.stdout, /--port N\s+[^\n]*\[default: 30000\]/);
    assert.match(r.stdout, /--schedule-policy fcfs\|lpm\s+[^\n]*\[default: fcfs\]/);
  });

  for (const [args, msg] of [
    [["--model-path", "x", "--bogus"], /unknown flag --bogus/],
    [["--model-path", "x", "--port", "abc"], /--port must be an integer/],
    [["--model-path", "x", "--schedule-policy", "random"], /--schedule-policy must be one of fcfs, lpm/],
    [["--model-path", "x", "--swa-full-tokens-ratio", "1.5"], /must be in \(0, 1\]/],
    [["--model-path", "x", "--swa-full-tokens-ratio", "most"], /--swa-full-tokens-ratio must be a number or 'auto'/],
    [["--model-path", "x", "--mem-fraction-static", "0"], /must be in \(0, 1\)/],
    [["--model-path", "x", "--chunked-prefill-size", "0"], /-1 or a positive integer/],
    [["--model-path", "x", "--port", "70000"], /--port must be ≤ 65535/],
    [["--model-path", "x", "--context-length"], /needs a value/],
    [["--tp", "2", "--ep-size", "3"], /--ep-size must be 1 or equal to --tp/],
    [["--model-path", "x", "--enable-multimodal"], /image input \(--enable-multimodal\) is not implemented yet/],
    [["--model-path", "x", "--speculative-algorithm", "EAGLE3"], /speculative decoding .* is not implemented yet/],
    [["--model-path", "x", "--speculative-num-steps=3"], /speculative decoding .* is not implemented yet/],
  ] as [string[], RegExp][]) {
    it(`rejects ${args.slice(-2).join(" ")}`, () => {
      const r = tsglang("launch", ...args);
      assert.equal(r.code, 2);
      assert.match(r.stderr, msg);
      assert.ok(!r.stderr.includes("    at "), "no stack trace");
    });
  }

  it("--swa-full-tokens-ratio auto needs a GPU plan: on the CPU it serves with the default 0.8", async () => {
    const srv = await launch(["--model-path", fixturePath("scout-tiny"), "--device", "cpu", "--swa-full-tokens-ratio", "auto"]);
    try {
      assert.match(srv.stderr(), /--swa-full-tokens-ratio auto needs a GPU memory plan; using 0\.8/);
      const info = (await (await fetch(`${srv.url}/get_server_info`)).json()) as { internal_states: { full_pool_tokens: number; swa_pool_tokens: number }[] };
      const st = info.internal_states[0];
      assert.ok(st.swa_pool_tokens > 0 && st.swa_pool_tokens < st.full_pool_tokens, JSON.stringify(st));
      const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
      const r = await client.completions.create({ model: fixturePath("scout-tiny"), prompt: "a", max_tokens: 2 });
      assert.equal(r.choices.length, 1);
    } finally {
      await srv.stop();
    }
  });

  it("a missing model directory is one clear line", () => {
    const r = tsglang("launch", "--model-path", "/nonexistent/model");
    assert.equal(r.code, 1);
    assert.match(r.stderr, /nonexistent/);
    assert.ok(!r.stderr.includes("    at "));
  });

  it("checks --api-key", async () => {
    const srv = await launch(["--model-path", fixturePath("scout-tiny"), "--api-key", "k123", "--log-level", "warning"]);
    try {
      const bad = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "nope", maxRetries: 0 });
      await assert.rejects(bad.completions.create({ model: "x", prompt: "a" }), (e: any) => e.status === 401);
      const good = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "k123", maxRetries: 0 });
      const r = await good.completions.create({ model: fixturePath("scout-tiny").replace(/.*\/test/, "test"), prompt: "a", max_tokens: 2 }).catch((e) => e);
      // The served name defaults to the --model-path as given (absolute here).
      assert.equal(r.status, 404);
      const ok = await good.completions.create({ model: fixturePath("scout-tiny"), prompt: "a", max_tokens: 2 });
      assert.equal(ok.choices.length, 1);
    } finally {
      await srv.stop("SIGKILL");
    }
  });

  it("answers 503 when the waiting queue is full", async () => {
    const srv = await launch(["--model-path", fixturePath("scout-tiny"), "--max-running-requests", "1", "--max-queued-requests", "1"]);
    try {
      const body = { prompt: "abc", max_tokens: 40, ignore_eos: true };
      const rs = await Promise.all(Array.from({ length: 6 }, () => post(`${srv.url}/v1/completions`, body)));
      const codes = rs.map((r) => r.status);
      assert.ok(codes.includes(200) && codes.includes(503), codes.join(","));
      assert.equal(rs.find((r) => r.status === 503)!.json.error.code, "service_unavailable");
      assert.equal((await post(`${srv.url}/v1/completions`, body)).status, 200);
    } finally {
      await srv.stop("SIGKILL");
    }
  });

  it("renders the checkpoint's own Jinja chat template, with one BOS", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tsglang-tmpl-"));
    try {
      for (const f of readdirSync(fixturePath("scout-tiny"))) symlinkSync(join(fixturePath("scout-tiny"), f), join(dir, f));
      const template =
        "{{ bos_token }}{% for m in messages %}<|header_start|>{{ m.role | upper }}<|header_end|>{{ m.content | trim }}<|eot|>{% endfor %}" +
        "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>{% endif %}";
      writeFileSync(join(dir, "chat_template.jinja"), template);
      const srv = await launch(["--model-path", dir]);
      try {
        const tok = await Tokenizer.load(dir);
        const messages = [{ role: "user" as const, content: " hello" }];
        const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
        const r = await c.chat.completions.create({ model: dir, messages, max_tokens: 1 });
        const want = tok.encode("<|begin_of_text|><|header_start|>USER<|header_end|>hello<|eot|><|header_start|>assistant<|header_end|>", { addSpecialTokens: false });
        assert.equal(r.usage!.prompt_tokens, want.length);
        // --chat-template llama-4 overrides the checkpoint's.
        await srv.stop("SIGKILL");
        const srv2 = await launch(["--model-path", dir, "--chat-template", "llama-4"]);
        try {
          const c2 = new OpenAI({ baseURL: `${srv2.url}/v1`, apiKey: "x", maxRetries: 0 });
          const r2 = await c2.chat.completions.create({ model: dir, messages, max_tokens: 1 });
          const want2 = tok.encode("<|begin_of_text|><|header_start|>user<|header_end|>\n\n hello<|eot|><|header_start|>assistant<|header_end|>\n\n", { addSpecialTokens: false });
          assert.equal(r2.usage!.prompt_tokens, want2.length);
        } finally {
          await srv2.stop("SIGKILL");
        }
      } finally {
        await srv.stop("SIGKILL");
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("SIGTERM drains a running request and exits 0", async () => {
    const srv = await launch(["--model-path", fixturePath("scout-tiny")]);
    const pending = post(`${srv.url}/v1/completions`, { prompt: "drain me", max_tokens: 64, ignore_eos: true });
    await new Promise((r) => setTimeout(r, 50));
    const code = await srv.stop("SIGTERM");
    const r = await pending;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.usage.completion_tokens, 64);
    assert.equal(code, 0, srv.stderr());
    assert.match(srv.stderr(), /stopped/);
  });
});
