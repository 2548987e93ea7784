import assert from "node:assert/strict";
import { test } from "node:test";
import type { SeqSpan, StepBatch } from "./backend.js";
import { SlotTables, newSlotsOnly } from "./slot_tables.js";

const seq = (row: number, qLen: number, kvLen: number, slotsFrom: number, full: number[], swa = full): SeqSpan => ({
  qStart: 0, qLen, kvLen, row, slotsFrom, fullSlots: Int32Array.from(full), swaSlots: Int32Array.from(swa),
});
const step = (...seqs: SeqSpan[]): StepBatch => ({ ids: new Int32Array(0), positions: new Int32Array(0), seqs, logitRows: new Int32Array(0) });

test("slot tables grow by what each step carries and give a run per sequence: (row · context + position, length, offset) and the slots", () => {
  const t = new SlotTables({ full: 100, swa: 50, rows: 3, context: 10 }, ["full", "swa"]);
  const a = t.apply(step(seq(2, 3, 3, 0, [7, 8, 9], [1, 2, 3])));
  assert.deepEqual([...a.full.segs], [20, 3, 0]);
  assert.deepEqual([...a.full.slots], [7, 8, 9]);
  assert.deepEqual([...a.full.packed], [20, 3, 0, 7, 8, 9], "runs then slots, in one array");
  assert.deepEqual([...a.swa.segs], [20, 3, 0]);
  assert.deepEqual([...a.swa.slots], [1, 2, 3]);
  const b = t.apply(step(seq(2, 1, 4, 3, [40], [-1]), seq(0, 2, 2, 0, [5, 6])));
  assert.deepEqual([...b.full.segs], [23, 1, 0, 0, 2, 1]);
  assert.deepEqual([...b.full.slots], [40, 5, 6]);
  assert.deepEqual([...b.swa.slots], [-1, 5, 6]);
  assert.deepEqual([...t.slots("full", 2)], [7, 8, 9, 40]);
  assert.deepEqual([...t.slots("swa", 2)], [1, 2, 3, -1]); // gone SWA KV is recorded as -1
  // A new occupant of a row starts over at 0.
  t.apply(step(seq(2, 1, 1, 0, [11])));
  assert.deepEqual([...t.slots("full", 2)], [11]);
});

test("the same batch twice is one append, and a fixed row is left out", () => {
  const t = new SlotTables({ full: 10, swa: 0, rows: 2, context: 4 }, ["full"]);
  const b = step(seq(0, 2, 2, 0, [3, 4]), seq(1, 1, 1, 0, [9]));
  assert.equal(t.apply(b, 1), t.apply(b, 1));
  assert.deepEqual([...t.apply(b, 1).full.segs], [0, 2, 0]);
  assert.deepEqual([...t.apply(b, 1).full.slots], [3, 4]);
  assert.equal(t.slots("full", 1).length, 0);
  assert.equal(t.apply(step()).swa.slots.length, 0, "nothing for a pool no layer uses");
});

test("bad rows, lengths and slots are errors naming what is wrong", () => {
  const t = new SlotTables({ full: 8, swa: 4, rows: 2, context: 6 }, ["full", "swa"]);
  assert.throws(() => t.apply(step(seq(2, 1, 1, 0, [0]))), /row 2 is outside \[0, 2\)/);
  assert.throws(() => t.apply(step(seq(0, 1, 7, 0, [0, 1, 2, 3, 4, 5, 6]))), /7 tokens exceeds the 6 positions/);
  assert.throws(() => t.apply(step(seq(0, 2, 2, 1, [0]))), /slots from position 1 do not cover the new tokens \[0, 2\)/);
  assert.throws(() => t.apply(step(seq(0, 1, 2, 1, [0]))), /row 0 holds 0 positions, the step adds from 1/);
  assert.throws(() => t.apply(step(seq(0, 1, 1, 0, [8]))), /full slot 8 for position 0 is outside the pool of 8/);
  assert.throws(() => t.apply(step(seq(0, 1, 1, 0, [-1]))), /full slot -1/);
  assert.throws(() => t.apply(step(seq(0, 1, 1, 0, [1], [4]))), /swa slot 4/);
  assert.throws(() => t.apply(step(seq(0, 1, 1, 0, [1, 2]))), /need 1 slots, got 2 full/);
  assert.throws(() => t.apply(step(seq(1, 1, 1, 0, [1]), seq(1, 1, 1, 0, [2]))), /row 1 appears twice/);
  assert.throws(() => new SlotTables({ full: 8, swa: 0, rows: 2 ** 16, context: 2 ** 16 }, ["full"]), /exceed 2\^31 entries/);
});

test("a rejected step changes no row, not even the rows before the bad one", () => {
  const t = new SlotTables({ full: 8, swa: 4, rows: 2, context: 6 }, ["full", "swa"]);
  t.apply(step(seq(0, 1, 1, 0, [1])));
  assert.throws(() => t.apply(step(seq(0, 1, 2, 1, [2]), seq(1, 1, 1, 0, [9]))), /full slot 9/);
  assert.deepEqual([...t.slots("full", 0)], [1]);
  assert.equal(t.slots("full", 1).length, 0);
});

test("newSlotsOnly keeps just the new tokens' slots", () => {
  const b = newSlotsOnly(step(seq(0, 2, 5, 0, [1, 2, 3, 4, 5], [0, 0, 0, 6, 7])));
  assert.equal(b.seqs[0].slotsFrom, 3);
  assert.deepEqual([...b.seqs[0].fullSlots], [4, 5]);
  assert.deepEqual([...b.seqs[0].swaSlots], [6, 7]);
});
