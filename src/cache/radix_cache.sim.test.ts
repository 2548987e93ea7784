// Randomized simulation of a scheduler driving the radix cache: requests with shared prefixes
// are admitted (match + lock + alloc), decode, free SWA slots of chunks they have left, get
// paused (insert + relock), finish (insert) or are retracted, under constant pool pressure.
// Besides checkInvariants after every operation, each slot records which prefix its KV was
// computed for, so reading wrong or stale KV through the tree is caught too.

import { test } from "node:test";
import assert from "node:assert/strict";
import { RadixCache, type PrefixMatch, type RadixNode } from "./radix_cache.js";
import { TokenPool } from "./token_pool.js";

const CHUNK = 8;
const VOCAB = 40;

function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Identity of the KV at position i: a hash of ids[0..i] (KV depends on the whole prefix). */
function prefixHashes(ids: readonly number[]): string[] {
  let h1 = 0x811c9dc5, h2 = 0x2545f491;
  return ids.map((t) => {
    h1 = Math.imul(h1 ^ (t + 1), 0x01000193);
    h2 = Math.imul(h2 + t + 7, 0x5bd1e995) ^ (h2 >>> 13);
    return `${h1 >>> 0}:${h2 >>> 0}`;
  });
}

const chunkStart = (p: number) => p - (p % CHUNK);

interface Req {
  ids: number[];
  hashes: string[];
  full: number[];
  swa: number[];
  /** Positions [0, own) belong to the tree; the request owns the rest. */
  own: number;
  node: RadixNode;
  stopAt: number;
}

interface SimConfig {
  seed: number;
  fullSize: number;
  swaSize: number | null;
  disabled?: boolean;
  ops: number;
}

class Sim {
  readonly full: TokenPool;
  readonly swa: TokenPool | null;
  readonly cache: RadixCache;
  readonly rand: () => number;
  /** Slot → hash of the prefix whose KV it holds. */
  readonly kvFull: string[] = [];
  readonly kvSwa: string[] = [];
  readonly running: Req[] = [];
  readonly finished: number[][] = [];
  readonly docs: number[][];
  readonly stats = { hits: 0, alignedHits: 0, hitsWithSwaHoles: 0, evictedFull: 0, tombstoned: 0, retracted: 0, paused: 0, finished: 0 };

  constructor(readonly cfg: SimConfig) {
    this.rand = mulberry32(cfg.seed);
    this.full = new TokenPool(cfg.fullSize);
    this.swa = cfg.swaSize === null ? null : new TokenPool(cfg.swaSize);
    this.cache = new RadixCache({ full: this.full, swa: this.swa, chunkSize: CHUNK, disabled: cfg.disabled });
    this.docs = Array.from({ length: 5 }, () => Array.from({ length: 70 }, () => this.int(VOCAB)));
  }

  int(n: number): number {
    return Math.floor(this.rand() * n);
  }

  pick<T>(xs: T[]): T {
    return xs[this.int(xs.length)];
  }

  run(): void {
    for (let i = 0; i < this.cfg.ops; i++) {
      const r = this.rand();
      if (r < 0.2) this.admit();
      else if (r < 0.9) this.decode();
      else if (r < 0.93) this.finishOne();
      else if (r < 0.96) this.pause();
      else if (r < 0.98) this.abortOne();
      else this.evict(this.rand() < 0.5 ? 0 : this.int(this.full.size / 2), this.int((this.swa?.size ?? 0) / 2));
      this.check();
    }
    while (this.running.length > 0) {
      this.finish(this.running[0]);
      this.check();
    }
  }

  makePrompt(): number[] {
    if (this.finished.length > 0 && this.rand() < 0.2) return [...this.pick(this.finished), this.int(VOCAB)];
    const prefix = this.pick(this.docs).slice(0, 1 + this.int(70));
    return [...prefix, ...Array.from({ length: this.int(10) }, () => this.int(VOCAB))];
  }

  admit(): void {
    if (this.running.length >= 8) return;
    const ids = this.makePrompt();
    const hashes = prefixHashes(ids);
    const m = this.cache.match(ids);
    this.checkMatch(hashes, m);
    this.cache.lock(m.node);
    const n = ids.length - m.length;
    const f = this.allocBoth(n);
    if (!f) {
      this.cache.unlock(m.node);
      return;
    }
    const req: Req = {
      ids, hashes,
      full: [...m.fullSlots, ...f.full], swa: [...m.swaSlots, ...f.swa],
      own: m.length, node: m.node, stopAt: ids.length + 1 + this.int(60),
    };
    this.writeKv(req, m.length);
    this.dropOldSwa(req);
    this.running.push(req);
  }

  decode(): void {
    if (this.running.length === 0) return;
    const req = this.pick(this.running);
    const f = this.allocBoth(1);
    if (!f) {
      this.stats.retracted++;
      this.abort(req);
      return;
    }
    req.ids.push(this.int(VOCAB));
    req.hashes = prefixHashes(req.ids);
    req.full.push(f.full[0]);
    req.swa.push(f.swa[0]);
    this.writeKv(req, req.ids.length - 1);
    this.dropOldSwa(req);
    if (req.ids.length >= req.stopAt) this.finish(req);
  }

  /** Evicts for n new positions in both pools, then allocates; null (nothing held) if they do not fit. */
  allocBoth(n: number): { full: Int32Array; swa: Int32Array } | null {
    this.evict(n, this.swa ? n : 0);
    const full = this.full.alloc(n);
    const swa = this.swa ? this.swa.alloc(n) : new Int32Array(n).fill(-1);
    if (full && swa) return { full, swa };
    if (full) this.full.free(full);
    if (swa && this.swa) this.swa.free(swa);
    return null;
  }

  evict(needFull: number, needSwa: number): void {
    const cached = this.cache.cachedTokens;
    const swaBefore = this.cache.evictableSwa;
    this.cache.evict(needFull, needSwa);
    assert.ok(this.full.available >= needFull || this.cache.evictableFull === 0, "evict stopped early (full)");
    if (this.swa) assert.ok(this.swa.available >= needSwa || this.cache.evictableSwa === 0, "evict stopped early (swa)");
    if (this.cache.cachedTokens < cached) this.stats.evictedFull++;
    else if (this.cache.evictableSwa < swaBefore) this.stats.tombstoned++;
  }

  /** Records that the slots of positions [from, len) now hold this request's KV. */
  writeKv(req: Req, from: number): void {
    for (let p = from; p < req.ids.length; p++) {
      this.kvFull[req.full[p]] = req.hashes[p];
      if (req.swa[p] !== -1) this.kvSwa[req.swa[p]] = req.hashes[p];
    }
  }

  /** Frees the request's own SWA slots of chunks before the next query's chunk. */
  dropOldSwa(req: Req): void {
    if (!this.swa) return;
    for (let p = req.own; p < chunkStart(req.ids.length); p++) {
      if (req.swa[p] === -1) continue;
      this.swa.free([req.swa[p]]);
      req.swa[p] = -1;
    }
  }

  /** insert hands everything to the tree; returns the node and the tree's slots written back. */
  insert(req: Req): RadixNode {
    const full = Int32Array.from(req.full);
    const swa = this.swa ? Int32Array.from(req.swa) : null;
    const node = this.cache.insert(req.ids, full, swa);
    req.full = [...full];
    if (swa) req.swa = [...swa];
    return node;
  }

  finishOne(): void {
    if (this.running.length > 0) this.finish(this.pick(this.running));
  }

  finish(req: Req): void {
    this.insert(req);
    this.cache.unlock(req.node);
    this.running.splice(this.running.indexOf(req), 1);
    this.stats.finished++;
    if (this.cfg.disabled) return;
    this.finished.push(req.ids);
    // Right after finishing, the whole sequence is reusable: its live chunk kept its SWA KV.
    const again = [...req.ids, -1];
    const m = this.cache.match(again);
    assert.equal(m.length, req.ids.length);
    this.checkMatch(prefixHashes(again), m);
  }

  /** Chunked-prefill style: cache what is computed so far and go on from the tree's copy. */
  pause(): void {
    if (this.running.length === 0 || this.cfg.disabled) return;
    const req = this.pick(this.running);
    const node = this.insert(req);
    this.cache.lock(node);
    this.cache.unlock(req.node);
    req.node = node;
    req.own = req.ids.length;
    this.stats.paused++;
  }

  abortOne(): void {
    if (this.running.length > 0) this.abort(this.pick(this.running));
  }

  abort(req: Req): void {
    this.full.free(req.full.slice(req.own));
    if (this.swa) this.swa.free(req.swa.slice(req.own));
    this.cache.unlock(req.node);
    this.running.splice(this.running.indexOf(req), 1);
  }

  /** The match is legal (leaves a token, SWA of its live chunk present) and every slot holds the right KV. */
  checkMatch(hashes: string[], m: PrefixMatch): void {
    const L = m.length;
    assert.ok(L <= Math.max(0, hashes.length - 1));
    assert.equal(m.fullSlots.length, L);
    assert.equal(m.swaSlots.length, L);
    if (L > 0) this.stats.hits++;
    if (L > 0 && L % CHUNK === 0) this.stats.alignedHits++;
    if (this.swa && m.swaSlots.includes(-1)) this.stats.hitsWithSwaHoles++;
    for (let p = 0; p < L; p++) {
      assert.equal(this.kvFull[m.fullSlots[p]], hashes[p], `full KV of position ${p}`);
      if (m.swaSlots[p] !== -1) assert.equal(this.kvSwa[m.swaSlots[p]], hashes[p], `swa KV of position ${p}`);
      else assert.ok(!this.swa || p < chunkStart(L), `swa KV of live position ${p} missing`);
    }
  }

  check(): void {
    const running = this.running;
    this.cache.checkInvariants({
      full: running.map((r) => r.full.slice(r.own)),
      swa: running.map((r) => r.swa.slice(r.own)),
      locks: running.map((r) => r.node),
    });
    for (const r of running) {
      const len = r.ids.length;
      for (let p = 0; p < len; p++) {
        assert.ok(!this.full.isFree(r.full[p]), `full slot of position ${p} is free`);
        assert.equal(this.kvFull[r.full[p]], r.hashes[p]);
      }
      if (!this.swa) continue;
      for (let p = chunkStart(len); p < len; p++) {
        assert.ok(r.swa[p] !== -1 && !this.swa.isFree(r.swa[p]), `swa slot of live position ${p} missing`);
        assert.equal(this.kvSwa[r.swa[p]], r.hashes[p]);
      }
    }
  }

  /** After every request finished, evicting everything returns both pools to all-free. */
  drain(): void {
    this.cache.evict(Infinity, Infinity);
    assert.equal(this.cache.cachedTokens, 0);
    assert.equal(this.full.available, this.full.size);
    if (this.swa) assert.equal(this.swa.available, this.swa.size);
    this.cache.checkInvariants({ locks: [] });
  }
}

for (const seed of [1, 2, 3, 4, 5]) {
  test(`simulation, hybrid SWA, seed ${seed}`, () => {
    const sim = new Sim({ seed, fullSize: 300, swaSize: 72, ops: 2000 });
    sim.run();
    const s = sim.stats;
    assert.ok(s.hits > 50 && s.alignedHits > 5 && s.hitsWithSwaHoles > 20 && s.evictedFull > 5 && s.tombstoned > 3, JSON.stringify(s));
    assert.ok(s.retracted > 3 && s.paused > 20 && s.finished > 50, JSON.stringify(s));
    sim.drain();
  });
}

for (const seed of [6, 7]) {
  test(`simulation, full pool only, seed ${seed}`, () => {
    const sim = new Sim({ seed, fullSize: 300, swaSize: null, ops: 2000 });
    sim.run();
    assert.ok(sim.stats.hits > 50 && sim.stats.evictedFull > 5, JSON.stringify(sim.stats));
    sim.drain();
  });
}

test("simulation, radix cache disabled", () => {
  const sim = new Sim({ seed: 8, fullSize: 300, swaSize: 140, disabled: true, ops: 1500 });
  sim.run();
  assert.equal(sim.stats.hits, 0);
  assert.ok(sim.stats.finished > 20);
  sim.drain();
});

test("simulation ends in reset with both pools all free", () => {
  const sim = new Sim({ seed: 9, fullSize: 360, swaSize: 140, ops: 800 });
  sim.run();
  sim.cache.reset();
  assert.equal(sim.full.available, sim.full.size);
  assert.equal(sim.swa!.available, sim.swa!.size);
  sim.cache.checkInvariants({ locks: [] });
});
