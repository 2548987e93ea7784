import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { TextAssembler } from "../../src/server/text.js";
import { Tokenizer } from "../../src/tokenizer/tokenizer.js";
import { fixturePath } from "../../src/util/repo.js";

let tok: Tokenizer;
before(async () => {
  tok = await Tokenizer.load(fixturePath("scout-tiny"));
});

// Feeds the tokens of `text` one by one; returns the deltas and where a stop matched.
function run(text: string, stops: string[], noStopTrim = false) {
  const asm = new TextAssembler(tok, stops, { skipSpecialTokens: true, noStopTrim });
  const ids = tok.encode(text, { addSpecialTokens: false });
  const deltas: string[] = [];
  let matched: string | undefined;
  let used = 0;
  for (const id of ids) {
    used++;
    const s = asm.push(id);
    deltas.push(s.delta);
    if (s.matched) {
      matched = s.matched;
      break;
    }
  }
  if (!matched) {
    const s = asm.finish();
    deltas.push(s.delta);
    matched = s.matched;
  }
  return { text: deltas.join(""), deltas, matched, used, total: ids.length };
}

describe("TextAssembler", () => {
  it("passes text through without stops", () => {
    assert.equal(run("Hello world. STOP here", []).text, "Hello world. STOP here");
  });

  it("stops at a stop string spanning tokens and trims it", () => {
    const r = run("Hello world. STOP here", ["STOP"]);
    assert.equal(r.text, "Hello world. ");
    assert.equal(r.matched, "STOP");
    assert.ok(r.used < r.total, "generation ends at the matching token");
  });

  it("keeps the stop string with no_stop_trim", () => {
    assert.equal(run("Hello world. STOP here", ["STOP"], true).text, "Hello world. STOP");
  });

  it("never streams text that becomes part of a stop string", () => {
    const r = run("Hello world. STOP here", ["ld. STOP"]);
    assert.equal(r.text, "Hello wor");
    // Each delta is final: their concatenation only grows, and no delta contains "l" after "wor".
    assert.ok(!r.deltas.join("").includes("ld"));
  });

  it("releases held-back text when the stop does not complete", () => {
    const r = run("Hello world. STOP here", ["here!"]);
    assert.equal(r.text, "Hello world. STOP here");
    assert.equal(r.matched, undefined);
  });

  it("picks the earliest of several stops", () => {
    const r = run("Hello world. STOP here", ["here", "world"]);
    assert.equal(r.text, "Hello ");
    assert.equal(r.matched, "world");
  });

  it("skips special tokens in text", () => {
    assert.equal(run("abc<|eot|>x", []).text, "abcx");
  });
});
