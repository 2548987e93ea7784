// The host side of the per-sequence slot tables (see SeqSpan): every backend keeps, per table
// row, the pool slot of each position, and grows it by what a step carries. The CPU backend reads
// its attention slots from here; the CUDA backend also copies each step's additions into its
// device tables (the kernels read those) and uses this copy for its host-side bounds checks.

import type { KvPoolSizes, StepBatch } from "./backend.js";

/** Table indices (row · context + position) are int32 in the kernels. */
export const SLOT_TABLE_MAX_ENTRIES = 2 ** 31 - 1;

export type Pool = "full" | "swa";

/**
 * One step's additions to a pool's table, a run per sequence: `segs` holds [table index of the
 * run's first position (row · context + position), its length, its offset in `slots`] per run.
 * Both are views of `packed` ([segs | slots]), which the CUDA backend uploads as it is.
 */
export interface PoolAppends {
  segs: Int32Array;
  slots: Int32Array;
  packed: Int32Array;
}
export type SlotAppends = Record<Pool, PoolAppends>;

function appends(runs: number, slots: number): PoolAppends {
  const packed = new Int32Array(3 * runs + slots);
  return { segs: packed.subarray(0, 3 * runs), slots: packed.subarray(3 * runs), packed };
}
const none = (): PoolAppends => appends(0, 0);

export class SlotTables {
  private readonly lists: Record<Pool, Int32Array>[];
  private readonly lens: Int32Array;
  private lastBatch: StepBatch | null = null;
  private lastAppends: SlotAppends = { full: none(), swa: none() };

  /** `pools`: the pools some layer uses (only those are kept and checked). */
  constructor(
    readonly sizes: KvPoolSizes,
    readonly pools: readonly Pool[],
  ) {
    const { rows, context } = sizes;
    if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(context) || context < 1) {
      throw new Error(`slot tables need ≥ 1 row and position, got ${rows} × ${context}`);
    }
    if (rows * context > SLOT_TABLE_MAX_ENTRIES) {
      throw new Error(`slot tables of ${rows} sequences × ${context} positions exceed 2^31 entries: lower --max-running-requests or --context-length`);
    }
    this.lists = Array.from({ length: rows }, () => ({ full: new Int32Array(0), swa: new Int32Array(0) }));
    this.lens = new Int32Array(rows);
  }

  /** Slots of positions [0, length) of a row in a pool. */
  slots(pool: Pool, row: number): Int32Array {
    return this.lists[row][pool].subarray(0, this.lens[row]);
  }

  /**
   * Applies a step's additions (validated: rows, lengths, every slot inside its pool or -1 for
   * gone SWA KV) and returns them as runs per pool (PoolAppends). The same batch object again is a
   * no-op returning the same runs (every layer's attention calls this). Sequences on `fixedRow`
   * (a GPU's padding row, whose content never changes) are left out.
   */
  apply(batch: StepBatch, fixedRow = -1): SlotAppends {
    if (batch === this.lastBatch) return this.lastAppends;
    const { rows, context } = this.sizes;
    let total = 0;
    const seen = new Set<number>();
    const seqs = batch.seqs.filter((s) => s.row !== fixedRow);
    for (const s of seqs) {
      if (!Number.isInteger(s.row) || s.row < 0 || s.row >= rows) throw new Error(`slot tables: row ${s.row} is outside [0, ${rows})`);
      if (seen.has(s.row)) throw new Error(`slot tables: row ${s.row} appears twice in one step`);
      seen.add(s.row);
      if (s.kvLen > context) throw new Error(`slot tables: a sequence of ${s.kvLen} tokens exceeds the ${context} positions of a row`);
      const n = s.kvLen - s.slotsFrom;
      if (!(s.slotsFrom >= 0 && s.slotsFrom <= s.kvLen - s.qLen)) {
        throw new Error(`slot tables: slots from position ${s.slotsFrom} do not cover the new tokens [${s.kvLen - s.qLen}, ${s.kvLen})`);
      }
      if (s.fullSlots.length !== n || s.swaSlots.length !== n) {
        throw new Error(`slot tables: positions [${s.slotsFrom}, ${s.kvLen}) need ${n} slots, got ${s.fullSlots.length} full / ${s.swaSlots.length} SWA`);
      }
      // A row starts over at slotsFrom; it may not skip positions it never had.
      if (s.slotsFrom > this.lens[s.row]) throw new Error(`slot tables: row ${s.row} holds ${this.lens[s.row]} positions, the step adds from ${s.slotsFrom}`);
      for (const pool of this.pools) {
        const src = pool === "full" ? s.fullSlots : s.swaSlots;
        const limit = pool === "full" ? this.sizes.full : this.sizes.swa;
        const lo = pool === "full" ? 0 : -1; // a full slot is never gone
        for (let i = 0; i < src.length; i++) {
          if (!(src[i] >= lo && src[i] < limit)) throw new Error(`slot tables: ${pool} slot ${src[i]} for position ${s.slotsFrom + i} is outside the pool of ${limit}`);
        }
      }
      total += n;
    }
    // Everything is checked before anything is written: a rejected step changes no row.
    const out: SlotAppends = { full: none(), swa: none() };
    for (const pool of this.pools) out[pool] = appends(seqs.length, total);
    let at = 0;
    seqs.forEach((s, k) => {
      for (const pool of this.pools) {
        const src = pool === "full" ? s.fullSlots : s.swaSlots;
        let list = this.lists[s.row][pool];
        if (list.length < s.kvLen) {
          const grown = new Int32Array(Math.min(context, Math.max(s.kvLen, 2 * list.length, 64)));
          grown.set(list.subarray(0, s.slotsFrom));
          this.lists[s.row][pool] = list = grown;
        }
        list.set(src, s.slotsFrom);
        out[pool].segs.set([s.row * context + s.slotsFrom, src.length, at], 3 * k);
        out[pool].slots.set(src, at);
      }
      this.lens[s.row] = s.kvLen;
      at += s.kvLen - s.slotsFrom;
    });
    this.lastBatch = batch;
    this.lastAppends = out;
    return out;
  }
}

/**
 * The same step as it would come once the tables hold every earlier position: each sequence
 * carries only its new tokens' slots (benchmarks time repeated steps this way, as serving runs).
 */
export function newSlotsOnly(batch: StepBatch): StepBatch {
  const seqs = batch.seqs.map((s) => {
    const from = s.kvLen - s.qLen;
    const skip = from - s.slotsFrom;
    return { ...s, slotsFrom: from, fullSlots: s.fullSlots.subarray(skip), swaSlots: s.swaSlots.subarray(skip) };
  });
  return { ...batch, seqs };
}
