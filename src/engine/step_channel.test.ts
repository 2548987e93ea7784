// The step channel (step_channel.ts) in one thread: a step crosses whole (slot lists, a shared
// SWA list kept shared), commands are numbered in order across the channel and posted messages,
// a step too large for the buffer is refused (the caller posts it), and the acknowledgement
// lets the next command through. The rank threads' use of it runs in parallel.test.ts.

import assert from "node:assert/strict";
import { test } from "node:test";
import type { StepBatch } from "../runtime/backend.js";
import { MESSAGE, STEP_QUEUE, STEP_FORWARD, StepReceiver, StepSender, createStepChannel } from "./step_channel.js";

const batch = (n: number): StepBatch => {
  const full = Int32Array.from({ length: n }, (_, i) => 1000 + i);
  return {
    ids: Int32Array.from({ length: n }, (_, i) => 7 * i),
    positions: Int32Array.from({ length: n }, (_, i) => i),
    logitRows: Int32Array.of(n - 1),
    seqs: [
      { qStart: 0, qLen: n, kvLen: n, row: 3, slotsFrom: 0, fullSlots: full, swaSlots: full },
      { qStart: n, qLen: 0, kvLen: 9, row: 5, slotsFrom: 9, fullSlots: new Int32Array(0), swaSlots: new Int32Array(0) },
      { qStart: n, qLen: 1, kvLen: 40, row: 0, slotsFrom: 39, fullSlots: Int32Array.of(77), swaSlots: Int32Array.of(-1) },
    ],
  };
};

test("step channel: steps and posted commands in one numbering; a step crosses whole", () => {
  const init = createStepChannel(1);
  const tx = new StepSender(init);
  const rx = new StepReceiver(init, 0);
  assert.equal(rx.take(1, 0), "none", "nothing published yet");
  assert.equal(tx.message(), 1);
  assert.equal(rx.take(1, 0), "message");
  const b = batch(5);
  assert.equal(tx.step(STEP_QUEUE, b), true);
  assert.equal(rx.take(1, 0), "message", "an older number came by message");
  const got = rx.take(2, 0);
  assert.ok(typeof got === "object");
  assert.equal(got.kind, STEP_QUEUE);
  assert.deepEqual(got.batch, b);
  assert.equal(got.batch.seqs[0].swaSlots, got.batch.seqs[0].fullSlots, "a shared SWA slot list stays shared");
  assert.notEqual(got.batch.seqs[2].swaSlots, got.batch.seqs[2].fullSlots);
  // Acknowledged, so the next command goes through at once (else message() would wait for it).
  assert.equal(tx.message(), 3);
  assert.equal(rx.take(3, 0), "message");
  assert.equal(tx.step(STEP_FORWARD, batch(2)), true);
  const again = rx.take(4, 0);
  assert.ok(typeof again === "object" && again.kind === STEP_FORWARD && again.batch.ids.length === 2);
  assert.equal(MESSAGE, 0);
});

test("step channel: a step larger than the buffer is refused, so its sender posts it", () => {
  const init = createStepChannel(2);
  const tx = new StepSender(init);
  assert.equal(tx.step(STEP_FORWARD, batch(200_000)), false);
  assert.equal(new StepReceiver(init, 1).take(1, 0), "none", "nothing was published");
  assert.equal(tx.message(), 1, "the refused step took no number");
});
