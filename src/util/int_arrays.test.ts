import assert from "node:assert/strict";
import { test } from "node:test";
import { ramp } from "./int_arrays.js";

test("ramp gives positions from..to−1, growing its shared array past what was asked before", () => {
  assert.deepEqual([...ramp(3, 7)], [3, 4, 5, 6]);
  assert.equal(ramp(5, 5).length, 0);
  const far = ramp(100_000, 100_003);
  assert.deepEqual([...far], [100_000, 100_001, 100_002]);
  assert.deepEqual([...ramp(0, 2)], [0, 1], "earlier ranges still right after growth");
});
