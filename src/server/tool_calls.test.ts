// The pythonic tool-call parser on the shapes Llama 4 produces and the ones it must refuse.

import assert from "node:assert/strict";
import { test } from "node:test";
import { ToolCallStream, parsePythonicToolCalls } from "./tool_calls.js";

const TOOLS = new Set(["get_weather", "get_time", "search"]);
const args = (r: ReturnType<typeof parsePythonicToolCalls>) => r?.calls.map((c) => [c.name, JSON.parse(c.arguments)]);

test("one call, several calls, Python literals as JSON arguments", () => {
  assert.deepEqual(args(parsePythonicToolCalls(`[get_weather(city="Paris", unit='c')]`, TOOLS)), [["get_weather", { city: "Paris", unit: "c" }]]);
  const r = parsePythonicToolCalls(`[get_weather(city="Rome"), get_time(zone=None, utc=True, offset=-1.5e1, hours=[1, 2,], opts={'a': (1, 2), 3: False})]`, TOOLS);
  assert.deepEqual(args(r), [
    ["get_weather", { city: "Rome" }],
    ["get_time", { zone: null, utc: true, offset: -15, hours: [1, 2], opts: { a: [1, 2], "3": false } }],
  ]);
  assert.equal(r!.content, null);
  assert.deepEqual(args(parsePythonicToolCalls("[get_time()]", TOOLS)), [["get_time", {}]]);
});

test("escapes, <|python_start|> wrapping, blanks and text before the list", () => {
  const r = parsePythonicToolCalls(`Let me check.\n<|python_start|>[search(q="a \\"quoted\\" word\\n", raw='it\\'s \\u00e9')]<|python_end|>\n`, TOOLS);
  assert.equal(r!.content, "Let me check.");
  assert.deepEqual(args(r), [["search", { q: 'a "quoted" word\n', raw: "it's é" }]]);
});

test("not calls: plain text, unknown tools, positional arguments, trailing text, broken syntax", () => {
  for (const text of [
    "The weather is nice.",
    "[1, 2, 3]",
    `[delete_everything(now=True)]`,
    `[get_weather("Paris")]`,
    `[get_weather(city="Paris")] and then some`,
    `[get_weather(city="Paris"`,
    `[get_weather(city="Paris", city="Rome")]`,
    `[get_weather(city=Paris)]`,
    "[]",
  ]) {
    assert.equal(parsePythonicToolCalls(text, TOOLS), null, text);
  }
});

/** Streams `text` in pieces of `n` characters: what went out as content, and the end. */
function stream(text: string, n: number) {
  const tc = new ToolCallStream(TOOLS);
  const sent: string[] = [];
  for (let i = 0; i < text.length; i += n) sent.push(tc.push(text.slice(i, i + n)));
  return { sent, end: tc.finish() };
}

test("streaming gives the same split as the whole text, in any piece sizes", () => {
  const cases = [
    `[get_weather(city="Paris", unit='c'), get_time(zone=None)]`,
    `Checking. <|python_start|>[search(q="x [y] z")]<|python_end|>`,
    "Plain text with a [1] reference and [a link](http://x) in it.",
    `See [get_weather(city="Paris")] and more text after it.`,
    `[delete_everything(now=True)]`,
    `[get_weather(city="Paris"`,
  ];
  for (const text of cases) {
    const whole = parsePythonicToolCalls(text, TOOLS);
    for (const n of [1, 3, 7, 1000]) {
      const { sent, end } = stream(text, n);
      const content = sent.join("") + end.content;
      if (whole) {
        assert.deepEqual(end.calls, whole.calls, `${text} / ${n}`);
        assert.equal(content.trim(), whole.content ?? "", `${text} / ${n}`);
      } else {
        assert.equal(end.calls, null, `${text} / ${n}`);
        assert.equal(content, text, `${text} / ${n}`);
      }
    }
  }
});

test("streaming holds only what can still be a call list", () => {
  // Prose with brackets goes out before the output ends.
  const prose = stream("A list [1, 2] and [b] then more words here", 4);
  assert.ok(prose.sent.join("").length >= "A list [1, 2] and [b] then more".length, prose.sent.join(""));
  // A call list in progress is held to the end.
  const call = stream(`[get_weather(city="Paris")]`, 2);
  assert.equal(call.sent.join(""), "");
  assert.equal(call.end.calls!.length, 1);
});
