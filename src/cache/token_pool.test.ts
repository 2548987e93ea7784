import { test } from "node:test";
import assert from "node:assert/strict";
import { TokenPool } from "./token_pool.js";

test("alloc hands out distinct slots in order and tracks counts", () => {
  const pool = new TokenPool(5);
  assert.equal(pool.available, 5);
  assert.equal(pool.used, 0);
  assert.deepEqual([...pool.alloc(3)!], [0, 1, 2]);
  assert.equal(pool.available, 2);
  assert.equal(pool.used, 3);
  assert.deepEqual([...pool.alloc(0)!], []);
  assert.deepEqual([...pool.alloc(2)!], [3, 4]);
  assert.equal(pool.available, 0);
  assert.equal(pool.alloc(1), null);
});

test("alloc of more than available returns null and takes nothing", () => {
  const pool = new TokenPool(4);
  pool.alloc(2);
  assert.equal(pool.alloc(3), null);
  assert.equal(pool.available, 2);
  assert.throws(() => pool.alloc(-1), RangeError);
  assert.throws(() => pool.alloc(1.5), RangeError);
});

test("free returns slots, skips -1, and freed slots are reused", () => {
  const pool = new TokenPool(4);
  const a = pool.alloc(4)!;
  pool.free([a[1], -1, a[3]]);
  assert.equal(pool.available, 2);
  assert.ok(pool.isFree(a[1]) && pool.isFree(a[3]) && !pool.isFree(a[0]));
  assert.deepEqual(new Set(pool.alloc(2)), new Set([a[1], a[3]]));
  assert.equal(pool.available, 0);
});

test("double free and out-of-range free throw and free nothing", () => {
  const pool = new TokenPool(4);
  pool.alloc(3);
  pool.free([1]);
  assert.throws(() => pool.free([1]), /double free of slot 1/);
  assert.throws(() => pool.free([0, 0]), /double free of slot 0/);
  assert.equal(pool.isFree(0), false, "the first 0 was rolled back");
  assert.throws(() => pool.free([2, 4]), /out of range/);
  assert.equal(pool.isFree(2), false, "2 was rolled back");
  assert.throws(() => pool.free([-2]), /out of range/);
  assert.throws(() => pool.free([3]), /double free/, "never allocated");
  assert.equal(pool.available, 2);
  assert.throws(() => pool.isFree(9), RangeError);
});

test("reset makes every slot free again", () => {
  const pool = new TokenPool(3);
  pool.alloc(3);
  pool.reset();
  assert.equal(pool.available, 3);
  assert.deepEqual([...pool.alloc(3)!], [0, 1, 2]);
});

test("constructor validates the size", () => {
  assert.throws(() => new TokenPool(-1), RangeError);
  assert.throws(() => new TokenPool(2.5), RangeError);
  assert.equal(new TokenPool(0).alloc(1), null);
});
