import { test } from "node:test";
import assert from "node:assert/strict";
import { MinHeap } from "./min_heap.js";

test("pops in order, interleaved with pushes", () => {
  const heap = new MinHeap<number>((a, b) => a < b);
  const values = [5, 3, 9, 1, 1, 8, 0, 7, 2, 6, 4];
  for (const v of values.slice(0, 6)) heap.push(v);
  const out = [heap.pop(), heap.pop()];
  for (const v of values.slice(6)) heap.push(v);
  while (heap.size > 0) out.push(heap.pop());
  assert.deepEqual(out, [1, 1, 0, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(heap.pop(), undefined);
});
