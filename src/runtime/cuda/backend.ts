// The CUDA backend: the Backend ops on one GPU, one kernel (or cuBLASLt call) per op.
//
// Storage: weights, KV pools and GEMM inputs/outputs in bf16 (or fp32 in the reference-precision
// mode, precision: "f32", which reproduces the CPU backend to ~1e-5 and so checks the kernels'
// logic apart from bf16 rounding). The residual stream (embedding output, the running `x`) is
// fp32 in both modes: its adds happen twice per layer and bf16 would round each one. All
// arithmetic accumulates in fp32.
//
// Memory: one allocation of the whole budget (memory.ts). Weights and KV pools live in its
// persistent part; activations come from the step arena: the residual stream and batch metadata
// from its step-long base region, everything else from two alternating per-layer regions (each
// attention() call starts a layer and recycles the region of the layer before last). A step
// starts with embedding() (or beginStep()). A step tensor used after its memory was recycled is
// an error, not silent garbage.
//
// Known gaps (next steps): MoE routing reads the expert ids back to the host (one sync per MoE
// layer; a device-side permutation + grouped GEMM removes it and allows CUDA graphs); attention
// is the simple reference kernel; the per-step slot tables are uploaded whole.

import type {
  AttentionParams,
  AttentionSpec,
  Backend,
  HostTensor,
  KvPoolSizes,
  MoeWeights,
  StepBatch,
  Tensor,
} from "../backend.js";
import { bf16ToFloat32, float32ToBf16, toFloat32 } from "../dtype.js";
import type { AttentionBackend, BackendChoice } from "../select.js";
import { Kernels } from "./kernels.js";
import { DeviceMemory } from "./memory.js";
import {
  CUDA_R_16BF,
  CUDA_R_32F,
  type DeviceInfo,
  type DevicePtr,
  type NativeCuda,
  blasLtCandidates,
  driverCandidates,
  loadNative,
} from "./native.js";

export type Precision = "bf16" | "f32";
type DType = "bf16" | "f32";

const BYTES: Record<DType, number> = { bf16: 2, f32: 4 };
const PERSISTENT = -1;
const MIB = 2 ** 20;

export class CudaTensor implements Tensor {
  released = false;
  constructor(
    readonly shape: readonly number[],
    readonly ptr: DevicePtr,
    readonly dtype: DType,
    /** The step region holding it (memory.ts), or PERSISTENT. */
    readonly region: number,
    /** The region's epoch at allocation: the tensor is valid while the region keeps it. */
    readonly epoch: number,
    /** Loaded with `transpose`: stored in the checkpoint's [.., in, out] order, shape says [.., out, in]. */
    readonly transposed = false,
  ) {}

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
}

export interface CudaBackendOptions {
  /** CUDA device ordinal (default 0). */
  device?: number;
  /** "bf16" (default, serving) or "f32" (reference precision, for checks). */
  precision?: Precision;
  /** The whole device budget, taken at construction (default: 90% of free memory). */
  memoryBytes?: number;
  /**
   * The part of the budget for one step's activations (default: 1/4 of the budget, at most
   * 16 GiB). A layer region (7/16 of it) must hold one layer's activations for the step's
   * tokens: about 200 KB per token for Scout's shapes.
   */
  stepBytes?: number;
  /** Fill every step arena and KV pool with NaN first, so unwritten outputs show (tests). */
  poison?: boolean;
  /** Always use the fallback GEMM kernel instead of cuBLASLt (cross-checks). */
  fallbackGemm?: boolean;
}

interface LayerKv {
  k: DevicePtr;
  v: DevicePtr;
  slots: number;
}

/** One step's attention metadata on the device, for one KV pool. */
interface StepMeta {
  positions: DevicePtr;
  rowPos: DevicePtr;
  rowSlotBase: DevicePtr;
  rowSlot: DevicePtr;
  slotTable: DevicePtr;
  /** Chunk sizes whose key ranges were already checked against the slots this step. */
  checked: Set<number>;
}

const PREP_ROPE = 1;
const PREP_QK_NORM = 2;
const PREP_TEMPERATURE = 4;
const WORKSPACE_BYTES = 32 * MIB;

export class CudaBackend implements Backend {
  readonly name = "cuda";
  readonly elementBytes: number;
  readonly info: DeviceInfo;
  readonly precision: Precision;
  readonly blasLt: { path: string; version: number };
  private readonly native: NativeCuda;
  private readonly mem: DeviceMemory;
  private readonly k: Kernels;
  private readonly t: DType; // storage type of weights and activations
  private readonly poison: boolean;
  private readonly fallbackGemm: boolean;
  private readonly workspace: DevicePtr;
  private params: AttentionParams | null = null;
  private invFreq: DevicePtr | null = null;
  private kv: LayerKv[] = [];
  private metaBatch: StepBatch | null = null;
  private metaStep = -1;
  private step = 0;
  private meta = new Map<string, StepMeta>();
  private events: [DevicePtr, DevicePtr] | null = null;
  /** GEMMs that fell back to the simple kernel (cuBLASLt had no algorithm). */
  fallbackGemms = 0;

  constructor(opts: CudaBackendOptions = {}) {
    this.native = loadNative();
    this.native.openDriver(driverCandidates());
    this.info = this.native.init(opts.device ?? 0);
    this.blasLt = this.native.openBlasLt(blasLtCandidates());
    this.precision = opts.precision ?? "bf16";
    this.t = this.precision;
    this.elementBytes = BYTES[this.t];
    this.poison = opts.poison ?? false;
    this.fallbackGemm = opts.fallbackGemm ?? false;
    const free = this.native.memGetInfo().free;
    const budget = opts.memoryBytes ?? Math.floor(free * 0.9);
    const step = opts.stepBytes ?? Math.min(Math.floor(budget / 4), 16384 * MIB);
    this.mem = new DeviceMemory(this.native, budget, step);
    this.k = new Kernels(this.native);
    this.workspace = this.mem.alloc(WORKSPACE_BYTES, "the cuBLASLt workspace");
    this.beginStep();
  }

  // ---- memory and tensors ----

  /** Device bytes still free for KV pools (after weights), leaving the step arena alone. */
  kvMemoryBytes(): number {
    return this.mem.largestFree();
  }

  /** Starts a new step: every step tensor of the previous one becomes invalid. */
  beginStep(): void {
    this.mem.resetStep();
    this.step++;
    this.meta.clear();
    this.metaBatch = null;
    if (this.poison) this.mem.poisonStep();
  }

  private tensor(x: Tensor): CudaTensor {
    if (!(x instanceof CudaTensor)) throw new Error("cuda backend got a tensor from another backend");
    if (x.released) throw new Error("cuda backend: tensor used after free()");
    if (x.region !== PERSISTENT && !this.mem.live(x.region, x.epoch)) {
      throw new Error(`cuda backend: a step tensor [${x.shape}] was used after its memory was recycled (it belongs to an earlier step, or to the layer before last)`);
    }
    return x;
  }

  /** An activation of this layer, or of the whole step with `base`. */
  private stepTensor(shape: number[], dtype: DType, base = false): CudaTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = this.mem.stepAlloc(n * BYTES[dtype], base);
    return new CudaTensor(shape, a.ptr, dtype, a.region, a.epoch);
  }

  private uploadInts(values: Int32Array, base = false): DevicePtr {
    const p = this.mem.stepAlloc(values.byteLength, base).ptr;
    this.native.htod(p, values);
    return p;
  }

  /**
   * An activation from host values (fp32 by default: the residual type), valid for this step,
   * or until free() with `persistent` (inputs that outlive steps: benchmarks, cached features).
   */
  upload(data: Float32Array, shape: number[], dtype: DType = "f32", opts: { persistent?: boolean } = {}): CudaTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) throw new Error(`upload: ${data.length} values for shape [${shape}]`);
    const out = opts.persistent
      ? new CudaTensor(shape, this.mem.alloc(n * BYTES[dtype], `an upload of shape [${shape}]`), dtype, PERSISTENT, 0)
      : this.stepTensor(shape, dtype);
    this.native.htod(out.ptr, dtype === "bf16" ? float32ToBf16(data) : data);
    return out;
  }

  /** The same values in `dtype` (a cast kernel into this layer's region when it differs). */
  private as(x: CudaTensor, dtype: DType): CudaTensor {
    if (x.dtype === dtype) return x;
    const out = this.stepTensor([...x.shape], dtype);
    const n = x.numel;
    this.k.launch(`cast_${x.dtype}_${dtype}`, [gridFor(n)], [256], (a) => a.ptr(x.ptr).ptr(out.ptr).u64(n));
    return out;
  }

  weight(h: HostTensor, opts: { transpose?: boolean } = {}): CudaTensor {
    const bytes: ArrayBufferView =
      this.t === "bf16"
        ? h.dtype === "BF16"
          ? h.data
          : float32ToBf16(toFloat32(h.data, h.dtype))
        : toFloat32(h.data, h.dtype);
    const n = h.shape.reduce((a, b) => a * b, 1);
    if (bytes.byteLength !== n * BYTES[this.t]) throw new Error(`weight: ${bytes.byteLength} bytes for shape [${h.shape}]`);
    const ptr = this.mem.alloc(bytes.byteLength, `a weight of shape [${h.shape}]`);
    this.native.htod(ptr, bytes);
    if (!opts.transpose) return new CudaTensor([...h.shape], ptr, this.t, PERSISTENT, 0);
    if (h.shape.length < 2) throw new Error("transpose needs at least 2 dims");
    // No data movement: the GEMMs read the [in, out] order directly (cuBLASLt op N instead of T).
    const s = [...h.shape];
    [s[s.length - 2], s[s.length - 1]] = [s[s.length - 1], s[s.length - 2]];
    return new CudaTensor(s, ptr, this.t, PERSISTENT, 0, true);
  }

  free(x: Tensor): void {
    if (!(x instanceof CudaTensor) || x.released || x.region !== PERSISTENT) return;
    x.released = true;
    this.mem.release(x.ptr);
  }

  /** normal(0, std) from `seed` (or the constant `fill` when std is 0), generated on the device. */
  randomWeight(shape: number[], std: number, seed: number, fill = 0): CudaTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const out = new CudaTensor([...shape], this.mem.alloc(n * BYTES[this.t], `a random weight of shape [${shape}]`), this.t, PERSISTENT, 0);
    this.k.launch(`random_normal_${this.t}`, [gridFor(Math.ceil(n / 2))], [256], (a) => a.ptr(out.ptr).u64(n).u32(seed >>> 0).f32(std).f32(fill));
    return out;
  }

  /**
   * Device-to-device copy bandwidth in bytes/s (read + write counted), over two buffers of
   * bytes/2 each (smaller when the free budget is; 2 × 256 MiB already saturates HBM).
   */
  copyBandwidth(bytes: number): number {
    const half = Math.floor(Math.min(bytes / 2, this.mem.largestFree() / 2 - 256) / 256) * 256;
    if (half < MIB) throw new Error("copyBandwidth: less than 2 MiB of device memory is free");
    const src = this.mem.alloc(half, "the copy-bandwidth source");
    const dst = this.mem.alloc(half, "the copy-bandwidth destination");
    try {
      this.native.memset(src, 0x3f80, half / 2, 2); // bf16 1.0: not zeros
      const ms = this.time(() => this.native.dtod(dst, src, half), 10, 2);
      return (2 * half) / (ms / 1000);
    } finally {
      this.mem.release(src);
      this.mem.release(dst);
    }
  }

  toHost(x: Tensor): Float32Array {
    const xt = this.tensor(x);
    if (xt.dtype === "f32") {
      const out = new Float32Array(xt.numel);
      this.native.dtoh(out, xt.ptr);
      return out;
    }
    const raw = new Uint16Array(xt.numel);
    this.native.dtoh(raw, xt.ptr);
    return bf16ToFloat32(raw);
  }

  synchronize(): void {
    this.native.synchronize();
  }

  stats() {
    return { ...this.mem.stats(), fallbackGemms: this.fallbackGemms };
  }

  /** Device-side timing of `fn` (milliseconds per call, median of `reps` after `warmup`). */
  time(fn: () => void, reps = 20, warmup = 3): number {
    for (let i = 0; i < warmup; i++) fn();
    this.events ??= [this.native.eventCreate(), this.native.eventCreate()];
    const [a, b] = this.events;
    const times: number[] = [];
    for (let i = 0; i < reps; i++) {
      this.native.eventRecord(a);
      fn();
      this.native.eventRecord(b);
      times.push(this.native.eventElapsed(a, b));
    }
    times.sort((x, y) => x - y);
    return times[times.length >> 1];
  }

  destroy(): void {
    this.native.synchronize();
    this.mem.destroy();
  }

  // ---- ops ----

  /**
   * Rows of the table for `ids`; the table holds vocabulary rows [vocabStart, vocabStart + rows).
   * There are no collectives yet, so an id outside them is an error (as on a lone CPU rank).
   */
  embedding(table: Tensor, ids: Int32Array, vocabStart = 0): CudaTensor {
    const tb = this.tensor(table);
    if (tb.transposed || tb.shape.length !== 2) throw new Error("embedding: the table must be [vocab, d]");
    const [vocab, d] = tb.shape;
    const local = new Int32Array(ids.length);
    ids.forEach((id, i) => {
      local[i] = id - vocabStart;
      if (local[i] < 0 || local[i] >= vocab) throw new Error(`token id ${id} is outside the vocabulary [${vocabStart}, ${vocabStart + vocab})`);
    });
    this.beginStep(); // a forward step starts with its embedding
    const idsDev = this.uploadInts(local, true);
    const out = this.stepTensor([ids.length, d], "f32", true); // the residual stream: step-long
    this.k.launch(`embedding_${tb.dtype}`, [ids.length], [blockFor(d)], (a) => a.ptr(tb.ptr).ptr(idsDev).ptr(out.ptr).i32(d));
    return out;
  }

  rmsNorm(x: Tensor, w: Tensor, eps: number): CudaTensor {
    let xt = this.tensor(x);
    const wt = this.tensor(w);
    const [n, d] = rows(xt, "rmsNorm");
    if (wt.numel !== d) throw new Error(`rmsNorm: weight has ${wt.numel} elements, rows have ${d}`);
    if (!(xt.dtype === "f32" || this.t === "bf16")) xt = this.as(xt, "f32");
    const out = this.stepTensor([n, d], this.t);
    this.k.launch(`rms_norm_${xt.dtype}_${this.t}`, [n], [blockFor(d)], (a) => a.ptr(xt.ptr).ptr(wt.ptr).ptr(out.ptr).i32(d).f32(eps));
    return out;
  }

  addRmsNorm(residual: Tensor, x: Tensor, w: Tensor, eps: number): CudaTensor {
    const rt = this.residual(residual, "addRmsNorm");
    let xt = this.tensor(x);
    const wt = this.tensor(w);
    const [n, d] = rows(rt, "addRmsNorm");
    if (xt.numel !== n * d) throw new Error(`addRmsNorm: x [${xt.shape}] does not match the residual [${rt.shape}]`);
    if (wt.numel !== d) throw new Error(`addRmsNorm: weight has ${wt.numel} elements, rows have ${d}`);
    if (!(xt.dtype === "f32" || this.t === "bf16")) xt = this.as(xt, "f32");
    const out = this.stepTensor([n, d], this.t);
    this.k.launch(`add_rms_norm_${xt.dtype}_${this.t}`, [n], [blockFor(d)], (a) => a.ptr(rt.ptr).ptr(xt.ptr).ptr(wt.ptr).ptr(out.ptr).i32(d).f32(eps));
    return out;
  }

  add(residual: Tensor, x: Tensor): void {
    const rt = this.residual(residual, "add");
    const xt = this.tensor(x);
    if (xt.numel !== rt.numel) throw new Error(`add: x [${xt.shape}] does not match the residual [${rt.shape}]`);
    const n = rt.numel;
    this.k.launch(`add_${xt.dtype}`, [gridFor(n)], [256], (a) => a.ptr(rt.ptr).ptr(xt.ptr).u64(n));
  }

  private residual(r: Tensor, op: string): CudaTensor {
    const rt = this.tensor(r);
    if (rt.dtype !== "f32") throw new Error(`${op}: the residual must be fp32 (an embedding output or upload(..., "f32"))`);
    return rt;
  }

  /** y = x · wᵀ; `outF32` gives fp32 output (logits) in bf16 mode. */
  linear(x: Tensor, w: Tensor, opts: { outF32?: boolean } = {}): CudaTensor {
    const xt = this.as(this.tensor(x), this.t);
    const wt = this.tensor(w);
    const [n, inDim] = rows(xt, "linear");
    if (wt.shape.length !== 2) throw new Error(`linear: weight must be [out, in], got [${wt.shape}]`);
    const [out, wIn] = wt.shape;
    if (wIn !== inDim) throw new Error(`linear: x has ${inDim} columns, weight expects ${wIn}`);
    const y = this.stepTensor([n, out], opts.outF32 ? "f32" : this.t);
    this.gemm(y.ptr, y.dtype, xt.ptr, n, inDim, wt, 0, out);
    return y;
  }

  /**
   * y[n, out] = x[n, inDim] · W[out, inDim]ᵀ where W starts `wOffset` elements into `w`.
   * Row-major y, x and W are column-major yᵀ, xᵀ and Wᵀ, so this is the column-major
   * D[out, n] = op(W)·X with op = T for [out, in] weights and N for transposed-stored ones.
   */
  private gemm(y: DevicePtr, yType: DType, x: DevicePtr, n: number, inDim: number, w: CudaTensor, wOffset: number, out: number): void {
    if (n === 0) return;
    const wPtr = w.ptr + BigInt(wOffset * BYTES[w.dtype]);
    const ab = this.t === "bf16" ? CUDA_R_16BF : CUDA_R_32F;
    const d = yType === "bf16" ? CUDA_R_16BF : CUDA_R_32F;
    const ok =
      !this.fallbackGemm &&
      this.native.matmul(w.transposed ? 0 : 1, 0, out, n, inDim, wPtr, w.transposed ? out : inDim, x, inDim, y, out, ab, d, 1, 0, this.workspace, WORKSPACE_BYTES);
    if (ok) return;
    this.fallbackGemms++;
    this.k.launch(`gemm_fallback_${this.t}_${yType}`, [Math.ceil(out / 16), Math.ceil(n / 16)], [16, 16], (a) =>
      a.ptr(x).ptr(wPtr).ptr(y).i32(n).i32(out).i32(inDim).i32(w.transposed ? 1 : 0),
    );
  }

  siluMul(gateUp: Tensor): CudaTensor {
    const g = this.as(this.tensor(gateUp), this.t);
    const [n, twoF] = rows(g, "siluMul");
    const f = twoF / 2;
    const out = this.stepTensor([n, f], this.t);
    this.k.launch(`silu_mul_${this.t}`, [gridFor(n * f)], [256], (a) => a.ptr(g.ptr).ptr(out.ptr).u64(n).i32(f));
    return out;
  }

  gatherRows(x: Tensor, rowIds: Int32Array): CudaTensor {
    const xt = this.tensor(x);
    const [n, d] = rows(xt, "gatherRows");
    for (const r of rowIds) if (r < 0 || r >= n) throw new Error(`gatherRows: row ${r} outside [0, ${n})`);
    const idx = this.uploadInts(rowIds);
    const out = this.stepTensor([rowIds.length, d], xt.dtype);
    this.k.launch(`gather_rows_${xt.dtype === "bf16" ? "u16" : "u32"}`, [rowIds.length], [blockFor(d)], (a) => a.ptr(xt.ptr).ptr(idx).ptr(out.ptr).i32(d));
    return out;
  }

  // ---- attention ----

  allocKv(params: AttentionParams, layers: AttentionSpec[], sizes: KvPoolSizes): void {
    const { numHeads: hq, numKvHeads: hkv, headDim: dim } = params;
    if (dim % 2 !== 0 || dim > 128) throw new Error(`cuda attention supports even head_dim ≤ 128, got ${dim}`);
    if (hq % hkv !== 0) throw new Error(`cuda attention: ${hq} query heads do not split into ${hkv} KV groups`);
    if (params.invFreq.length < dim / 2) throw new Error(`cuda attention: invFreq has ${params.invFreq.length} entries, head_dim ${dim} needs ${dim / 2}`);
    for (const l of this.kv) {
      this.mem.release(l.k);
      this.mem.release(l.v);
    }
    this.kv = [];
    if (this.invFreq !== null) this.mem.release(this.invFreq);
    this.params = params;
    this.invFreq = this.mem.alloc(params.invFreq.byteLength, "RoPE frequencies");
    this.native.htod(this.invFreq, Float32Array.from(params.invFreq));
    const width = hkv * dim * BYTES[this.t];
    for (const [i, l] of layers.entries()) {
      const slots = l.pool === "full" ? sizes.full : sizes.swa;
      const k = this.mem.alloc(slots * width, `layer ${i}'s K pool (${slots} slots)`);
      const v = this.mem.alloc(slots * width, `layer ${i}'s V pool (${slots} slots)`);
      // NaN in test mode (a read of a slot nobody wrote shows), zeros otherwise.
      this.native.memset(k, this.poison ? 0xff : 0, slots * width, 1);
      this.native.memset(v, this.poison ? 0xff : 0, slots * width, 1);
      this.kv.push({ k, v, slots });
    }
  }

  attention(layer: number, spec: AttentionSpec, q: Tensor, k: Tensor, v: Tensor, batch: StepBatch): CudaTensor {
    const p = this.params;
    if (!p || !this.invFreq) throw new Error("attention before allocKv");
    const cache = this.kv[layer];
    if (!cache) throw new Error(`attention: no KV pool for layer ${layer}`);
    const { numHeads: hq, numKvHeads: hkv, headDim: dim } = p;
    // A new layer: recycle the region of the layer before last. Checked after the switch, so
    // inputs that lived there are an error rather than overwritten memory.
    this.mem.nextLayer(this.poison);
    const qt = this.as(this.tensor(q), this.t);
    const kt = this.as(this.tensor(k), this.t);
    const vt = this.as(this.tensor(v), this.t);
    const n = batch.ids.length;
    if (qt.numel !== n * hq * dim || kt.numel !== n * hkv * dim || vt.numel !== n * hkv * dim) {
      throw new Error(`attention: q [${qt.shape}], k [${kt.shape}], v [${vt.shape}] do not fit ${n} rows of ${hq}/${hkv} heads × ${dim}`);
    }
    const meta = this.stepMeta(batch, spec, cache.slots);
    const flags = (spec.rope ? PREP_ROPE : 0) | (spec.qkNorm ? PREP_QK_NORM : 0) | (spec.temperatureTuning ? PREP_TEMPERATURE : 0);
    const qRot = this.stepTensor([n, hq * dim], this.t);
    const invFreq = this.invFreq;
    this.k.launch(`attn_prep_${this.t}`, [n], [128], (a) =>
      a.ptr(qt.ptr).ptr(kt.ptr).ptr(vt.ptr).ptr(qRot.ptr).ptr(cache.k).ptr(cache.v).ptr(meta.positions).ptr(meta.rowSlot).ptr(invFreq)
        .i32(hq).i32(hkv).i32(dim).i32(flags).f32(p.eps).f32(p.floorScale).f32(p.attnScale),
    );
    const out = this.stepTensor([n, hq * dim], this.t);
    this.k.launch(`attention_${this.t}`, [n, hq], [128], (a) =>
      a.ptr(qRot.ptr).ptr(cache.k).ptr(cache.v).ptr(meta.slotTable).ptr(meta.rowSlotBase).ptr(meta.rowPos).ptr(out.ptr)
        .i32(hq).i32(hkv).i32(dim).i32(spec.chunkSize).f32(1 / Math.sqrt(dim)),
    );
    return out;
  }

  /**
   * The step's attention metadata for one pool, built and uploaded once per (step, pool):
   * per row its RoPE position, mask position, new-token slot and where its sequence's slot list
   * starts in one concatenated table. Every slot a kernel will touch is checked here, on the
   * host, so a bad slot is an error message and never an out-of-bounds device access.
   */
  private stepMeta(batch: StepBatch, spec: AttentionSpec, poolSlots: number): StepMeta {
    if (this.metaBatch !== batch || this.metaStep !== this.step) {
      this.meta.clear();
      this.metaBatch = batch;
      this.metaStep = this.step;
    }
    let m = this.meta.get(spec.pool);
    const n = batch.ids.length;
    const slotsOf = (s: StepBatch["seqs"][number]) => (spec.pool === "full" ? s.fullSlots : s.swaSlots);
    if (!m) {
      if (batch.positions.length !== n) throw new Error(`attention: ${batch.positions.length} positions for ${n} tokens`);
      const total = batch.seqs.reduce((acc, s) => acc + s.kvLen, 0);
      const host = new Int32Array(4 * n + total);
      host.set(batch.positions, 0);
      const rowPos = host.subarray(n, 2 * n).fill(-1);
      const rowSlotBase = host.subarray(2 * n, 3 * n);
      const rowSlot = host.subarray(3 * n, 4 * n);
      let base = 4 * n;
      for (const s of batch.seqs) {
        const slots = slotsOf(s);
        if (slots.length < s.kvLen) throw new Error(`attention: a sequence of ${s.kvLen} tokens has only ${slots.length} ${spec.pool} slots`);
        if (s.qLen > s.kvLen || s.qStart + s.qLen > n) throw new Error(`attention: sequence rows [${s.qStart}, ${s.qStart + s.qLen}) do not fit the step`);
        host.set(slots.subarray(0, s.kvLen), base);
        const first = s.kvLen - s.qLen;
        for (let i = 0; i < s.qLen; i++) {
          const row = s.qStart + i;
          if (rowPos[row] !== -1) throw new Error(`attention: row ${row} belongs to two sequences`);
          const slot = slots[first + i];
          if (slot < 0 || slot >= poolSlots) throw new Error(`attention: no valid ${spec.pool} KV slot for position ${first + i} (slot ${slot}, pool of ${poolSlots})`);
          rowPos[row] = first + i;
          rowSlotBase[row] = base - 4 * n;
          rowSlot[row] = slot;
        }
        base += s.kvLen;
      }
      const missing = rowPos.indexOf(-1);
      if (missing >= 0) throw new Error(`attention: row ${missing} belongs to no sequence`);
      const dev = this.uploadInts(host, true); // every layer of the step reads it
      const at = (i: number) => dev + BigInt(i * 4);
      m = { positions: at(0), rowPos: at(n), rowSlotBase: at(2 * n), rowSlot: at(3 * n), slotTable: at(4 * n), checked: new Set() };
      this.meta.set(spec.pool, m);
    }
    if (!m.checked.has(spec.chunkSize)) {
      // The keys read are [lo(p), p] for every query p; their union is [lo(first), kvLen).
      for (const s of batch.seqs) {
        if (s.qLen === 0) continue;
        const slots = slotsOf(s);
        const first = s.kvLen - s.qLen;
        const lo = spec.chunkSize > 0 ? first - (first % spec.chunkSize) : 0;
        for (let u = lo; u < s.kvLen; u++) {
          if (slots[u] < 0 || slots[u] >= poolSlots) throw new Error(`attention: KV for position ${u} is gone (${spec.pool} slot ${slots[u]})`);
        }
      }
      m.checked.add(spec.chunkSize);
    }
    return m;
  }

  // ---- MoE ----

  /**
   * Top-1 sigmoid routing on the expert input plus the shared expert (spec §1.6):
   * router GEMM → route kernel → (host) counting sort by expert → gather + scale → per-expert
   * gate_up GEMMs over contiguous rows → SiLU-mul → per-expert down GEMMs → shared + routed.
   */
  moe(x: Tensor, w: MoeWeights): CudaTensor {
    const xt = this.as(this.tensor(x), this.t);
    const [n, d] = rows(xt, "moe");
    const e = w.numExperts;
    const gu = this.tensor(w.gateUp);
    const dn = this.tensor(w.down);
    // Under expert parallelism this rank holds experts [first, first + local) of the router's e.
    const first = w.expertStart ?? 0;
    const local = gu.shape[0];
    const twoF = gu.shape[1];
    const f = twoF / 2;
    if (gu.shape.length !== 3 || gu.shape[2] !== d || first < 0 || first + local > e) throw new Error(`moe: gateUp is [${gu.shape}], expected [≤${e - first}, 2F, ${d}] from expert ${first}`);
    if (dn.shape.length !== 3 || dn.shape[0] !== local || dn.shape[1] !== d || dn.shape[2] !== f) throw new Error(`moe: down is [${dn.shape}], expected [${local}, ${d}, ${f}]`);
    if (this.tensor(w.router).shape[0] !== e) throw new Error(`moe: the router has ${this.tensor(w.router).shape[0]} rows for ${e} experts`);

    const logits = this.linear(xt, w.router);
    const expertDev = this.mem.stepAlloc(n * 4).ptr;
    const scoreDev = this.mem.stepAlloc(n * 4).ptr;
    this.k.launch(`moe_route_${this.t}`, [Math.ceil(n / 128)], [128], (a) => a.ptr(logits.ptr).ptr(expertDev).ptr(scoreDev).i32(n).i32(e));
    const expert = new Int32Array(n);
    this.native.dtoh(expert, expertDev); // the one host sync of the layer

    // Counting sort: rows of expert j occupy [offset[j], offset[j] + count[j]) in ascending row order.
    const count = new Int32Array(e);
    for (const j of expert) count[j]++;
    const offset = new Int32Array(e + 1);
    for (let j = 0; j < e; j++) offset[j + 1] = offset[j] + count[j];
    const perm = new Int32Array(2 * n); // [perm | inverse]
    const fill = offset.slice(0, e);
    for (let r = 0; r < n; r++) {
      const i = fill[expert[r]]++;
      perm[i] = r;
      perm[n + r] = i;
    }
    const permDev = this.uploadInts(perm);
    const invDev = permDev + BigInt(n * 4);

    const xin = this.stepTensor([n, d], this.t);
    this.k.launch(`moe_gather_${this.t}`, [n], [blockFor(d)], (a) => a.ptr(xt.ptr).ptr(permDev).ptr(scoreDev).ptr(xin.ptr).i32(d));
    const shared = this.linear(this.siluMul(this.linear(xt, w.sharedGateUp)), w.sharedDown);

    // This rank's experts own the sorted rows [lo, hi); the other rows get no routed part here.
    const es = BYTES[this.t];
    const lo = offset[first];
    const hi = offset[first + local];
    const h = this.stepTensor([n, twoF], this.t);
    for (let j = first; j < first + local; j++) {
      if (count[j] === 0) continue;
      const at = BigInt(offset[j]);
      this.gemm(h.ptr + at * BigInt(twoF * es), this.t, xin.ptr + at * BigInt(d * es), count[j], d, gu, (j - first) * twoF * d, twoF);
    }
    const act = this.stepTensor([n, f], this.t);
    const mine = hi - lo;
    this.k.launch(`silu_mul_${this.t}`, [gridFor(mine * f)], [256], (a) =>
      a.ptr(h.ptr + BigInt(lo * twoF * es)).ptr(act.ptr + BigInt(lo * f * es)).u64(mine).i32(f),
    );
    const y = this.stepTensor([n, d], this.t);
    this.native.memset(y.ptr, 0, lo * d * es, 1);
    this.native.memset(y.ptr + BigInt(hi * d * es), 0, (n - hi) * d * es, 1);
    for (let j = first; j < first + local; j++) {
      if (count[j] === 0) continue;
      const at = BigInt(offset[j]);
      this.gemm(y.ptr + at * BigInt(d * es), this.t, act.ptr + at * BigInt(f * es), count[j], f, dn, (j - first) * d * f, d);
    }
    const out = this.stepTensor([n, d], this.t);
    this.k.launch(`moe_combine_${this.t}`, [n], [blockFor(d)], (a) => a.ptr(shared.ptr).ptr(y.ptr).ptr(invDev).ptr(out.ptr).i32(d));
    return out;
  }
}

function rows(x: CudaTensor, op: string): [number, number] {
  if (x.shape.length !== 2) throw new Error(`${op}: expected a [rows, cols] tensor, got [${x.shape}]`);
  return [x.shape[0], x.shape[1]];
}

/** Threads for a one-block-per-row kernel: a multiple of 32, at most 256. */
function blockFor(width: number): number {
  return Math.min(256, Math.max(32, Math.ceil(width / 32) * 32));
}

/** Blocks of 256 for a grid-stride loop over n elements, enough to fill the GPU. */
function gridFor(n: number): number {
  return Math.max(1, Math.min(Math.ceil(n / 256), 8192));
}

// ---- what src/runtime/select.ts loads lazily ----

/** CUDA devices visible through the driver (0 when there are none); throws if the addon or driver is missing. */
export function cudaDeviceCount(): number {
  const n = loadNative();
  n.openDriver(driverCandidates());
  return n.deviceCount();
}

/** Name, compute capability and memory of a device, without taking its memory (for planning). */
export function cudaDeviceInfo(device = 0): DeviceInfo {
  const n = loadNative();
  n.openDriver(driverCandidates());
  return n.init(device);
}

/**
 * The backend for --device cuda. Attention: `cuda` is the portable reference kernel; `fa3` (the
 * Hopper kernels) does not exist yet, so `auto` gives `cuda` everywhere for now.
 */
export async function createCudaBackendChoice(attention: AttentionBackend): Promise<BackendChoice> {
  if (attention === "fa3") throw new Error("--attention-backend fa3 (the Hopper attention kernels) is not implemented yet; use cuda or auto");
  if (attention === "cpu") throw new Error("--attention-backend cpu needs --device cpu");
  const backend = new CudaBackend();
  const i = backend.info;
  return { backend, device: "cuda", attention: "cuda", description: `cuda (bf16, ${i.name}, sm_${i.ccMajor}${i.ccMinor}; reference attention kernel)` };
}
