import assert from "node:assert/strict";
import { test } from "node:test";
import { allInRange, firstOutOfRange, ramp } from "./int_arrays.js";

test("ramp gives positions from..to−1, growing its shared array past what was asked before", () => {
  assert.deepEqual([...ramp(3, 7)], [3, 4, 5, 6]);
  assert.equal(ramp(5, 5).length, 0);
  const far = ramp(100_000, 100_003);
  assert.deepEqual([...far], [100_000, 100_001, 100_002]);
  assert.deepEqual([...ramp(0, 2)], [0, 1], "earlier ranges still right after growth");
});

test("allInRange and firstOutOfRange over more than one Math.min/max chunk", () => {
  const a = Int32Array.from({ length: 40_000 }, (_, i) => i % 1000);
  assert.equal(allInRange(a, 0, 1000), true);
  assert.equal(allInRange(a, 0, 999), false);
  assert.equal(allInRange(a, 1, 1000), false);
  assert.equal(allInRange(new Int32Array(0), 5, 5), true);
  a[33_333] = -1; // in the third chunk
  assert.equal(allInRange(a, 0, 1000), false);
  assert.equal(firstOutOfRange(a, 0, 1000), 33_333);
  assert.equal(firstOutOfRange(a, -1, 1000), -1);
});
