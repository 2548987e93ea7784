// The `fa3` attention path: host side of native/kernels/attention_fa.cu (tiled tensor-core
// attention over the paged KV pools). The reference kernel (attention.cu) stays the `cuda`
// path and the test oracle; CudaBackend.attention() calls run() here after attn_prep has
// written the step's K/V into the pools.
//
// Work is cut into tiles on the host, once per (step, pool): a tile is up to R consecutive
// query rows of one sequence, [first row, rows, position of the first row, slot-list offset].
//   prefill kernel: R = 128 rows of one query head per block; tiles sorted by their last
//                   position, largest first (causal: the longest key ranges start first);
//   decode kernel:  R = ⌊64 / G⌋ rows × the G query heads of one KV head per block (the K/V
//                   tile is read once for the whole group), split over the key range when the
//                   blocks would not fill the GPU, then a combine kernel merges the splits —
//                   on sm_90 with 2, 4 or 8 splits the splits are one cluster and merge
//                   through distributed shared memory instead (attention_fa_decode_c<C>).
// The decode kernel is used when every sequence of the step has at most R new tokens.
// Prefill at head_dim 128 has three variants (TSGLANG_FA_PREFILL): w4 (4 warps × 32 rows; the
// default off sm_90), w8 (8 warps × 16 rows: fewer registers, more warps per SM, twice the
// shared-memory reads per FLOP) and wg (w8's tiling with Q·Kᵀ and P·V on wgmma; sm_90 only, its
// default: on an H100 8k causal 1.41 vs 1.99 ms for w4, 2k 0.125 vs 0.162 ms, 2026-11-27).

import type { Kernels } from "./kernels.js";
import type { DevicePtr, NativeCuda } from "./native.js";

/** Head dims the fa kernels are compiled for. */
export const FA_DIMS: readonly number[] = [16, 32, 64, 128];
const PREFILL_ROWS = 128;
const DECODE_BLOCK_ROWS = 64;
const KEY_TILE = 64;
const MAX_SPLITS = 256;

/** One sequence of the step as the kernels see it. */
export interface FaSeq {
  qStart: number;
  qLen: number;
  kvLen: number;
  /** Offset of the sequence's slot list in the step's slot table. */
  slotBase: number;
}

export interface FaContext {
  kernels: Kernels;
  native: NativeCuda;
  smCount: number;
  /** Uploads ints valid for the rest of the step. */
  uploadInts(values: Int32Array): DevicePtr;
  /** Device scratch valid for this layer. */
  scratch(bytes: number): DevicePtr;
}

export interface FaArgs {
  q: DevicePtr;
  kPool: DevicePtr;
  vPool: DevicePtr;
  slotTable: DevicePtr;
  out: DevicePtr;
  rows: number;
  hq: number;
  hkv: number;
  dim: number;
  chunk: number;
}

interface Plan {
  kind: "prefill" | "decode";
  /** [rowStart, rows, pos0, slotBase] per tile. */
  host: Int32Array;
  tiles: DevicePtr;
  count: number;
}

/** Why the fa kernels cannot run a configuration (the caller falls back to the reference kernel), or null. */
export function faUnsupported(dim: number, hq: number, hkv: number): string | null {
  if (!FA_DIMS.includes(dim)) return `head_dim ${dim} (the fa kernels are built for ${FA_DIMS.join(", ")})`;
  if (hkv <= 0 || hq % hkv !== 0) return `${hq} query heads over ${hkv} KV heads`;
  return null;
}

/** Shared memory per block; keep in step with faSmemBytes in attention_fa.cu. */
export function faSmemBytes(kind: "prefill" | "decode", dim: number): number {
  return (kind === "prefill" ? 96 : 112) * dim * 8;
}

/** Rows of one query head per decode tile: ⌊64 / G⌋ (0: the group does not fit a block). */
export function decodeRowsPerTile(hq: number, hkv: number): number {
  return Math.floor(DECODE_BLOCK_ROWS / (hq / hkv));
}

/**
 * Splits of the key range for the decode kernel: enough blocks for ~4 per SM, ≥ 2 key tiles each,
 * and beyond 64 splits ≥ 32 tiles each. A tp-4 rank (2 KV heads, batch 1) measured on 4 × H200,
 * 2026-11-27: at 1M keys 256 splits beat 64 (9.4 vs 10.9 ms per decode step), at 200K they lost
 * (6.5 vs 6.1 ms: a split of 12 tiles is mostly pipeline fill).
 */
export function decodeSplits(smCount: number, blocks: number, maxKeyTiles: number): number {
  const want = Math.ceil((4 * smCount) / Math.max(1, blocks));
  const cap = Math.max(64, Math.floor(maxKeyTiles / 32));
  const s = Math.max(1, Math.min(want, Math.floor(maxKeyTiles / 2), cap, MAX_SPLITS));
  // A power of two: any count is correct, and a CUDA graph is captured per count (splitsOf), so
  // few distinct counts mean few captures as a sequence grows.
  return 2 ** Math.floor(Math.log2(s));
}

/** The tile table for a step: pure, exported for tests. */
export function planTiles(seqs: readonly FaSeq[], hq: number, hkv: number): { kind: "prefill" | "decode"; host: Int32Array; count: number } {
  const decodeRows = decodeRowsPerTile(hq, hkv);
  const maxQ = seqs.reduce((m, s) => Math.max(m, s.qLen), 0);
  const kind = decodeRows >= 1 && maxQ <= decodeRows ? "decode" : "prefill";
  const rowsPerTile = kind === "decode" ? decodeRows : PREFILL_ROWS;
  const tiles: [number, number, number, number][] = [];
  for (const s of seqs) {
    for (let t = 0; t < s.qLen; t += rowsPerTile) {
      tiles.push([s.qStart + t, Math.min(rowsPerTile, s.qLen - t), s.kvLen - s.qLen + t, s.slotBase]);
    }
  }
  if (kind === "prefill") tiles.sort((a, b) => b[2] + b[1] - (a[2] + a[1]));
  const host = new Int32Array(4 * tiles.length);
  tiles.forEach((t, i) => host.set(t, 4 * i));
  return { kind, host, count: tiles.length };
}

export type PrefillVariant = "w4" | "w8" | "wg";

export class FlashAttention {
  /** Tile tables per step metadata object (one per step and pool). */
  private readonly plans = new WeakMap<object, Plan>();
  private readonly smemSet = new Set<string>();
  /** The prefill kernel at head_dim 128: 4 warps × 32 rows (default), 8 warps × 16 rows, or that with wgmma. */
  prefillVariant: PrefillVariant;
  /** The decode split count last chosen for a step's metadata, per chunk size (1 for prefill): see splitsOf. */
  private readonly splits = new WeakMap<object, Map<number, number>>();
  /** Thread-block clusters (sm_90): 2, 4 or 8 decode splits merge inside the decode kernel. */
  private readonly clusters: boolean;

  constructor(private readonly ctx: FaContext, opts: { prefillVariant?: PrefillVariant; sm90?: boolean } = {}) {
    this.clusters = !!opts.sm90 && process.env.TSGLANG_FA_CLUSTER !== "0";
    // wg by default on sm_90 (measured faster than w4, bench/attention.ts); TSGLANG_FA_PREFILL picks another.
    const env = process.env.TSGLANG_FA_PREFILL;
    const asked = opts.prefillVariant ?? (env === "w4" || env === "w8" || env === "wg" ? env : opts.sm90 ? "wg" : "w4");
    this.prefillVariant = asked === "wg" && !opts.sm90 ? "w4" : asked; // wgmma exists on sm_90 only
  }

  /**
   * The split count run() chose for this metadata and chunk size (after a run, dry or not; a
   * chunked layer's key range, and so its count, differs from a global layer's over the same
   * metadata). A CUDA graph bakes the counts in, and one chosen at a short context leaves a long
   * one to a few blocks (a 1M-token decode ran at 28 ms/token that way), so the backend captures
   * one graph per set of counts.
   */
  splitsOf(key: object, chunk: number): number {
    return this.splits.get(key)?.get(chunk) ?? 1;
  }

  /** Do `splits` decode splits run as one cluster (attention_fa_decode_c<splits>)? */
  private clusteredSplits(splits: number): boolean {
    return this.clusters && (splits === 2 || splits === 4 || splits === 8);
  }

  /** Attention for one layer; `key` identifies the step's metadata for the pool (its tiles are cached on it). */
  run(key: object, seqs: readonly FaSeq[], a: FaArgs): void {
    let plan = this.plans.get(key);
    if (!plan) {
      const p = planTiles(seqs, a.hq, a.hkv);
      plan = { ...p, tiles: p.count > 0 ? this.ctx.uploadInts(p.host) : 0n };
      this.plans.set(key, plan);
    }
    if (plan.count === 0) return;
    const { hq, hkv, dim, chunk } = a;
    const scaleLog2 = Math.LOG2E / Math.sqrt(dim);
    const variant = plan.kind === "prefill" && dim === 128 ? this.prefillVariant : "w4";
    const w8 = variant !== "w4"; // 8 warps: w8, and wg (its wgmma twin)
    let splits = 1;
    let partO = 0n;
    let partML = 0n;
    if (plan.kind === "decode") {
      let maxKeyTiles = 0;
      for (let i = 0; i < plan.count; i++) {
        const nRows = plan.host[4 * i + 1], pos0 = plan.host[4 * i + 2];
        const lo = chunk > 0 ? pos0 - (pos0 % chunk) : 0;
        maxKeyTiles = Math.max(maxKeyTiles, Math.ceil((pos0 + nRows - lo) / KEY_TILE));
      }
      splits = decodeSplits(this.ctx.smCount, hkv * plan.count, maxKeyTiles);
      if (splits > 1 && !this.clusteredSplits(splits)) {
        partO = this.ctx.scratch(a.rows * hq * splits * dim * 4);
        partML = this.ctx.scratch(a.rows * hq * splits * 8);
      }
    }
    let byChunk = this.splits.get(key);
    if (!byChunk) this.splits.set(key, (byChunk = new Map()));
    byChunk.set(chunk, splits);
    const clustered = plan.kind === "decode" && this.clusteredSplits(splits);
    const name = w8 ? `attention_fa_prefill_${variant}_d128` : clustered ? `attention_fa_decode_c${splits}_d${dim}` : `attention_fa_${plan.kind}_d${dim}`;
    const smem = faSmemBytes(plan.kind, dim);
    if (!this.smemSet.has(name)) {
      this.ctx.native.setMaxDynamicShared(this.ctx.kernels.fn(name), smem);
      this.smemSet.add(name);
    }
    const grid: [number, number, number] = plan.kind === "decode" ? [hkv, plan.count, splits] : [hq, plan.count, 1];
    const tiles = plan.tiles;
    this.ctx.kernels.launch(name, grid, [w8 ? 256 : 128], (k) =>
      k.ptr(a.q).ptr(a.kPool).ptr(a.vPool).ptr(a.slotTable).ptr(tiles).ptr(a.out).ptr(partO).ptr(partML)
        .i32(hq).i32(hkv).i32(chunk).i32(splits).f32(scaleLog2), smem);
    if (splits > 1 && !clustered) {
      this.ctx.kernels.launch("attention_fa_combine_bf16", [a.rows, hq], [Math.max(32, dim)], (k) =>
        k.ptr(partO).ptr(partML).ptr(a.out).i32(hq).i32(splits).i32(dim));
    }
  }
}
