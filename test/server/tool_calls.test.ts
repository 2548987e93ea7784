// Chat tool calls (--tool-call-parser pythonic) through the real `openai` client on the fake
// engine, whose scripted outputs are a pythonic call list, text before one, or plain text.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import { MODEL, post, startFakeServer, type FakeServer } from "./harness.js";
import { tsglang } from "./launch_helper.js";

const EOS = 7;
const OUTPUTS: Record<string, string> = {
  weather: `[get_weather(city="Paris", unit='c'), get_time(zone=None)]`,
  preamble: `Checking. [get_weather(city="Rome")]`,
  chat: "Hello there, nice day.",
  unknown: `[launch_rockets(count=3)]`,
};
const TOOLS = ["get_weather", "get_time"].map((name) => ({
  type: "function" as const,
  function: { name, description: `the ${name}`, parameters: { type: "object", properties: {} } },
}));

describe("tool calls (pythonic parser)", () => {
  let s: FakeServer;
  let client: OpenAI;
  const ask = (word: string) => [{ role: "user" as const, content: `topic ${word}` }];

  before(async () => {
    // The script answers by the topic word in the prompt.
    s = await startFakeServer({
      config: { toolCallParser: "pythonic" },
      contextLength: 2048,
      engine: {
        script: (ids) => {
          const text = s.tokenizer.decode([...ids], { skipSpecialTokens: true });
          const key = Object.keys(OUTPUTS).find((k) => text.includes(`topic ${k}`));
          return key ? [...s.tokenizer.encode(OUTPUTS[key], { addSpecialTokens: false }), EOS] : undefined;
        },
      },
    });
    client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "none", maxRetries: 0 });
  });
  after(() => s.close(1000));

  it("a call list becomes tool_calls with JSON arguments and finish_reason tool_calls", async () => {
    const r = await client.chat.completions.create({ model: MODEL, messages: ask("weather"), tools: TOOLS, max_tokens: 200 });
    const c = r.choices[0];
    assert.equal(c.finish_reason, "tool_calls");
    assert.equal(c.message.content, null);
    const calls = c.message.tool_calls!.map((t) => (t.type === "function" ? [t.function.name, JSON.parse(t.function.arguments)] : null));
    assert.deepEqual(calls, [["get_weather", { city: "Paris", unit: "c" }], ["get_time", { zone: null }]]);
    assert.ok(c.message.tool_calls!.every((t) => /^call_\w+$/.test(t.id)));
  });

  it("text before the list stays content; plain text, unknown tools and tool_choice none are not parsed", async () => {
    const pre = await client.chat.completions.create({ model: MODEL, messages: ask("preamble"), tools: TOOLS, max_tokens: 200 });
    assert.equal(pre.choices[0].message.content, "Checking.");
    assert.equal(pre.choices[0].message.tool_calls!.length, 1);
    for (const [word, extra] of [["chat", {}], ["unknown", {}], ["weather", { tool_choice: "none" as const }]] as const) {
      const r = await client.chat.completions.create({ model: MODEL, messages: ask(word), tools: TOOLS, max_tokens: 200, ...extra });
      assert.equal(r.choices[0].finish_reason, "stop", word);
      assert.equal(r.choices[0].message.content, OUTPUTS[word], word);
      assert.equal(r.choices[0].message.tool_calls ?? null, null, word);
    }
    // Without tools in the request nothing is parsed either.
    const none = await client.chat.completions.create({ model: MODEL, messages: ask("weather"), max_tokens: 200 });
    assert.equal(none.choices[0].message.content, OUTPUTS.weather);
  });

  it("streaming: a call list arrives as one tool_calls delta; plain text streams as content", async () => {
    const stream = await client.chat.completions.create({ model: MODEL, messages: ask("weather"), tools: TOOLS, max_tokens: 200, stream: true });
    const deltas: any[] = [];
    let finish: string | null = null;
    for await (const ch of stream) {
      for (const c of ch.choices) {
        deltas.push(c.delta);
        finish = c.finish_reason ?? finish;
      }
    }
    assert.equal(finish, "tool_calls");
    assert.equal(deltas.filter((d) => d.content).length, 0, "no call text leaked as content");
    const calls = deltas.flatMap((d) => d.tool_calls ?? []);
    assert.deepEqual(calls.map((t: any) => t.function.name), ["get_weather", "get_time"]);
    assert.deepEqual(JSON.parse(calls[0].function.arguments), { city: "Paris", unit: "c" });

    const plain = await client.chat.completions.create({ model: MODEL, messages: ask("chat"), tools: TOOLS, max_tokens: 200, stream: true });
    let text = "";
    let pieces = 0;
    for await (const ch of plain) {
      const d = ch.choices[0]?.delta?.content;
      if (d) {
        text += d;
        pieces++;
      }
    }
    assert.equal(text, OUTPUTS.chat);
    assert.ok(pieces > 1, "plain text is not held back to the end");
  });

  it("malformed tools are a 400", async () => {
    const r = await post(`${s.url}/v1/chat/completions`, { model: MODEL, messages: ask("weather"), tools: [{ type: "function", function: {} }] });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.param, "tools");
  });
});

describe("--tool-call-parser", () => {
  it("names other than pythonic are refused with the one to use", () => {
    const r = tsglang("launch", "--model-path", "x", "--tool-call-parser", "llama4");
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--tool-call-parser pythonic/);
  });
});
