import { test } from "node:test";
import assert from "node:assert/strict";
import { RadixCache } from "./radix_cache.js";
import { TokenPool } from "./token_pool.js";

function plain(fullSize: number) {
  const full = new TokenPool(fullSize);
  return { full, cache: new RadixCache({ full, swa: null, chunkSize: 0 }) };
}

function hybrid(fullSize: number, swaSize: number, chunkSize: number) {
  const full = new TokenPool(fullSize);
  const swa = new TokenPool(swaSize);
  return { full, swa, cache: new RadixCache({ full, swa, chunkSize }) };
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
const concat = (a: ArrayLike<number>, b: ArrayLike<number>) => Int32Array.from([...Array.from(a), ...Array.from(b)]);

/** Frees a request's SWA slots of positions [from, to), as a running request does for old chunks. */
function dropSwa(pool: TokenPool, swa: Int32Array, from: number, to: number): void {
  pool.free(swa.subarray(from, to));
  swa.fill(-1, from, to);
}

test("match on an empty cache returns the root with nothing", () => {
  const { cache } = plain(8);
  const m = cache.match([1, 2, 3]);
  assert.equal(m.length, 0);
  assert.equal(m.fullSlots.length, 0);
  cache.lock(m.node);
  cache.unlock(m.node);
  cache.checkInvariants();
});

test("insert then match leaves at least the last token to compute", () => {
  const { full, cache } = plain(16);
  const slots = full.alloc(4)!;
  cache.insert([1, 2, 3, 4], slots.slice(), null);
  assert.equal(cache.cachedTokens, 4);
  assert.equal(full.used, 4);
  assert.deepEqual([...cache.match([1, 2, 3, 4]).fullSlots], [...slots.subarray(0, 3)]);
  assert.equal(cache.match([1, 2, 3, 4, 5]).length, 4);
  assert.equal(cache.match([1, 2, 3, 4, 5, 6]).length, 4);
  assert.equal(cache.match([1]).length, 0);
  assert.equal(cache.match([]).length, 0);
  assert.equal(cache.match([2, 2, 3, 4]).length, 0);
  assert.deepEqual([...cache.match([1, 2, 3, 4, 5]).swaSlots], [-1, -1, -1, -1]);
  cache.checkInvariants();
});

test("shared prefixes split nodes; the caller's duplicate slots are freed and rewritten", () => {
  const { full, cache } = plain(16);
  const a = full.alloc(5)!;
  cache.insert([1, 2, 3, 4, 5], a.slice(), null);
  const b = full.alloc(5)!;
  const bOrig = b.slice();
  cache.insert([1, 2, 3, 9, 9], b, null);

  assert.equal(cache.cachedTokens, 7);
  assert.equal(full.used, 7);
  assert.deepEqual([...b], [...a.subarray(0, 3), ...bOrig.subarray(3)], "tree slots written back");
  for (const s of bOrig.subarray(0, 3)) assert.ok(full.isFree(s), `duplicate ${s} freed`);

  const m = cache.match([1, 2, 3, 7]);
  assert.equal(m.length, 3);
  assert.deepEqual([...m.fullSlots], [...a.subarray(0, 3)]);
  assert.deepEqual([...cache.match([1, 2, 3, 9, 9, 0]).fullSlots], [...b]);
  assert.deepEqual([...cache.match([1, 2, 3, 4, 5, 0]).fullSlots], [...a]);
  cache.checkInvariants();
});

test("a request that reused a prefix hands it back without freeing the shared slots", () => {
  const { full, cache } = plain(16);
  cache.insert([1, 2, 3, 4], full.alloc(4)!, null);
  const m = cache.match([1, 2, 3, 4, 5, 6]);
  assert.equal(m.length, 4);
  cache.lock(m.node);
  const own = full.alloc(2)!;
  cache.checkInvariants({ full: [own], locks: [m.node] });
  const slots = concat(m.fullSlots, own);
  cache.insert([1, 2, 3, 4, 5, 6], slots, null);
  cache.unlock(m.node);
  assert.equal(full.used, 6);
  assert.equal(cache.cachedTokens, 6);
  assert.deepEqual([...cache.match([1, 2, 3, 4, 5, 6, 7]).fullSlots], [...slots]);
  cache.checkInvariants({ locks: [] });
});

test("a match inside a node splits it and the lock covers exactly the matched part", () => {
  const { full, cache } = plain(16);
  const slots = full.alloc(6)!;
  cache.insert([1, 2, 3, 4, 5, 6], slots, null);
  const m = cache.match([1, 2, 3, 8]);
  assert.equal(m.length, 3);
  cache.lock(m.node);
  assert.equal(cache.evictableFull, 3);
  cache.checkInvariants({ locks: [m.node] });

  cache.evict(full.size);
  assert.equal(cache.cachedTokens, 3);
  assert.equal(full.used, 3);
  assert.equal(cache.match([1, 2, 3, 4, 5, 6]).length, 3);
  cache.checkInvariants({ locks: [m.node] });

  cache.unlock(m.node);
  cache.evict(full.size);
  assert.equal(cache.cachedTokens, 0);
  assert.equal(full.available, full.size);
  assert.throws(() => cache.lock(m.node), /no longer in the cache/);
  cache.checkInvariants({ locks: [] });
});

test("locks count per holder, protect the whole path, and unbalanced unlock throws", () => {
  const { full, cache } = plain(16);
  cache.insert([1, 2, 3, 4], full.alloc(4)!, null);
  cache.insert([1, 2, 5, 6], full.alloc(4)!, null);
  const n = cache.match([1, 2, 3, 4, 0]).node;
  cache.lock(n);
  cache.lock(n);
  assert.equal(cache.evictableFull, 2, "only [5, 6] is unlocked");
  cache.checkInvariants({ locks: [n, n] });

  cache.evict(full.size);
  assert.equal(cache.cachedTokens, 4);
  cache.unlock(n);
  cache.evict(full.size);
  assert.equal(cache.cachedTokens, 4, "still locked once");
  cache.checkInvariants({ locks: [n] });

  cache.unlock(n);
  assert.equal(cache.evictableFull, 4);
  assert.throws(() => cache.unlock(n), /not locked/);
  cache.evict(full.size);
  assert.equal(full.available, full.size);
  cache.checkInvariants({ locks: [] });
});

test("evict removes unlocked leaves least recently used first", () => {
  const { full, cache } = plain(9);
  for (const t of [1, 2, 3]) cache.insert([t, t, t], full.alloc(3)!, null);
  cache.match([1, 1, 1, 0]); // touch A: the LRU order is now B, C, A
  cache.evict(1);
  assert.equal(full.available, 3);
  assert.deepEqual([1, 2, 3].map((t) => cache.match([t, t, t, 0]).length), [3, 0, 3]);
  cache.match([1, 1, 1, 0]); // C is now the oldest
  cache.evict(4);
  assert.equal(full.available, 6);
  assert.deepEqual([1, 2, 3].map((t) => cache.match([t, t, t, 0]).length), [3, 0, 0]);
  cache.checkInvariants();
});

test("evict removes a parent once its children are gone and stops when only locked nodes remain", () => {
  const { full, cache } = plain(8);
  cache.insert([1, 2, 3], full.alloc(3)!, null);
  cache.insert([1, 2, 4], full.alloc(3)!, null);
  const n = cache.match([1, 2, 4, 0]).node;
  cache.lock(n);
  cache.evict(100);
  assert.equal(cache.cachedTokens, 3, "[1, 2] and [4] are locked, [3] went");
  assert.equal(full.available, 5);
  cache.unlock(n);
  cache.evict(100);
  assert.equal(cache.cachedTokens, 0);
  assert.equal(full.available, 8);
  cache.checkInvariants({ locks: [] });
});

test("disabled cache matches nothing and insert frees everything", () => {
  const full = new TokenPool(8);
  const swa = new TokenPool(8);
  const cache = new RadixCache({ full, swa, chunkSize: 4, disabled: true });
  const ids = [1, 2, 3, 4, 5];
  const f = full.alloc(5)!;
  const s = swa.alloc(5)!;
  dropSwa(swa, s, 0, 1);
  assert.equal(cache.insert(ids, f, s), cache.match([]).node);
  assert.equal(full.available, 8);
  assert.equal(swa.available, 8);
  assert.equal(cache.cachedTokens, 0);
  assert.equal(cache.match([...ids, 6]).length, 0);
  cache.checkInvariants();
});

test("reset frees the tree, refuses while locked, and invalidates handles", () => {
  const { full, swa, cache } = hybrid(16, 16, 4);
  cache.insert([1, 2, 3], full.alloc(3)!, swa.alloc(3)!);
  const n = cache.match([1, 2, 3, 4]).node;
  cache.lock(n);
  assert.throws(() => cache.reset(), /hold locks/);
  cache.unlock(n);
  cache.reset();
  assert.equal(full.available, 16);
  assert.equal(swa.available, 16);
  assert.equal(cache.cachedTokens, 0);
  assert.equal(cache.evictableSwa, 0);
  assert.throws(() => cache.lock(n), /no longer in the cache/);
  cache.checkInvariants();
});

test("insert and the constructor validate their arguments", () => {
  const { full, cache } = plain(8);
  assert.throws(() => cache.insert([1, 2], full.alloc(1)!, null), /differ in length/);
  assert.throws(() => cache.insert([1], Int32Array.of(-1), null), /full slot/);
  assert.throws(() => cache.insert([1], full.alloc(1)!, Int32Array.of(0)), /no SWA pool/);
  const h = hybrid(8, 8, 4);
  assert.throws(() => h.cache.insert([1], h.full.alloc(1)!, new Int32Array(2)), /differ in length/);
  assert.throws(() => new RadixCache({ full, swa: new TokenPool(4), chunkSize: 0 }), /chunkSize/);
});

test("hybrid: a match is cut back until its live chunk has every SWA slot", () => {
  const { full, swa, cache } = hybrid(32, 32, 4);
  const ids = range(10, 20);
  const f = full.alloc(10)!;
  const s = swa.alloc(10)!;
  dropSwa(swa, s, 0, 4);
  dropSwa(swa, s, 5, 6); // a hole inside chunk [4, 8)
  cache.insert(ids, f.slice(), s.slice());

  const whole = cache.match([...ids, 99]);
  assert.equal(whole.length, 10, "chunk [8, 10) is complete");
  assert.deepEqual([...whole.swaSlots], [...s]);
  assert.deepEqual([...whole.fullSlots], [...f]);

  const m = cache.match(ids.slice(0, 8)); // 7 cached positions; chunk [4, 7) lacks position 5
  assert.equal(m.length, 5);
  assert.deepEqual([...m.fullSlots], [...f.subarray(0, 5)]);
  assert.deepEqual([...m.swaSlots], [-1, -1, -1, -1, s[4]]);
  cache.lock(m.node);
  assert.equal(cache.evictableFull, 5, "the returned node ends at the cut");
  cache.unlock(m.node);

  assert.equal(cache.match(ids.slice(0, 5)).length, 4, "a chunk boundary needs no SWA KV");
  assert.equal(cache.match(ids.slice(0, 4)).length, 0, "chunk [0, 3) has no SWA KV at all");
  cache.checkInvariants();
});

test("hybrid: insert without SWA slots caches full KV reusable up to a chunk boundary", () => {
  const { full, cache } = hybrid(16, 16, 4);
  const f = full.alloc(6)!;
  cache.insert(range(0, 6), f, null);
  const m = cache.match(range(0, 7));
  assert.equal(m.length, 4);
  assert.deepEqual([...m.fullSlots], [...f.subarray(0, 4)]);
  assert.equal(cache.evictableSwa, 0);
  cache.checkInvariants();
});

test("hybrid: SWA pressure tombstones LRU nodes, full KV stays reusable, SWA is re-adopted", () => {
  const { full, swa, cache } = hybrid(64, 16, 4);
  const A = range(1, 7);
  const B = range(20, 26);
  const fA = full.alloc(6)!;
  cache.insert(A, fA.slice(), swa.alloc(6)!);
  cache.insert(B, full.alloc(6)!, swa.alloc(6)!);
  assert.equal(cache.evictableSwa, 12);

  cache.evict(0, 8); // A is older: tombstoning it alone frees enough
  assert.equal(swa.available, 10);
  assert.equal(full.used, 12);
  assert.equal(cache.cachedTokens, 12);
  assert.equal(cache.evictableSwa, 6);
  cache.checkInvariants();

  const m = cache.match([...A, 0]);
  assert.equal(m.length, 4, "cut back to the chunk boundary");
  assert.deepEqual([...m.fullSlots], [...fA.subarray(0, 4)]);
  assert.deepEqual([...m.swaSlots], [-1, -1, -1, -1]);
  assert.equal(cache.match([...B, 0]).length, 6);

  // A request recomputes positions 4 and 5 from the match; the tree takes its SWA slots and frees its full duplicates.
  cache.lock(m.node);
  const f2 = full.alloc(2)!;
  const s2 = swa.alloc(2)!;
  cache.checkInvariants({ full: [f2], swa: [s2], locks: [m.node] });
  cache.insert(A, concat(m.fullSlots, f2), concat(m.swaSlots, s2));
  cache.unlock(m.node);
  assert.ok(full.isFree(f2[0]) && full.isFree(f2[1]));
  assert.ok(!swa.isFree(s2[0]) && !swa.isFree(s2[1]));
  const again = cache.match([...A, 0]);
  assert.equal(again.length, 6);
  assert.deepEqual([...again.swaSlots.subarray(4)], [...s2]);
  assert.deepEqual([...again.fullSlots], [...fA]);
  assert.equal(cache.evictableSwa, 8);
  cache.checkInvariants({ locks: [] });
});

test("hybrid: a second copy of a cached sequence gives up its slots and reads the tree's", () => {
  const { full, swa, cache } = hybrid(16, 16, 4);
  const ids = range(1, 7);
  const f1 = full.alloc(6)!;
  const s1 = swa.alloc(6)!;
  dropSwa(swa, s1, 0, 4);
  cache.insert(ids, f1.slice(), s1.slice());
  const f2 = full.alloc(6)!;
  const s2 = swa.alloc(6)!;
  const s2Orig = s2.slice();
  dropSwa(swa, s2, 0, 2);
  cache.insert(ids, f2, s2);
  assert.deepEqual([...f2], [...f1]);
  assert.deepEqual([...s2], [-1, -1, s2Orig[2], s2Orig[3], s1[4], s1[5]], "adopted 2 and 3, kept the tree's 4 and 5");
  assert.ok(swa.isFree(s2Orig[4]) && swa.isFree(s2Orig[5]));
  assert.equal(full.used, 6);
  assert.equal(swa.used, 4);
  assert.equal(cache.match([...ids, 0]).length, 6);
  cache.checkInvariants();
});

test("hybrid: ties on one path tombstone the shallower node first", () => {
  const { full, swa, cache } = hybrid(32, 32, 4);
  cache.insert([1, 2, 3, 4, 5, 6], full.alloc(6)!, swa.alloc(6)!);
  cache.insert([1, 2, 3, 4, 9, 9, 9], full.alloc(7)!, swa.alloc(7)!); // [1..4] + [9, 9, 9] touched now
  const freeAfter = (need: number) => {
    cache.evict(0, need);
    return swa.available;
  };
  const start = swa.available; // 32 - 6 - 3 (duplicates of [1..4] were freed)
  assert.equal(start, 23);
  assert.equal(freeAfter(start + 1), start + 2, "old tail [5, 6] first");
  assert.equal(freeAfter(start + 3), start + 6, "then the shared head [1..4]");
  assert.equal(cache.match([1, 2, 3, 4, 9, 9, 9, 0]).length, 7, "[9, 9, 9] kept its chunk [4, 8)");
  cache.checkInvariants();
});

test("hybrid: locked nodes keep SWA slots; full pressure removes whole leaves", () => {
  const { full, swa, cache } = hybrid(12, 12, 4);
  const A = range(1, 7);
  const B = range(20, 26);
  cache.insert(A, full.alloc(6)!, swa.alloc(6)!);
  cache.insert(B, full.alloc(6)!, swa.alloc(6)!);
  const n = cache.match([...A, 0]).node;
  cache.lock(n);

  cache.evict(0, 12);
  assert.equal(swa.available, 6, "only B was tombstoned");
  assert.equal(cache.evictableSwa, 0);
  cache.evict(12);
  assert.equal(full.available, 6, "B removed, A locked");
  assert.equal(cache.match([...A, 0]).length, 6);
  cache.checkInvariants({ locks: [n] });

  cache.unlock(n);
  cache.evict(12, 12);
  assert.equal(full.available, 12);
  assert.equal(swa.available, 12);
  cache.checkInvariants({ locks: [] });
});
