// Radix prefix cache over token ids (SGLang's RadixCache / SWARadixCache, page size 1).
//
// The tree owns the KV slots of every cached position: always a full-pool slot, and with the
// hybrid cache an SWA-pool slot where one is still present (-1 once freed: "tombstoned").
// Chunked-local attention at position p reads only keys in [chunkStart(p), p], so a cached
// prefix of length L is usable when its full slots exist (always) and its SWA slots exist for
// [chunkStart(L), L). Requests lock the node of the prefix they use; locked nodes keep all
// their slots. Unlocked nodes are reclaimed in LRU order: whole leaves when the full pool is
// short, only the SWA slots (tombstoning) when the SWA pool is short.

import { MinHeap } from "./min_heap.js";
import type { TokenPool } from "./token_pool.js";

/** A tree node; callers treat it as an opaque handle for lock/unlock. */
export class RadixNode {
  readonly children = new Map<number, RadixNode>();
  /** Locks held on this node or any node below it. */
  lockRef = 0;
  /** Entries of swaSlots that are not -1. */
  swaCount: number;

  constructor(
    /** null for the root and for nodes no longer in the tree. */
    public parent: RadixNode | null,
    /** Absolute position of key[0]. */
    public start: number,
    public key: number[],
    public fullSlots: Int32Array,
    /** One entry per key token, -1 where freed; null without an SWA pool. */
    public swaSlots: Int32Array | null,
    public lastAccess: number,
  ) {
    this.swaCount = swaSlots ? countPresent(swaSlots) : 0;
  }

  get end(): number {
    return this.start + this.key.length;
  }
}

export interface PrefixMatch {
  length: number;
  /** Slots of positions [0, length); fresh arrays the caller may keep. */
  fullSlots: Int32Array;
  /** -1 where absent (always -1 without an SWA pool). */
  swaSlots: Int32Array;
  /** Ends exactly at `length`; the root when length is 0. */
  node: RadixNode;
}

export interface RadixCacheOptions {
  full: TokenPool;
  swa: TokenPool | null;
  /** Attention chunk of the local layers; must be > 0 when `swa` is given. */
  chunkSize: number;
  /** --disable-radix-cache: nothing is cached. */
  disabled?: boolean;
}

/** Slot holders outside the tree, for checkInvariants. */
export interface ExternalOwners {
  /** One array per holder (e.g. a running request's own slots); -1 entries are skipped. */
  full?: readonly ArrayLike<number>[];
  swa?: readonly ArrayLike<number>[];
  /** Every outstanding lock (a node twice if locked twice); when given, refcounts are checked exactly. */
  locks?: readonly RadixNode[];
}

export class RadixCache {
  private readonly full: TokenPool;
  private readonly swa: TokenPool | null;
  private readonly chunkSize: number;
  private readonly disabled: boolean;
  private readonly root = new RadixNode(null, 0, [], new Int32Array(0), null, 0);
  /** Logical clock for LRU; ticks once per match or insert. */
  private clock = 0;
  private totalFull = 0;
  private totalSwa = 0;
  /** Slots in nodes with lockRef > 0. */
  private lockedFull = 0;
  private lockedSwa = 0;

  constructor(opts: RadixCacheOptions) {
    if (opts.swa && !(Number.isInteger(opts.chunkSize) && opts.chunkSize > 0)) {
      throw new RangeError(`chunkSize must be a positive integer with an SWA pool, got ${opts.chunkSize}`);
    }
    this.full = opts.full;
    this.swa = opts.swa;
    this.chunkSize = opts.chunkSize;
    this.disabled = opts.disabled ?? false;
  }

  get evictableFull(): number {
    return this.totalFull - this.lockedFull;
  }

  get evictableSwa(): number {
    return this.totalSwa - this.lockedSwa;
  }

  /** Positions held by the tree (each has a full slot). */
  get cachedTokens(): number {
    return this.totalFull;
  }

  /**
   * Longest usable cached prefix of `ids`, leaving at least one token to compute (the last
   * prompt token's logits are needed). With the hybrid cache the length is cut back until the
   * SWA slots of its live chunk [chunkStart(L), L) are all present; a chunk boundary always
   * qualifies. Splits a node so the returned node ends exactly at the match.
   */
  match(ids: readonly number[]): PrefixMatch {
    const maxLen = this.disabled ? 0 : ids.length - 1;
    const path: RadixNode[] = [];
    let node = this.root;
    let matched = 0;
    while (matched < maxLen) {
      const child = node.children.get(ids[matched]);
      if (!child) break;
      const k = commonPrefix(child.key, ids, matched, maxLen);
      path.push(child);
      matched += k;
      if (k < child.key.length) break;
      node = child;
    }

    const fullSlots = new Int32Array(matched);
    const swaSlots = new Int32Array(matched).fill(-1);
    for (const n of path) {
      const len = Math.min(n.key.length, matched - n.start);
      fullSlots.set(n.fullSlots.subarray(0, len), n.start);
      if (n.swaSlots) swaSlots.set(n.swaSlots.subarray(0, len), n.start);
    }
    const length = this.usableLength(swaSlots, matched);
    const end = this.nodeEndingAt(path, length);
    this.touch(end, ++this.clock);
    return { length, fullSlots: fullSlots.slice(0, length), swaSlots: swaSlots.slice(0, length), node: end };
  }

  /** Pins the prefix ending at `node` (every node up to the root) against eviction. */
  lock(node: RadixNode): void {
    this.checkAttached(node);
    for (let n = node; n !== this.root; n = n.parent!) {
      if (n.lockRef++ === 0) {
        this.lockedFull += n.fullSlots.length;
        this.lockedSwa += n.swaCount;
      }
    }
  }

  unlock(node: RadixNode): void {
    this.checkAttached(node);
    if (node !== this.root && node.lockRef === 0) throw new Error("unlock of a node that is not locked");
    for (let n = node; n !== this.root; n = n.parent!) {
      if (--n.lockRef === 0) {
        this.lockedFull -= n.fullSlots.length;
        this.lockedSwa -= n.swaCount;
      }
    }
  }

  /**
   * Hands the KV of positions [0, ids.length) to the tree. New positions are adopted as they
   * are. Where the tree already has a position, the caller's differing slots are freed and the
   * tree's are written back into `fullSlots`/`swaSlots`, so a paused request can lock the
   * returned node and go on with the same arrays; from now on the tree owns every slot of
   * [0, ids.length) and the caller must not free them. An SWA slot the tree lacks (-1) is
   * taken from the caller when it has one. swaSlots null means the caller has none.
   * Disabled: frees every slot passed and returns the root.
   */
  insert(ids: readonly number[], fullSlots: Int32Array, swaSlots: Int32Array | null): RadixNode {
    if (fullSlots.length !== ids.length) throw new RangeError("insert: fullSlots and ids differ in length");
    if (swaSlots && !this.swa) throw new Error("insert: swaSlots given but there is no SWA pool");
    if (swaSlots && swaSlots.length !== ids.length) throw new RangeError("insert: swaSlots and ids differ in length");
    if (fullSlots.some((s) => s < 0)) throw new RangeError("insert: every position needs a full slot");
    if (this.disabled) {
      this.full.free(fullSlots);
      if (swaSlots) this.swa!.free(swaSlots);
      return this.root;
    }

    const dupFull: number[] = [];
    const dupSwa: number[] = [];
    let node = this.root;
    let pos = 0;
    while (pos < ids.length) {
      let child = node.children.get(ids[pos]);
      if (!child) {
        node = this.addLeaf(node, pos, ids, fullSlots, swaSlots);
        break;
      }
      const k = commonPrefix(child.key, ids, pos, ids.length);
      if (k < child.key.length) child = this.split(child, k);
      this.mergeInto(child, fullSlots, swaSlots, dupFull, dupSwa);
      node = child;
      pos += k;
    }
    this.touch(node, ++this.clock);
    this.full.free(dupFull);
    this.swa?.free(dupSwa);
    return node;
  }

  /**
   * Frees cached KV until the full pool has `needFull` slots available and the SWA pool
   * `needSwa`, or nothing unlocked is left. Full: remove unlocked leaves, least recently used
   * first (their SWA slots go too). SWA: tombstone unlocked nodes in LRU order, keeping their
   * full slots; this reaches every SWA slot that removing leaves could, so no second phase.
   */
  evict(needFull: number, needSwa = 0): void {
    if (this.full.available < needFull) this.evictLeaves(needFull);
    if (this.swa && this.swa.available < needSwa) this.tombstone(this.swa, needSwa);
  }

  /** Drops the whole tree and frees its slots. Refused while a request holds a lock. */
  reset(): void {
    if ([...this.root.children.values()].some((c) => c.lockRef > 0)) {
      throw new Error("RadixCache.reset while requests hold locks");
    }
    for (const n of this.nodes()) {
      this.full.free(n.fullSlots);
      if (n.swaSlots) this.swa!.free(n.swaSlots);
      n.parent = null;
    }
    this.root.children.clear();
    this.totalFull = this.totalSwa = this.lockedFull = this.lockedSwa = 0;
  }

  /**
   * Throws unless the bookkeeping is exact: tree shape, counters, refcounts, and every pool
   * slot either free or owned exactly once (by a tree node or one of `external`).
   */
  checkInvariants(external: ExternalOwners = {}): void {
    const fullOwners = new Int32Array(this.full.size);
    const swaOwners = new Int32Array(this.swa?.size ?? 0);
    const own = (owners: Int32Array, slots: ArrayLike<number>, who: string) => {
      for (let i = 0; i < slots.length; i++) {
        const s = slots[i];
        if (s === -1) continue;
        check(Number.isInteger(s) && s >= 0 && s < owners.length, `${who}: slot ${s} out of range`);
        owners[s]++;
      }
    };
    const directLocks = new Map<RadixNode, number>();
    for (const n of external.locks ?? []) directLocks.set(n, (directLocks.get(n) ?? 0) + 1);

    let totalFull = 0, totalSwa = 0, lockedFull = 0, lockedSwa = 0;
    check(this.root.parent === null && this.root.lockRef === 0, "root has a parent or a lock");
    for (const n of this.nodes()) {
      const p = n.parent;
      check(p !== null && p.children.get(n.key[0]) === n, "node not reachable through its parent");
      check(n.key.length > 0 && n.fullSlots.length === n.key.length, "empty node or full slots of the wrong length");
      check(n.start === p.end, "node start differs from its parent's end");
      check((n.swaSlots !== null) === (this.swa !== null), "swaSlots present without an SWA pool or vice versa");
      check(n.swaSlots === null || n.swaSlots.length === n.key.length, "swa slots of the wrong length");
      check(n.swaCount === (n.swaSlots ? countPresent(n.swaSlots) : 0), "stale swaCount");
      check(p === this.root || p.lastAccess >= n.lastAccess, "node used more recently than its parent");
      let childLocks = 0;
      for (const c of n.children.values()) childLocks += c.lockRef;
      if (external.locks) {
        check(n.lockRef === childLocks + (directLocks.get(n) ?? 0), "lockRef differs from the locks held");
      } else {
        check(n.lockRef >= childLocks, "lockRef below the locks of its children");
      }
      own(fullOwners, n.fullSlots, "tree");
      if (n.swaSlots) own(swaOwners, n.swaSlots, "tree");
      totalFull += n.fullSlots.length;
      totalSwa += n.swaCount;
      if (n.lockRef > 0) {
        lockedFull += n.fullSlots.length;
        lockedSwa += n.swaCount;
      }
    }
    for (const n of directLocks.keys()) check(n === this.root || n.parent !== null, "a lock is held on a detached node");
    check(!this.disabled || this.root.children.size === 0, "disabled cache holds nodes");
    check(
      totalFull === this.totalFull && totalSwa === this.totalSwa && lockedFull === this.lockedFull && lockedSwa === this.lockedSwa,
      "size counters out of date",
    );

    for (const slots of external.full ?? []) own(fullOwners, slots, "external");
    for (const slots of external.swa ?? []) own(swaOwners, slots, "external");
    checkOwnership(this.full, fullOwners, "full");
    if (this.swa) checkOwnership(this.swa, swaOwners, "swa");
  }

  /** Largest L ≤ matched whose live chunk [chunkStart(L), L) has every SWA slot. */
  private usableLength(swaSlots: Int32Array, matched: number): number {
    if (!this.swa) return matched;
    const chunkStart = matched - (matched % this.chunkSize);
    for (let p = chunkStart; p < matched; p++) if (swaSlots[p] === -1) return p;
    return matched;
  }

  /** The node of `path` (a root-down chain) that ends at `length`, splitting one if needed. */
  private nodeEndingAt(path: RadixNode[], length: number): RadixNode {
    if (length === 0) return this.root;
    const n = path.find((x) => x.start < length && length <= x.end)!;
    return length < n.end ? this.split(n, length - n.start) : n;
  }

  /**
   * Cuts `node` after k tokens. The new node is the prefix part, so handles to `node` keep
   * meaning "the prefix ending at node.end"; it inherits the lock count because every lock
   * below `node` passes through it.
   */
  private split(node: RadixNode, k: number): RadixNode {
    const parent = node.parent!;
    const head = new RadixNode(
      parent,
      node.start,
      node.key.slice(0, k),
      node.fullSlots.slice(0, k),
      node.swaSlots?.slice(0, k) ?? null,
      node.lastAccess,
    );
    head.lockRef = node.lockRef;
    parent.children.set(head.key[0], head);
    node.parent = head;
    node.start += k;
    node.key = node.key.slice(k);
    node.fullSlots = node.fullSlots.slice(k);
    node.swaSlots = node.swaSlots?.slice(k) ?? null;
    node.swaCount -= head.swaCount;
    head.children.set(node.key[0], node);
    return head;
  }

  private addLeaf(
    parent: RadixNode,
    pos: number,
    ids: readonly number[],
    fullSlots: Int32Array,
    swaSlots: Int32Array | null,
  ): RadixNode {
    const len = ids.length - pos;
    const swa = this.swa ? (swaSlots?.slice(pos) ?? new Int32Array(len).fill(-1)) : null;
    const leaf = new RadixNode(parent, pos, ids.slice(pos), fullSlots.slice(pos), swa, this.clock);
    parent.children.set(leaf.key[0], leaf);
    this.totalFull += len;
    this.totalSwa += leaf.swaCount;
    return leaf;
  }

  /** Reconciles the caller's slots for the positions of an existing node (see insert). */
  private mergeInto(
    node: RadixNode,
    fullSlots: Int32Array,
    swaSlots: Int32Array | null,
    dupFull: number[],
    dupSwa: number[],
  ): void {
    for (let i = 0; i < node.key.length; i++) {
      const pos = node.start + i;
      if (fullSlots[pos] !== node.fullSlots[i]) {
        dupFull.push(fullSlots[pos]);
        fullSlots[pos] = node.fullSlots[i];
      }
      if (!node.swaSlots || !swaSlots) continue;
      const mine = swaSlots[pos];
      if (node.swaSlots[i] === -1) {
        if (mine === -1) continue;
        node.swaSlots[i] = mine;
        node.swaCount++;
        this.totalSwa++;
        if (node.lockRef > 0) this.lockedSwa++;
      } else {
        if (mine !== -1 && mine !== node.swaSlots[i]) dupSwa.push(mine);
        swaSlots[pos] = node.swaSlots[i];
      }
    }
  }

  private evictLeaves(needFull: number): void {
    const heap = new MinHeap<RadixNode>(lruFirst);
    for (const n of this.nodes()) if (n.children.size === 0 && n.lockRef === 0) heap.push(n);
    while (this.full.available < needFull && heap.size > 0) {
      const leaf = heap.pop()!;
      const parent = leaf.parent!;
      parent.children.delete(leaf.key[0]);
      leaf.parent = null;
      this.full.free(leaf.fullSlots);
      if (leaf.swaSlots) this.swa!.free(leaf.swaSlots);
      this.totalFull -= leaf.fullSlots.length;
      this.totalSwa -= leaf.swaCount;
      if (parent !== this.root && parent.children.size === 0 && parent.lockRef === 0) heap.push(parent);
    }
  }

  private tombstone(swa: TokenPool, needSwa: number): void {
    const heap = new MinHeap<RadixNode>(lruFirst);
    for (const n of this.nodes()) if (n.swaCount > 0 && n.lockRef === 0) heap.push(n);
    while (swa.available < needSwa && heap.size > 0) {
      const n = heap.pop()!;
      swa.free(n.swaSlots!);
      n.swaSlots!.fill(-1);
      this.totalSwa -= n.swaCount;
      n.swaCount = 0;
    }
  }

  private touch(node: RadixNode, time: number): void {
    for (let n = node; n !== this.root; n = n.parent!) n.lastAccess = time;
  }

  private checkAttached(node: RadixNode): void {
    if (node !== this.root && node.parent === null) throw new Error("node is no longer in the cache");
  }

  /** Every node but the root, parents before children. */
  private *nodes(): Generator<RadixNode> {
    const stack = [...this.root.children.values()];
    while (stack.length > 0) {
      const n = stack.pop()!;
      yield n;
      stack.push(...n.children.values());
    }
  }
}

/**
 * Least recently used first. Ties are nodes of one path (touched together); the shallower goes
 * first, since a match needs SWA KV only near its end, which is usually deeper.
 */
function lruFirst(a: RadixNode, b: RadixNode): boolean {
  return a.lastAccess !== b.lastAccess ? a.lastAccess < b.lastAccess : a.start < b.start;
}

/** Length of the common prefix of key and ids[from, limit). */
function commonPrefix(key: readonly number[], ids: readonly number[], from: number, limit: number): number {
  const n = Math.min(key.length, limit - from);
  let k = 0;
  while (k < n && key[k] === ids[from + k]) k++;
  return k;
}

function countPresent(slots: Int32Array): number {
  let n = 0;
  for (const s of slots) if (s !== -1) n++;
  return n;
}

function checkOwnership(pool: TokenPool, owners: Int32Array, name: string): void {
  for (let s = 0; s < pool.size; s++) {
    const free = pool.isFree(s);
    check(free ? owners[s] === 0 : owners[s] === 1,
      free ? `${name} slot ${s} is free but owned ${owners[s]} times` : `${name} slot ${s} is used but owned ${owners[s]} times`);
  }
}

function check(cond: boolean, msg: string): asserts cond {
  if (!cond) throw new Error(`RadixCache invariant: ${msg}`);
}
