// The HTTP layer against the fake engine, through the real `openai` client and plain fetch.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { fakeLogprob } from "./fake_engine.js";
import { MODEL, post, sse, startFakeServer, type FakeServer } from "./harness.js";

const STOP_TEXT = "Hello world. STOP here";

describe("server on the fake engine", () => {
  let s: FakeServer;
  let client: OpenAI;
  let scriptIds: number[];

  before(async () => {
    // Prompts that end in token 400 get a fixed continuation, the rest a hash of the sequence.
    s = await startFakeServer({
      engine: { script: (ids) => (ids[ids.length - 1] === 400 ? [...scriptIds, 7] : undefined) },
    });
    scriptIds = s.tokenizer.encode(STOP_TEXT, { addSpecialTokens: false });
    client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "none", maxRetries: 0 });
  });
  after(() => s.close(1000));

  it("lists the model and 404s an unknown one", async () => {
    const list = await client.models.list();
    assert.deepEqual(
      list.data.map((m) => m.id),
      [MODEL],
    );
    const one = await client.models.retrieve(MODEL);
    assert.equal(one.id, MODEL);
    await assert.rejects(client.models.retrieve("nope"), (e: any) => e.status === 404 && e.error?.code === "model_not_found");
  });

  it("chat: non-streaming and streaming give the same text, with usage", async () => {
    const req = { model: MODEL, messages: [{ role: "user" as const, content: "Hi there" }], max_tokens: 12, temperature: 0 };
    const full = await client.chat.completions.create(req);
    assert.equal(full.object, "chat.completion");
    assert.equal(full.choices.length, 1);
    const c = full.choices[0];
    assert.equal(c.message.role, "assistant");
    assert.ok(["stop", "length"].includes(c.finish_reason));
    assert.ok(full.usage!.prompt_tokens > 5);
    assert.ok(full.usage!.completion_tokens >= 1 && full.usage!.completion_tokens <= 12);
    assert.equal(full.usage!.total_tokens, full.usage!.prompt_tokens + full.usage!.completion_tokens);
    assert.equal(typeof full.usage!.prompt_tokens_details?.cached_tokens, "number");

    const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let finish: string | null = null;
    let usage: any;
    let roles = 0;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const ch of chunk.choices) {
        if (ch.delta.role) roles++;
        text += ch.delta.content ?? "";
        finish = ch.finish_reason ?? finish;
      }
    }
    assert.equal(roles, 1);
    assert.equal(text, c.message.content);
    assert.equal(finish, c.finish_reason);
    assert.equal(usage.completion_tokens, full.usage!.completion_tokens);
    // The same prompt again: the fake cache reports the shared prefix.
    assert.ok(usage.prompt_tokens_details.cached_tokens > 0);
  });

  it("stream_options.continuous_usage_stats puts the usage so far on every chunk (chat and completions)", async () => {
    for (const [path, body] of [
      ["/v1/chat/completions", { model: MODEL, messages: [{ role: "user", content: "Hi there" }], max_tokens: 6, temperature: 0, ignore_eos: true }],
      ["/v1/completions", { model: MODEL, prompt: ["a b", "c d e"], max_tokens: 6, temperature: 0, ignore_eos: true }],
    ] as const) {
      const res = await fetch(`${s.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } }),
      });
      const chunks = (await sse(res)).filter((c) => c !== "[DONE]");
      assert.ok(chunks.every((c) => c.usage && c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens), path);
      const counts = chunks.map((c) => c.usage.completion_tokens);
      assert.deepEqual([...counts].sort((a, b) => a - b), counts, `${path}: non-decreasing`);
      const last = chunks[chunks.length - 1];
      const choices = path === "/v1/completions" ? 2 : 1;
      assert.equal(last.usage.completion_tokens, 6 * choices, path);
      assert.equal(counts[counts.length - 2], 6 * choices, `${path}: the chunk before the final usage already counts every token`);
    }
  });

  it("chat: the prompt is the llama-4 template with one BOS", async () => {
    await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], max_tokens: 1 });
    const ids = s.engine.submitted.at(-1)!.inputIds;
    const text = s.tokenizer.decode(ids);
    assert.equal(text, "<|begin_of_text|><|header_start|>user<|header_end|>\n\nx<|eot|><|header_start|>assistant<|header_end|>\n\n");
    assert.equal(ids.filter((i) => i === s.tokenizer.bosId).length, 1);
  });

  it("completions: streaming equals non-streaming; batches and token prompts", async () => {
    const req = { model: MODEL, prompt: "The quick brown fox", max_tokens: 10, temperature: 0 };
    const full = await client.completions.create(req);
    assert.equal(full.object, "text_completion");
    const stream = await client.completions.create({ ...req, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    assert.equal(text, full.choices[0].text);

    const ids = s.tokenizer.encode("The quick brown fox");
    const byIds = await client.completions.create({ ...req, prompt: ids });
    assert.equal(byIds.choices[0].text, full.choices[0].text);

    const batch = await client.completions.create({ ...req, prompt: ["The quick brown fox", "Another one"], n: 2 });
    assert.equal(batch.choices.length, 4);
    assert.deepEqual(
      batch.choices.map((c) => c.index),
      [0, 1, 2, 3],
    );
    assert.equal(batch.choices[0].text, full.choices[0].text);
    assert.equal(batch.usage!.prompt_tokens, ids.length + s.tokenizer.encode("Another one").length);
  });

  it("completions: echo + logprobs returns prompt logprobs with null first", async () => {
    const prompt = "The quick brown fox";
    const ids = s.tokenizer.encode(prompt);
    const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 3, temperature: 0, echo: true, logprobs: 2 });
    const c = r.choices[0];
    assert.ok(c.text.startsWith(prompt));
    const lp = c.logprobs!;
    const gen = r.usage!.completion_tokens;
    assert.equal(lp.tokens!.length, ids.length + gen);
    assert.equal(lp.token_logprobs![0], null);
    assert.equal(lp.top_logprobs![0], null);
    for (let i = 1; i < ids.length; i++) assert.equal(lp.token_logprobs![i], fakeLogprob(ids[i], i).logprob);
    assert.equal(Object.keys(lp.top_logprobs![1]!).length, 2);
    assert.equal(lp.text_offset![0], 0);
    assert.equal(s.engine.submitted.at(-1)!.logprobStartLen, 0);

    // Streaming sends the same logprobs.
    const stream = await client.completions.create({ model: MODEL, prompt, max_tokens: 3, temperature: 0, echo: true, logprobs: 2, stream: true });
    const tokLps: (number | null)[] = [];
    let text = "";
    for await (const chunk of stream) {
      const ch = chunk.choices[0];
      if (!ch) continue;
      text += ch.text;
      tokLps.push(...(ch.logprobs?.token_logprobs ?? []));
    }
    assert.equal(text, c.text);
    assert.deepEqual(tokLps, lp.token_logprobs);
  });

  it("completions: max_tokens 0 with echo returns the prompt", async () => {
    const r = await client.completions.create({ model: MODEL, prompt: "abc", max_tokens: 0, echo: true });
    assert.equal(r.choices[0].text, "abc");
    assert.equal(r.usage!.completion_tokens, 0);
  });

  it("chat logprobs", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 4,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0].logprobs!.content!;
    assert.equal(content.length, r.usage!.completion_tokens);
    assert.equal(content[0].top_logprobs.length, 3);
    assert.equal(typeof content[0].token, "string");
  });

  it("stop strings end generation, are trimmed, and abort the engine request", async () => {
    const prompt = [0, 400];
    const r = await post(`${s.url}/v1/completions`, { model: MODEL, prompt, max_tokens: 50, stop: ["STOP"] });
    assert.equal(r.status, 200);
    assert.equal(r.json.choices[0].text, "Hello world. ");
    assert.equal(r.json.choices[0].finish_reason, "stop");
    assert.equal(r.json.choices[0].matched_stop, "STOP");
    const rid = s.engine.submitted.at(-1)!.rid;
    assert.ok(s.engine.aborted.includes(rid));
    // Streamed: the same text, never a piece of the stop string.
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: 50, stop: ["STOP"], stream: true }),
    });
    const events = await sse(res);
    assert.equal(events.at(-1), "[DONE]");
    const chunks = events.slice(0, -1);
    assert.equal(chunks.map((e) => e.choices[0].text).join(""), "Hello world. ");
    assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
  });

  it("EOS ends generation with matched_stop = the token id, not in the text", async () => {
    const r = await post(`${s.url}/v1/completions`, { model: MODEL, prompt: [0, 400], max_tokens: 50 });
    assert.equal(r.json.choices[0].text, STOP_TEXT);
    assert.equal(r.json.choices[0].matched_stop, 7);
    assert.equal(r.json.usage.completion_tokens, scriptIds.length + 1);
    const ignore = await post(`${s.url}/v1/completions`, { model: MODEL, prompt: [0, 400], max_tokens: 50, ignore_eos: true, stop_token_ids: [scriptIds[3]] });
    assert.equal(ignore.json.choices[0].matched_stop, scriptIds[3]);
    assert.equal(ignore.json.choices[0].finish_reason, "stop");
    assert.deepEqual(s.engine.submitted.at(-1)!.stopTokenIds, [scriptIds[3]]);
  });

  it("n > 1 runs n engine requests with distinct seeds", async () => {
    const before = s.engine.submitted.length;
    const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }], max_tokens: 2, n: 3, seed: 5, temperature: 0.7 });
    assert.equal(r.choices.length, 3);
    const subs = s.engine.submitted.slice(before);
    assert.deepEqual(
      subs.map((q) => q.sampling.seed),
      [5, 6, 7],
    );
    assert.equal(subs[0].sampling.temperature, 0.7);
  });

  it("chat: continue_final_message leaves the last assistant turn open; input_ids bypass the template", async () => {
    const messages = [{ role: "user", content: "2+2?" }, { role: "assistant", content: "The answer is" }];
    const r = await post(`${s.url}/v1/chat/completions`, { model: MODEL, messages, max_tokens: 2, continue_final_message: true });
    assert.equal(r.status, 200, r.text);
    const prompt = s.tokenizer.decode(s.engine.submitted.at(-1)!.inputIds, { skipSpecialTokens: false });
    assert.ok(prompt.endsWith("<|header_start|>assistant<|header_end|>\n\nThe answer is"), JSON.stringify(prompt.slice(-80)));
    // input_ids bypass the template
    await post(`${s.url}/v1/chat/completions`, { model: MODEL, messages, max_tokens: 2, input_ids: [1, 2, 3] });
    assert.deepEqual(s.engine.submitted.at(-1)!.inputIds, [1, 2, 3]);
    assert.equal((await post(`${s.url}/v1/chat/completions`, { model: MODEL, messages, input_ids: [1, 9999] })).status, 400);
    const bad = await post(`${s.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: "user", content: "x" }], continue_final_message: true });
    assert.equal(bad.status, 400);
    assert.match(bad.json.error.message, /last message to be an assistant message/);
  });

  it("sampling parameters reach the engine", async () => {
    await post(`${s.url}/v1/chat/completions`, {
      model: MODEL,
      messages: [{ role: "user", content: "x" }],
      max_completion_tokens: 3,
      temperature: 0.5,
      top_p: 0.9,
      top_k: 20,
      min_p: 0.05,
      frequency_penalty: 0.1,
      presence_penalty: -0.2,
      repetition_penalty: 1.1,
      min_tokens: 2,
      logit_bias: { "17": 3.5, "4": -100 },
    });
    const q = s.engine.submitted.at(-1)!;
    assert.deepEqual(q.sampling, {
      temperature: 0.5, topP: 0.9, topK: 20, minP: 0.05, frequencyPenalty: 0.1, presencePenalty: -0.2, repetitionPenalty: 1.1,
      logitBias: [[4, -100], [17, 3.5]],
    });
    assert.equal(q.maxNewTokens, 3);
    assert.equal(q.minNewTokens, 2);
    assert.deepEqual(q.stopTokenIds, s.tokenizer.eosIds);
  });

  describe("bad input is a 400 in OpenAI's format, and the server keeps serving", () => {
    const chat = (extra: Record<string, unknown>) => ({ model: MODEL, messages: [{ role: "user", content: "x" }], max_tokens: 2, ...extra });
    const cases: [string, string, unknown, number, string | null][] = [
      ["malformed JSON", "/v1/chat/completions", "{not json", 400, null],
      ["body not an object", "/v1/chat/completions", "[1,2]", 400, null],
      ["wrong type", "/v1/chat/completions", chat({ temperature: "hot" }), 400, "temperature"],
      ["max_tokens < 0", "/v1/chat/completions", chat({ max_tokens: -1 }), 400, "max_tokens"],
      ["temperature < 0", "/v1/chat/completions", chat({ temperature: -0.5 }), 400, "temperature"],
      ["top_p > 1", "/v1/chat/completions", chat({ top_p: 1.5 }), 400, "top_p"],
      ["n = 0", "/v1/chat/completions", chat({ n: 0 }), 400, "n"],
      ["unknown model", "/v1/chat/completions", chat({ model: "gpt-9" }), 404, "model"],
      ["empty messages", "/v1/chat/completions", chat({ messages: [] }), 400, "messages"],
      ["messages not an array", "/v1/chat/completions", chat({ messages: "hi" }), 400, "messages"],
      ["invalid role", "/v1/chat/completions", chat({ messages: [{ role: "wizard", content: "x" }] }), 400, "messages"],
      ["constrained decoding (not implemented)", "/generate", { text: "a", sampling_params: { json_schema: "{}" } }, 400, "json_schema"],
      ["regex (not implemented)", "/v1/completions", { model: MODEL, prompt: "a", regex: "a+" }, 400, "regex"],
      ["image_data (not implemented)", "/generate", { text: "a", image_data: "data:," }, 400, "image_data"],
      ["return_hidden_states (not implemented)", "/generate", { text: "a", return_hidden_states: true }, 400, "return_hidden_states"],
      ["lora_path (not implemented)", "/v1/chat/completions", chat({ lora_path: "x" }), 400, "lora_path"],
      ["image input (not implemented)", "/v1/chat/completions", chat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:," } }, { type: "text", text: "what is it?" }] }] }), 400, "messages"],
      ["prompt too long", "/v1/completions", { model: MODEL, prompt: Array(300).fill(5) }, 400, "prompt"],
      ["prompt + max_tokens too long", "/v1/completions", { model: MODEL, prompt: Array(200).fill(5), max_tokens: 100 }, 400, "prompt"],
      ["token id out of vocabulary", "/v1/completions", { model: MODEL, prompt: [1, 2, 512] }, 400, "prompt"],
      ["negative token id", "/v1/completions", { model: MODEL, prompt: [[1, -1]] }, 400, "prompt[0]"],
      ["missing prompt", "/v1/completions", { model: MODEL }, 400, "prompt"],
      ["empty prompt list", "/v1/completions", { model: MODEL, prompt: [] }, 400, "prompt"],
      ["stop of wrong type", "/v1/completions", { model: MODEL, prompt: "a", stop: 3 }, 400, "stop"],
      ["stop_token_ids out of vocabulary", "/v1/completions", { model: MODEL, prompt: "a", stop_token_ids: [9999] }, 400, "stop_token_ids"],
      ["logprobs too many", "/v1/completions", { model: MODEL, prompt: "a", logprobs: 50 }, 400, "logprobs"],
      ["top_logprobs without logprobs", "/v1/chat/completions", chat({ top_logprobs: 2 }), 400, "top_logprobs"],
      ["logit_bias not an object", "/v1/chat/completions", chat({ logit_bias: [1] }), 400, "logit_bias"],
      ["logit_bias key not a token id", "/v1/chat/completions", chat({ logit_bias: { abc: 1 } }), 400, "logit_bias"],
      ["logit_bias id out of vocabulary", "/v1/completions", { model: MODEL, prompt: "a", logit_bias: { "512": 1 } }, 400, "logit_bias"],
      ["logit_bias beyond ±100", "/generate", { text: "a", sampling_params: { logit_bias: { "3": 101 } } }, 400, "logit_bias"],
      ["generate without a prompt", "/generate", { sampling_params: {} }, 400, "text"],
      ["generate bad sampling", "/generate", { text: "a", sampling_params: { top_k: -5 } }, 400, "top_k"],
      ["tokenize without prompt", "/tokenize", { model: MODEL }, 400, "prompt"],
      ["detokenize out of vocabulary", "/detokenize", { model: MODEL, tokens: [600] }, 400, "tokens"],
      ["unknown route", "/v1/nothing", {}, 404, null],
    ];
    for (const [name, path, body, status, param] of cases) {
      it(name, async () => {
        const r = await post(`${s.url}${path}`, body);
        assert.equal(r.status, status, r.text);
        assert.equal(typeof r.json.error.message, "string");
        assert.ok(r.json.error.type);
        assert.ok("code" in r.json.error && "param" in r.json.error);
        if (param !== null) assert.equal(r.json.error.param, param);
      });
    }
    it("the openai client sees these as APIError with status", async () => {
      await assert.rejects(client.chat.completions.create(chat({ temperature: -1 }) as any), (e: any) => e.status === 400 && /temperature/.test(e.message));
      const ok = await client.chat.completions.create(chat({}) as any);
      assert.equal(ok.object, "chat.completion");
    });
    it("wrong method is 405", async () => {
      const r = await fetch(`${s.url}/v1/chat/completions`);
      assert.equal(r.status, 405);
      assert.ok((await r.json()).error);
    });
  });

  it("/generate: single, batch, logprob triples, stream with cumulative text", async () => {
    const one = await post(`${s.url}/generate`, { text: "Hello", sampling_params: { max_new_tokens: 4, temperature: 0 } });
    assert.equal(one.status, 200);
    assert.equal(typeof one.json.text, "string");
    assert.ok(Array.isArray(one.json.output_ids));
    const m = one.json.meta_info;
    assert.equal(m.prompt_tokens, s.tokenizer.encode("Hello").length);
    assert.equal(m.completion_tokens, one.json.output_ids.length);
    assert.ok(["stop", "length"].includes(m.finish_reason.type));
    assert.equal(typeof m.cached_tokens, "number");

    const batch = await post(`${s.url}/generate`, { input_ids: [[0, 5, 6], [0, 7]], sampling_params: { max_new_tokens: 2 } });
    assert.equal(batch.json.length, 2);

    const lp = await post(`${s.url}/generate`, {
      input_ids: [0, 400],
      sampling_params: { max_new_tokens: 3, temperature: 0 },
      return_logprob: true,
      logprob_start_len: 0,
      top_logprobs_num: 2,
      return_text_in_logprobs: true,
    });
    const mi = lp.json.meta_info;
    assert.deepEqual(mi.input_token_logprobs[0], [null, 0, "<|begin_of_text|>"]);
    assert.equal(mi.input_token_logprobs[1][0], fakeLogprob(400, 1).logprob);
    assert.equal(mi.output_token_logprobs.length, 3);
    assert.equal(mi.output_token_logprobs[0][1], scriptIds[0]);
    assert.equal(mi.output_top_logprobs[0].length, 2);
    assert.deepEqual(mi.finish_reason, { type: "length", length: 3 });

    const res = await fetch(`${s.url}/generate`, {
      method: "POST",
      body: JSON.stringify({ input_ids: [0, 400], sampling_params: { max_new_tokens: 30, stop: "STOP" }, stream: true }),
    });
    const events = await sse(res);
    assert.equal(events.at(-1), "[DONE]");
    const last = events.at(-2);
    assert.equal(last.text, "Hello world. ");
    assert.deepEqual(last.meta_info.finish_reason, { type: "stop", matched: "STOP" });
    // Cumulative: each text extends the one before.
    const texts = events.slice(0, -1).map((e) => e.text);
    for (let i = 1; i < texts.length; i++) assert.ok(texts[i].startsWith(texts[i - 1]));
  });

  it("/tokenize and /detokenize", async () => {
    const t = await post(`${s.url}/tokenize`, { model: MODEL, prompt: "Hello" });
    assert.deepEqual(t.json.tokens, s.tokenizer.encode("Hello"));
    assert.equal(t.json.count, t.json.tokens.length);
    const d = await post(`${s.url}/v1/detokenize`, { model: MODEL, tokens: t.json.tokens.slice(1) });
    assert.equal(d.json.prompt, "Hello");
  });

  it("info routes", async () => {
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
    assert.equal((await fetch(`${s.url}/health_generate`)).status, 200);
    const mi = await (await fetch(`${s.url}/model_info`)).json();
    assert.equal(mi.is_generation, true);
    const si = await (await fetch(`${s.url}/server_info`)).json();
    assert.equal(si.internal_states[0].context_length, 256);
    const fc = await fetch(`${s.url}/flush_cache`, { method: "POST" });
    assert.equal(fc.status, 200);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /sglang:prompt_tokens_total\{model_name="scout-tiny"\} \d+/);
    assert.match(metrics, /sglang:num_running_reqs/);
    assert.match(metrics, /sglang:time_to_first_token_seconds_bucket/);
  });

  it("a client that disconnects mid-stream aborts its engine request", async () => {
    const ac = new AbortController();
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ model: MODEL, prompt: "long one", max_tokens: 200, ignore_eos: true, stream: true }),
      signal: ac.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    const rid = s.engine.submitted.at(-1)!.rid;
    ac.abort();
    for (let i = 0; i < 100 && !s.engine.aborted.includes(rid); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(s.engine.aborted.includes(rid));
  });
});

describe("server limits", () => {
  it("answers 503 when the engine queue is full, and serves again after", async () => {
    const s = await startFakeServer({ engine: { maxQueued: 2, stepMs: 5 } });
    try {
      const body = { model: MODEL, prompt: "x", max_tokens: 20, ignore_eos: true };
      const results = await Promise.all(Array.from({ length: 6 }, () => post(`${s.url}/v1/completions`, body)));
      const codes = results.map((r) => r.status).sort();
      assert.ok(codes.includes(200) && codes.includes(503), codes.join(","));
      const busy = results.find((r) => r.status === 503)!;
      assert.equal(busy.json.error.code, "service_unavailable");
      const again = await post(`${s.url}/v1/completions`, body);
      assert.equal(again.status, 200);
    } finally {
      await s.close(1000);
    }
  });

  it("n choices are admitted all or none", async () => {
    const s = await startFakeServer({ engine: { maxQueued: 2, stepMs: 5 } });
    try {
      const r = await post(`${s.url}/v1/completions`, { model: MODEL, prompt: "x", max_tokens: 2, n: 3 });
      assert.equal(r.status, 503);
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(s.engine.running, 0);
    } finally {
      await s.close(1000);
    }
  });

  it("checks the API key (health exempt)", async () => {
    const s = await startFakeServer({ config: { apiKey: "sekret" } });
    try {
      const bad = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "wrong", maxRetries: 0 });
      await assert.rejects(bad.models.list(), (e: any) => e.status === 401 && e.error?.code === "invalid_api_key");
      const good = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "sekret", maxRetries: 0 });
      assert.equal((await good.models.list()).data.length, 1);
      assert.equal((await fetch(`${s.url}/health`)).status, 200);
      assert.equal((await post(`${s.url}/generate`, { text: "a" })).status, 401);
    } finally {
      await s.close(1000);
    }
  });

  it("metrics are 404 without --enable-metrics", async () => {
    const s = await startFakeServer({ config: { enableMetrics: false } });
    try {
      assert.equal((await fetch(`${s.url}/metrics`)).status, 404);
    } finally {
      await s.close(1000);
    }
  });

  it("shutdown lets a running request finish and refuses new ones", async () => {
    const s = await startFakeServer({ engine: { stepMs: 5 } });
    const pending = post(`${s.url}/v1/completions`, { model: MODEL, prompt: "x", max_tokens: 20, ignore_eos: true });
    await new Promise((r) => setTimeout(r, 20));
    const closing = s.close(5000);
    const r = await pending;
    assert.equal(r.status, 200);
    assert.equal(r.json.usage.completion_tokens, 20);
    await closing;
  });

  it("shutdown aborts what does not finish within the grace period", async () => {
    const s = await startFakeServer({ engine: { stepMs: 20 } });
    const pending = post(`${s.url}/v1/completions`, { model: MODEL, prompt: "x", max_tokens: 200, ignore_eos: true });
    await new Promise((r) => setTimeout(r, 30));
    await s.close(50);
    const r = await pending;
    assert.equal(r.status, 503);
    assert.equal(s.engine.running, 0);
  });
});
