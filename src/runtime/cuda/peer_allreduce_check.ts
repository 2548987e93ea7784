// The custom all-reduce (peer_allreduce.ts) on GPUs, outside the model: exact checks and a
// micro-benchmark against NCCL. Rank r runs on GPU r with its own CudaBackend, joined by NCCL
// and connectPeers as engine/parallel.ts joins the model's ranks; rank 0 in the calling thread,
// ranks 1..n−1 in worker threads. Every rank runs the same sequence of all-reduces (a collective
// must), and a rank's input for a case is generated from (rank, case), so each rank computes the
// expected sum of all ranks on its own. A failed check is recorded, never thrown: a rank that
// stopped early would leave the others waiting in the next all-reduce.
//
// Checks: sizes from 1 element to the threshold (odd sizes, unaligned tensors) equal the fp32
// sum in rank order, bit for bit (bf16: that sum rounded once); sizes past the threshold go to
// NCCL; many consecutive calls with no host sync between them; a captured CUDA graph of custom
// (and NCCL) all-reduces replayed many times, with direct calls between replays; identical
// output bytes on every rank; the custom path used exactly for the calls that fit.

import { createHash } from "node:crypto";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { float32ToBf16 } from "../dtype.js";
import { CudaBackend, CudaTensor } from "./backend.js";
import { NcclCommunicator, type NcclInit, bindCudaDevice, ncclUniqueId } from "./nccl.js";
import { type DevicePtr, type NativeCuda, loadNative } from "./native.js";
import { type PeerAllReduce, type PeerExchange, createPeerExchange } from "./peer_allreduce.js";
import { type RankThreadReply, spawnRanks } from "../../util/rank_threads.js";

type DType = "bf16" | "f32";
const BYTES: Record<DType, number> = { bf16: 2, f32: 4 };
const MIB = 2 ** 20;
const PERSISTENT = -1; // backend.ts: a tensor outside the step arena

export interface PeerCheckOptions {
  /** Consecutive custom all-reduces with no host sync between them (the tests use ≥ 1000). */
  calls: number;
  /** Replays of a captured graph holding custom all-reduces (0: no graph check). */
  replays: number;
  /** Micro-benchmark: bf16 message sizes in bytes, custom vs NCCL inside CUDA graphs ([]: none). */
  benchBytes: number[];
  /** Skip the checks (benchmark only). */
  benchOnly?: boolean;
}

export interface PeerBench {
  bytes: number;
  /** Median µs per all-reduce on rank 0 (null: the size is past the custom path's threshold). */
  customUs: number | null;
  ncclUs: number;
  /** bf16 messages of one 5120-wide row per 10 KiB: the fused all-reduce + add + RMSNorm (null: not fused at this size). */
  fusedUs?: number | null;
  /** At 10 KiB: a tp-4 rank's o_proj (GEMV of [5120, 1280]) and its fused all-reduce, pulled and pushed. */
  oProj?: { pulledUs: number; pushedUs: number | null };
}

export interface PeerCheckResult {
  ranks: number;
  /** "" when the custom path was on, else why not (no check ran then). */
  off: string;
  maxBytes: number;
  failures: string[];
  /** Custom all-reduces per rank. */
  calls: number[];
  bench: PeerBench[];
  notes: string[];
}

interface RankResult {
  off: string;
  maxBytes: number;
  failures: string[];
  calls: number;
  /** sha1 of every custom all-reduce output, in order. */
  digest: string;
  bench: PeerBench[];
  notes: string[];
}

interface CheckData {
  peerCheck: { nccl: NcclInit; exchange: PeerExchange; opts: PeerCheckOptions };
}

/** A rank's input for a case: random signs, exponents 2^-7..2^1 and full mantissas (bits to upload, values to sum). */
function input(rank: number, caseId: number, count: number, dtype: DType): { bits: Uint16Array | Uint32Array; values: Float32Array } {
  let s = (Math.imul(rank + 1, 0x9e3779b1) ^ Math.imul(caseId + 1, 0x85ebca77)) >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let z = Math.imul(s ^ (s >>> 15), s | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (z ^ (z >>> 14)) >>> 0;
  };
  const values = new Float32Array(count);
  const u32 = new Uint32Array(values.buffer);
  for (let i = 0; i < count; i++) {
    const r = next();
    const exponent = 120 + (r % 9); // biased: 2^-7 .. 2^1
    u32[i] = ((r & 0x80000000) | (exponent << 23) | ((r >>> 4) & (dtype === "bf16" ? 0x7f0000 : 0x7fffff))) >>> 0;
  }
  if (dtype === "f32") return { bits: u32, values };
  const bits = new Uint16Array(count);
  for (let i = 0; i < count; i++) bits[i] = u32[i] >>> 16; // exact: the low mantissa bits are zero
  return { bits, values };
}

/** The fp32 sum over ranks in rank order (each add rounded to fp32, as the kernel's). */
function rankOrderSum(ranks: number, caseId: number, count: number, dtype: DType): Float32Array {
  const acc = input(0, caseId, count, dtype).values;
  for (let k = 1; k < ranks; k++) {
    const v = input(k, caseId, count, dtype).values;
    for (let i = 0; i < count; i++) acc[i] = acc[i] + v[i]; // a double sum of two floats rounds to the fp32 sum exactly
  }
  return acc;
}

/** Bump allocation inside one persistent device block. */
class Arena {
  private readonly base: DevicePtr;
  private off = 0;
  constructor(
    backend: CudaBackend,
    private readonly bytes: number,
  ) {
    this.base = backend.upload(new Float32Array(bytes / 4), [bytes / 4], "f32", { persistent: true }).ptr;
  }
  take(bytes: number): DevicePtr {
    const at = this.off;
    this.off += Math.ceil((bytes + 16) / 256) * 256; // room for an unaligned view
    if (this.off > this.bytes) throw new Error(`peer all-reduce check: arena of ${this.bytes} bytes is full`);
    return this.base + BigInt(at);
  }
  reset(): void {
    this.off = 0;
  }
  /** A copy of `bits` in the arena. */
  put(native: NativeCuda, bits: ArrayBufferView): DevicePtr {
    const p = this.take(bits.byteLength);
    native.htod(p, bits);
    return p;
  }
}

class RankCheck {
  readonly failures: string[] = [];
  readonly notes: string[] = [];
  private readonly hash = createHash("sha1");
  /** Custom all-reduces this harness expects to have launched (or captured). */
  expectedCalls = 0;
  private caseId = 0;

  constructor(
    readonly native: NativeCuda,
    readonly be: CudaBackend,
    readonly ar: PeerAllReduce,
    readonly rank: number,
    readonly ranks: number,
  ) {}

  get maxElems(): Record<DType, number> {
    return { bf16: this.ar.maxBytes / 2, f32: this.ar.maxBytes / 4 };
  }

  /** An id for inputs made outside a Case. */
  freshId(): number {
    return this.caseId++;
  }

  /** A case: a view at `ptr`, this rank's input, and what every rank must get. */
  newCase(ptr: DevicePtr, count: number, dtype: DType, label: string): Case {
    const id = this.caseId++;
    return new Case(this, id, ptr, count, dtype, label, this.ar.covers(count * BYTES[dtype]));
  }

  /** Compares a case's output (downloaded now); custom-path outputs go into the digest. */
  check(c: Case): void {
    const got = c.dtype === "bf16" ? new Uint16Array(c.count) : new Uint32Array(c.count);
    this.native.dtoh(got, c.ptr);
    const sum = rankOrderSum(this.ranks, c.id, c.count, c.dtype);
    if (c.custom) {
      this.hash.update(new Uint8Array(got.buffer));
      const want = c.dtype === "bf16" ? float32ToBf16(sum) : new Uint32Array(sum.buffer);
      for (let i = 0; i < c.count; i++) {
        if (got[i] !== want[i]) {
          const value = c.dtype === "bf16" ? new Float32Array(new Uint32Array([got[i] << 16]).buffer)[0] : new Float32Array(got.buffer)[i];
          const ulp = Math.abs(sum[i]) * (c.dtype === "bf16" ? 2 ** -8 : 2 ** -23);
          this.failures.push(
            `rank ${this.rank}: ${c.label}: element ${i} is ${value}, want ${sum[i]} (the fp32 rank-order sum${c.dtype === "bf16" ? " rounded once" : ""}); ${Math.abs(value - sum[i]) <= ulp / 2 ? "within" : "beyond"} one rounding`,
          );
          return;
        }
      }
      return;
    }
    // NCCL sums in its own order (bf16: rounding partial sums): |error| ≤ ranks roundings of |sum| ≤ 8·ranks.
    const tol = this.ranks * 8 * this.ranks * (c.dtype === "bf16" ? 2 ** -8 : 2 ** -23);
    const values = c.dtype === "bf16" ? new Float32Array(Uint32Array.from(got as Uint16Array, (b) => b << 16).buffer) : new Float32Array(got.buffer);
    for (let i = 0; i < c.count; i++) {
      if (!(Math.abs(values[i] - sum[i]) <= tol)) {
        this.failures.push(`rank ${this.rank}: ${c.label} (NCCL): element ${i} is ${values[i]}, want ${sum[i]} ± ${tol}`);
        return;
      }
    }
  }

  digest(): string {
    return this.hash.digest("hex");
  }
}

class Case {
  constructor(
    private readonly rc: RankCheck,
    readonly id: number,
    readonly ptr: DevicePtr,
    readonly count: number,
    readonly dtype: DType,
    readonly label: string,
    /** Takes the custom path (else NCCL). */
    readonly custom: boolean,
  ) {}

  /** Uploads this rank's input to the view. */
  upload(): this {
    this.rc.native.htod(this.ptr, input(this.rc.rank, this.id, this.count, this.dtype).bits);
    return this;
  }

  /** The backend's all-reduce of the view (custom or NCCL by size, as the model's). */
  allReduce(): void {
    this.rc.be.allReduce(new CudaTensor([this.count], this.ptr, this.dtype, PERSISTENT, 0));
    if (this.custom) this.rc.expectedCalls++;
  }
}

/** 1 element to the threshold (odd sizes, unaligned views), then past it (NCCL). */
function checkSizes(rc: RankCheck, arena: Arena): void {
  for (const dtype of ["f32", "bf16"] as const) {
    const max = rc.maxElems[dtype];
    const sizes = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 255, 257, 1000, 4097, 5120, 12345, 65537, max - 1, max].filter((n) => n >= 1 && n <= max);
    for (const n of [...new Set(sizes)]) {
      for (const shift of [0, BYTES[dtype]]) {
        arena.reset();
        const c = rc.newCase(arena.take(n * BYTES[dtype]) + BigInt(shift), n, dtype, `${dtype} ${n} elements${shift ? " (unaligned)" : ""}`).upload();
        c.allReduce();
        rc.check(c);
      }
    }
    for (const n of [max + 1, 2 * max + 3]) {
      arena.reset();
      const c = rc.newCase(arena.take(n * BYTES[dtype]), n, dtype, `${dtype} ${n} elements`).upload();
      if (c.custom) rc.failures.push(`rank ${rc.rank}: ${c.label} is past the threshold but took the custom path`);
      c.allReduce();
      rc.check(c);
    }
  }
}

/** Each case's normed bf16 output and fp32 residual (`counts` elements each), downloaded. */
function downloadAddNorm(rc: RankCheck, outs: { out: CudaTensor; rt: CudaTensor }[], counts: number[]): { o: Uint16Array; r: Uint32Array }[] {
  return outs.map(({ out, rt }, i) => {
    const o = new Uint16Array(counts[i]), r = new Uint32Array(counts[i]);
    rc.native.dtoh(o, out.ptr);
    rc.native.dtoh(r, rt.ptr);
    return { o, r };
  });
}

/** A failure for the first element where a's normed output or residual differs from b's. */
function compareAddNorm(rc: RankCheck, a: { o: Uint16Array; r: Uint32Array }, b: { o: Uint16Array; r: Uint32Array }, what: string, against: string): void {
  const diff = (u: Uint16Array | Uint32Array, v: Uint16Array | Uint32Array) => u.findIndex((e, i) => e !== v[i]);
  for (const [part, i] of [["normed output", diff(a.o, b.o)], ["residual", diff(a.r, b.r)]] as const) {
    if (i >= 0) rc.failures.push(`rank ${rc.rank}: ${what}: ${part} element ${i} differs from ${against}`);
  }
}

/**
 * The all-reduce fused with the residual add and RMSNorm (decode rows, allreduce_add_rms_norm)
 * against the two ops it replaces, on the same inputs: the same residual and normed output, bit
 * for bit, on every rank; plus shapes the fused kernel does not take (the two ops then run). The
 * fused calls of every round run back to back with no host sync (one-block and many-block calls
 * interleaved, more calls than the staging buffer has halves), then the two ops redo each.
 */
function checkAddNorm(rc: RankCheck, arena: Arena, rounds = 4): void {
  const eps = 1e-5;
  const shapes = [[1, 5120], [3, 5120], [32, 1280], [1, 5120], [2, 64], [40, 64], [6, 5120], [1, 64]] as const;
  for (let round = 0; round < rounds; round++) {
    arena.reset();
    const put = (bits: ArrayBufferView) => arena.put(rc.native, bits);
    const cases = shapes.map(([rows, d]) => {
      const n = rows * d;
      const id = rc.freshId();
      return {
        rows, d, n,
        x: input(rc.rank, id, n, "bf16").bits,
        res: input(0, id + 1e6, n, "f32").values, // the residual is the same on every rank
        wt: new CudaTensor([d], put(input(0, id + 2e6, d, "bf16").bits), "bf16", PERSISTENT, 0),
      };
    });
    const run = (fused: boolean) => {
      rc.be.beginStep();
      const outs = cases.map((c) => {
        const xt = new CudaTensor([c.rows, c.d], put(c.x), "bf16", PERSISTENT, 0);
        const rt = new CudaTensor([c.rows, c.d], put(c.res), "f32", PERSISTENT, 0);
        const out = fused ? rc.be.allReduceAddRmsNorm(rt, xt, c.wt, eps) : (rc.be.allReduce(xt), rc.be.addRmsNorm(rt, xt, c.wt, eps));
        return { out, rt };
      });
      return downloadAddNorm(rc, outs, cases.map((c) => c.n));
    };
    const a = run(true), b = run(false);
    cases.forEach((c, k) => {
      rc.expectedCalls += rc.ar.covers(c.n * 2) ? 2 : 0; // fused, or its fallback's all-reduce; then the two ops' one
      const path = rc.ar.coversRows(c.rows, c.d) ? "" : " (not fused)";
      compareAddNorm(rc, a[k], b[k], `fused all-reduce + add + RMSNorm, round ${round}, ${c.rows}×${c.d}${path}`, "the two ops");
    });
  }
}

/**
 * The pushed all-reduce of batch-1 decode (a row-parallel GEMV launched with allReduceNext pushes
 * its rows into every rank's inbox, then allreduce_pushed_add_rms_norm) against the pulled fused
 * kernel on the same inputs: the same residual and normed output, bit for bit. A round queues its
 * calls back to back with no host sync, a plain (pulled) all-reduce after every other one, so both
 * kinds share the epochs and each inbox half is reused; widths from 2560 to Scout's 5120.
 */
function checkPushed(rc: RankCheck, arena: Arena, rounds = 3): void {
  const eps = 1e-5;
  // [d, k]: y = x[1, k]·W[d, k]ᵀ. Widths where the plain GEMV has 8 rows a block as the pushing one
  // (≥ 2112 rows on 132 SMs), so the two paths' GEMVs sum in the same order.
  const shapes = [[5120, 1280], [2560, 32], [5120, 2048], [5120, 1280], [4096, 64], [2560, 512], [5120, 1280]] as const;
  for (let round = 0; round < rounds; round++) {
    arena.reset();
    const put = (bits: ArrayBufferView) => arena.put(rc.native, bits);
    const cases = shapes.map(([d, k]) => {
      const id = rc.freshId();
      return {
        d, k,
        x: new CudaTensor([1, k], put(input(rc.rank, id, k, "bf16").bits), "bf16", PERSISTENT, 0),
        // weights ~2^-7..2^1 over k ≤ 2048 terms: partial sums well inside bf16's range
        w: new CudaTensor([d, k], put(input(rc.rank, id + 3e6, d * k, "bf16").bits), "bf16", PERSISTENT, 0),
        res: input(0, id + 1e6, d, "f32").values,
        norm: new CudaTensor([d], put(input(0, id + 2e6, d, "bf16").bits), "bf16", PERSISTENT, 0),
        between: rc.newCase(arena.take(333 * 4), 333, "f32", "plain all-reduce between pushed ones"),
      };
    });
    const run = (pushed: boolean) => {
      rc.be.beginStep();
      const before = rc.ar.pushedCalls;
      const outs = cases.map((c, i) => {
        const rt = new CudaTensor([1, c.d], put(c.res), "f32", PERSISTENT, 0);
        const y = rc.be.linear(c.x, c.w, { allReduceNext: pushed });
        const out = rc.be.allReduceAddRmsNorm(rt, y, c.norm, eps);
        if (i % 2 === 1) c.between.upload().allReduce();
        return { out, rt };
      });
      const expected = pushed ? cases.length : 0;
      if (rc.ar.pushedCalls - before !== expected) rc.failures.push(`rank ${rc.rank}: pushed all-reduce, round ${round}: ${rc.ar.pushedCalls - before} pushed calls, ${expected} expected`);
      return downloadAddNorm(rc, outs, cases.map((c) => c.d));
    };
    const a = run(true), b = run(false);
    cases.forEach((c, k) => {
      rc.expectedCalls += 2; // the pushed call and the pulled one
      compareAddNorm(rc, a[k], b[k], `pushed all-reduce + add + RMSNorm, round ${round}, ${c.d} rows of ${c.k}`, "the pulled kernel");
      if (k % 2 === 1) rc.check(c.between);
    });
  }
}

/** ≥ `calls` custom all-reduces in rounds of back-to-back launches (no host sync), an NCCL one in each round. */
function checkConsecutive(rc: RankCheck, arena: Arena, calls: number): void {
  const mb = rc.maxElems.bf16, mf = rc.maxElems.f32;
  const pattern: [number, DType][] = [
    [1, "f32"], [5120, "bf16"], [7, "bf16"], [40000, "bf16"], [333, "f32"], [8191, "bf16"], [20000, "f32"], [20483, "bf16"], [64, "bf16"], [1, "bf16"], [12345, "f32"],
  ];
  const perRound = 31;
  let done = 0;
  for (let round = 0; done < calls; round++) {
    arena.reset();
    const cases: Case[] = [];
    for (let j = 0; j < perRound; j++) {
      const [n, dtype] = pattern[(round * perRound + j) % pattern.length];
      const count = Math.min(n, dtype === "bf16" ? mb : mf);
      cases.push(rc.newCase(arena.take(count * BYTES[dtype]), count, dtype, `consecutive call ${round * perRound + j} (${dtype} ${count})`));
    }
    cases.splice(round % perRound, 0, rc.newCase(arena.take((mf + 1) * 4), mf + 1, "f32", `consecutive round ${round}: NCCL f32 ${mf + 1}`));
    for (const c of cases) c.upload();
    for (const c of cases) c.allReduce();
    for (const c of cases) rc.check(c);
    done += perRound;
  }
}

/** A graph of all-reduces (inputs copied in first) replayed `replays` times, direct calls between replays. */
function checkGraph(rc: RankCheck, arena: Arena, replays: number): void {
  const n = rc.native;
  if (!n.graphBeginCapture || !n.graphEndCapture || !n.graphLaunch || !n.graphDestroy) {
    rc.notes.push("graph check skipped: the driver has no stream capture");
    return;
  }
  if (process.env.TSGLANG_CUDA_SYNC === "1") {
    rc.notes.push("graph check skipped: TSGLANG_CUDA_SYNC=1 synchronises inside the capture");
    return;
  }
  arena.reset();
  const mb = rc.maxElems.bf16;
  const specs: [number, DType, number][] = [[5120, "bf16", 0], [777, "f32", 4], [mb, "bf16", 0], [mb + 8, "bf16", 0], [1, "f32", 0], [40000, "bf16", 2]];
  const graphCases = specs.map(([count, dtype, shift]) => {
    const src = rc.newCase(arena.take(count * BYTES[dtype]) + BigInt(shift), count, dtype, `graph source ${dtype} ${count}`).upload();
    const work = arena.take(count * BYTES[dtype]) + BigInt(shift);
    return { src, work };
  });
  const direct = rc.newCase(arena.take(100 * 2), 100, "bf16", "direct bf16 100 between replays");
  let directCalls = 0;
  n.synchronize();
  n.graphBeginCapture();
  let exec: DevicePtr;
  try {
    for (const { src, work } of graphCases) {
      n.dtod(work, src.ptr, src.count * BYTES[src.dtype]);
      rc.be.allReduce(new CudaTensor([src.count], work, src.dtype, PERSISTENT, 0));
      if (src.custom) rc.expectedCalls++; // recorded once, however often replayed
    }
  } finally {
    exec = n.graphEndCapture();
  }
  try {
    for (let r = 1; r <= replays; r++) {
      n.graphLaunch(exec);
      if (r % 7 === 3) {
        direct.upload().allReduce();
        directCalls++;
      }
      if (r % 50 === 0 || r === replays) {
        for (const { src, work } of graphCases) rc.check(new Case(rc, src.id, work, src.count, src.dtype, `graph replay ${r}: ${src.dtype} ${src.count}`, src.custom));
        if (directCalls > 0) rc.check(direct);
      }
    }
  } finally {
    n.graphDestroy(exec);
  }
}

/** Median µs per bf16 all-reduce of each size, custom and NCCL, `reps` per CUDA graph (launch gaps excluded). */
function bench(rc: RankCheck, comm: NcclCommunicator, arena: Arena, sizes: number[]): PeerBench[] {
  const n = rc.native;
  const reps = 100;
  const batches = 9;
  const useGraphs = !!n.graphBeginCapture && process.env.TSGLANG_CUDA_SYNC !== "1";
  const events = Array.from({ length: batches + 1 }, () => n.eventCreate());
  const time = (one: () => void): number => {
    let exec: DevicePtr | null = null;
    if (useGraphs) {
      n.graphBeginCapture!();
      try {
        for (let i = 0; i < reps; i++) one();
      } finally {
        exec = n.graphEndCapture!();
      }
    }
    const batch = () => {
      if (exec !== null) n.graphLaunch!(exec);
      else for (let i = 0; i < reps; i++) one();
    };
    try {
      batch(); // warm-up
      n.synchronize();
      // Batches back to back, so the ranks run in step after the first; the median drops its skew.
      for (let b = 0; b < batches; b++) {
        n.eventRecord(events[b]);
        batch();
      }
      n.eventRecord(events[batches]);
      const us = Array.from({ length: batches }, (_, b) => (n.eventElapsed(events[b], events[b + 1]) * 1000) / reps).sort((x, y) => x - y);
      return us[batches >> 1];
    } finally {
      if (exec !== null) n.graphDestroy!(exec);
    }
  };
  const out: PeerBench[] = [];
  for (const bytes of sizes) {
    arena.reset();
    const count = Math.floor(bytes / 2);
    const ptr = arena.take(bytes);
    n.memset(ptr, 0, count, 2); // zeros stay zeros however often they are summed
    const customUs = rc.ar.covers(count * 2) ? time(() => rc.ar.run(ptr, count, "bf16")) : null;
    const ncclUs = time(() => comm.allReduce(ptr, count, "bf16"));
    // The decode shape: rows of 5120 (Scout's hidden size) through the fused kernel, zeros in and out.
    const d = 5120, rows = count / d;
    let fusedUs: number | null = null;
    if (Number.isInteger(rows) && rc.ar.coversRows(rows, d)) {
      const res = arena.take(rows * d * 4), w = arena.take(d * 2), normed = arena.take(rows * d * 2);
      for (const [p, c] of [[res, rows * d], [w, d / 2], [normed, rows * d / 2]] as const) n.memset(p, 0, c, 4);
      fusedUs = time(() => rc.ar.runAddRmsNorm(ptr, res, w, normed, rows, d, 1e-5));
    }
    // The o_proj of a tp-4 Scout rank then its all-reduce + add + RMSNorm, as the decode step runs them.
    let oProj: PeerBench["oProj"];
    if (bytes === d * 2 && rc.ar.coversRows(1, d)) {
      const k = 1280;
      const x = new CudaTensor([1, k], arena.take(k * 2), "bf16", PERSISTENT, 0);
      const wo = new CudaTensor([d, k], arena.take(d * k * 2), "bf16", PERSISTENT, 0);
      const res = new CudaTensor([1, d], arena.take(d * 4), "f32", PERSISTENT, 0);
      const norm = new CudaTensor([d], arena.take(d * 2), "bf16", PERSISTENT, 0);
      for (const [p, c] of [[x.ptr, k / 2], [wo.ptr, (d * k) / 2], [res.ptr, d], [norm.ptr, d / 2]] as const) n.memset(p, 0, c, 4);
      const pair = (pushed: boolean) => () => rc.be.allReduceAddRmsNorm(res, rc.be.linear(x, wo, { allReduceNext: pushed }), norm, 1e-5);
      rc.be.beginStep();
      const before = rc.ar.pushedCalls;
      const pushedUs = time(pair(true));
      rc.be.beginStep();
      oProj = { pulledUs: time(pair(false)), pushedUs: rc.ar.pushedCalls > before ? pushedUs : null };
    }
    out.push({ bytes, customUs, ncclUs, fusedUs, oProj });
  }
  if (!useGraphs) rc.notes.push("benchmark without CUDA graphs: launch overheads included");
  return out;
}

async function runRank(init: NcclInit, exchange: PeerExchange, opts: PeerCheckOptions): Promise<RankResult> {
  const comm = new NcclCommunicator(init, init.rank); // blocks until every rank has joined
  const be = new CudaBackend({ device: init.rank, nccl: comm, memoryBytes: 512 * MIB, stepBytes: 32 * MIB, graphSizes: [] });
  try {
    const ar = await be.connectPeers(exchange);
    if (ar.off) return { off: ar.off, maxBytes: 0, failures: [], calls: 0, digest: "", bench: [], notes: [] };
    const rc = new RankCheck(loadNative(), be, ar, init.rank, init.size);
    const arena = new Arena(be, 160 * MIB);
    if (!opts.benchOnly) {
      checkSizes(rc, arena);
      checkConsecutive(rc, arena, opts.calls);
      if (opts.replays > 0) checkGraph(rc, arena, opts.replays);
      checkAddNorm(rc, arena);
      checkPushed(rc, arena);
      // The backend routed exactly the calls that fit to the custom path.
      if (ar.calls !== rc.expectedCalls) rc.failures.push(`rank ${init.rank}: ${ar.calls} custom all-reduces launched, ${rc.expectedCalls} expected`);
    }
    const benchResults = opts.benchBytes.length > 0 ? bench(rc, comm, arena, opts.benchBytes) : [];
    return { off: "", maxBytes: ar.maxBytes, failures: rc.failures, calls: ar.calls, digest: rc.digest(), bench: benchResults, notes: rc.notes };
  } finally {
    be.destroy(); // every rank: its closing barrier waits for the others
    comm.destroy();
  }
}

/** "10 KiB: custom 4.1 µs, NCCL 17.3 µs (4.2× faster)". */
export function benchLine(b: PeerBench): string {
  const size = b.bytes >= 2 ** 20 ? `${b.bytes / 2 ** 20} MiB` : `${b.bytes / 1024} KiB`;
  const custom = b.customUs === null ? "custom – (past the threshold)" : `custom ${b.customUs.toFixed(1)} µs`;
  const ratio = b.customUs === null ? "" : ` (${(b.ncclUs / b.customUs).toFixed(1)}× faster)`;
  const fused = b.fusedUs == null ? "" : `; fused with add + RMSNorm (${b.bytes / 10240} × 5120) ${b.fusedUs.toFixed(1)} µs`;
  const oProj = !b.oProj ? "" : `; o_proj [5120 × 1280] + fused all-reduce: pulled ${b.oProj.pulledUs.toFixed(1)} µs, pushed ${b.oProj.pushedUs?.toFixed(1) ?? "–"} µs`;
  return `bf16 ${size}: ${custom}, NCCL ${b.ncclUs.toFixed(1)} µs${ratio}${fused}${oProj}`;
}

/** Runs the checks (and benchmark) on GPUs 0..ranks−1. */
export async function peerAllReduceCheck(ranks: number, opts: PeerCheckOptions): Promise<PeerCheckResult> {
  const id = ncclUniqueId();
  const exchange = createPeerExchange(ranks);
  const threads = spawnRanks<RankResult>(new URL(import.meta.url), ranks, (rank) => ({ peerCheck: { nccl: { id, rank, size: ranks }, exchange, opts } }) satisfies CheckData);
  try {
    await threads.joined;
    const [lead, others] = await Promise.all([runRank({ id, rank: 0, size: ranks }, exchange, opts), threads.results]);
    const all = [lead, ...others];
    const failures = all.flatMap((r) => r.failures);
    const offs = new Set(all.map((r) => r.off));
    if (offs.size > 1) failures.push(`the ranks disagree on the custom path: ${[...offs].map((o) => o || "on").join(" / ")}`);
    if (all[0].off === "" && !opts.benchOnly) {
      const digests = all.map((r) => r.digest);
      if (new Set(digests).size !== 1) failures.push(`custom all-reduce outputs differ between ranks (sha1 ${digests.join(", ")})`);
    }
    return { ranks, off: all[0].off, maxBytes: all[0].maxBytes, failures, calls: all.map((r) => r.calls), bench: all[0].bench, notes: all[0].notes };
  } finally {
    await threads.terminate();
  }
}

if (!isMainThread && (workerData as CheckData)?.peerCheck) {
  const { nccl, exchange, opts } = (workerData as CheckData).peerCheck;
  const reply = (m: RankThreadReply<RankResult>) => parentPort!.postMessage(m);
  try {
    bindCudaDevice(nccl.rank);
    reply({ joining: true });
    runRank(nccl, exchange, opts).then(
      (result) => reply({ result }),
      (e: Error) => reply({ error: e.message }),
    );
  } catch (e) {
    reply({ error: (e as Error).message });
  }
}
