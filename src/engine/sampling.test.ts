// Penalties as logit edits: the one description the host sampler and the device (sample.cu)
// both apply, checked against hand-computed values.

import assert from "node:assert/strict";
import { test } from "node:test";
import { EDIT_MASK, EDIT_REPEAT, GREEDY, Rng, applyEdits, logitEdits, sampleToken } from "./sampling.js";

test("repetition, frequency and presence penalties and masks, per token", () => {
  const p = { ...GREEDY, repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25 };
  const e = logitEdits(p, [1, 2], [2, 3, 3], [4])!;
  const byId = new Map(Array.from(e.ids, (id, i) => [id, { flags: e.flags[i], sub: e.sub[i] }]));
  assert.deepEqual([...byId.keys()].sort(), [1, 2, 3, 4]);
  assert.deepEqual(byId.get(1), { flags: EDIT_REPEAT, sub: 0 }); // prompt only: repetition
  assert.deepEqual(byId.get(2), { flags: EDIT_REPEAT, sub: 0.75 }); // once in the output: 0.5·1 + 0.25
  assert.deepEqual(byId.get(3), { flags: EDIT_REPEAT, sub: 1.25 }); // twice: 0.5·2 + 0.25
  assert.deepEqual(byId.get(4), { flags: EDIT_MASK, sub: 0 });
  const logits = Float32Array.of(1, 3, -2, 4, 9, 0.5);
  applyEdits(logits, e);
  // 3/2 = 1.5; −2·2 − 0.75 = −4.75; 4/2 − 1.25 = 0.75; masked; untouched
  assert.deepEqual([...logits], [1, 1.5, -4.75, 0.75, -Infinity, 0.5]);
});

test("no penalties and no mask: no edits; repetition and presence on prompt and output ids", () => {
  assert.equal(logitEdits(GREEDY, [1, 2, 3], [4, 5]), null);
  const p = { ...GREEDY, repetitionPenalty: 1.5, presencePenalty: 1 };
  const a = Float32Array.of(2, -1, 3, 0.5);
  applyEdits(a, logitEdits(p, [0], [2])!);
  assert.deepEqual([...a], [2 / 1.5, -1, 3 / 1.5 - 1, 0.5].map(Math.fround));
});

test("a penalty changes the greedy token; ids outside the row are ignored", () => {
  const logits = Float32Array.of(0, 5, 4.9);
  const p = { ...GREEDY, frequencyPenalty: 1 };
  const e = logitEdits(p, [], [1, 99])!;
  applyEdits(logits, e);
  assert.equal(sampleToken(logits, p, new Rng(1)), 2);
  assert.equal(logits.length, 3);
});

test("logit_bias adds to the logits (after the other penalties) as part of the same edits", () => {
  const p = { ...GREEDY, frequencyPenalty: 1, logitBias: [[2, 5], [0, -100], [1, 0.5]] as const };
  const e = logitEdits(p, [], [1])!;
  const logits = Float32Array.of(3, 2, 1, 0);
  applyEdits(logits, e);
  assert.deepEqual([...logits], [-97, 1.5, 6, 0]); // 3−100; 2−1+0.5; 1+5; untouched
  assert.equal(sampleToken(logits, p, new Rng(1)), 2);
  assert.equal(logitEdits({ ...GREEDY, logitBias: [] }, [], []), null);
});
