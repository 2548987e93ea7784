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
// Decode (few tokens): linears of ≤ 8 rows run the GEMV kernels (gemv.cu) instead of cuBLASLt;
// MoE layers of ≤ 64 tokens route, sort and run their experts on the device (moe_decode.cu, no
// host round trip); decodeGraphLogits() captures whole decode steps as CUDA graphs per padded batch
// size and replays them. Weights are all stored [out, in] (checkpoint [in, out] tensors are
// transposed once at load).
//
// Greedy decoding picks tokens on the device (queueGreedy): a step then downloads n ids, not n ×
// vocab logits; sampled decoding likewise (queueSample, sample.cu): ids, logprobs and top
// logprobs come back, not the logits. Both leave the ids where the next queued step copies them
// in (the overlap schedule).
//
// Prefill (many rows): q, k and v are one GEMM over weights stored side by side (splitRows,
// linearMany); the MoE layer runs its shared expert and half its routed experts on a side
// stream, beside the router and the other half (moe).
//
// Known gaps (next steps): MoE routing of larger batches (prefill) still reads the expert ids
// back to the host (one sync per MoE layer, the shared expert running meanwhile; grouped expert
// GEMMs of our own were tried and were no faster than cuBLASLt per expert: docs/PERF.md, fourth
// pass); the grouped expert kernels reach ~70% of copy bandwidth at 64 tokens (cuBLASLt per
// expert: ~80%); attention is the simple reference kernel unless `attention: "fa3"`
// (attention.ts: mma.sync; on sm_90 the head_dim-128 prefill runs on wgmma).

import type {
  AttentionParams,
  AttentionSpec,
  Backend,
  GemmStats,
  GemmWarmup,
  HostTensor,
  KvPoolSizes,
  LinearOptions,
  MoeWeights,
  LogitEdits,
  PendingPicks,
  PendingSample,
  ReducedOutput,
  SampleRow,
  SampledRows,
  StepBatch,
  Tensor,
} from "../backend.js";
import { COPY_BANDWIDTH_BYTES, type CopyBandwidth, SAMPLE_MAX_TOP } from "../backend.js";
import { bf16ToFloat32, float32ToBf16, toFloat32 } from "../dtype.js";
import { ramp } from "../../util/int_arrays.js";
import { type Pool, SlotTables } from "../slot_tables.js";
import type { AttentionBackend, BackendChoice } from "../select.js";
import { FlashAttention, type FaSeq, faUnsupported } from "./attention.js";
import { Kernels, threadsPer8 } from "./kernels.js";
import type { NcclCommunicator } from "./nccl.js";
import { PeerAllReduce, type PeerExchange } from "./peer_allreduce.js";
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
/** Floats per row out of sample.cu: id, logprob, SAMPLE_MAX_TOP (id, logprob) pairs. */
const SAMPLE_OUT_STRIDE = 2 + 2 * SAMPLE_MAX_TOP;
/** Floats per row into sample.cu: temperature, top_p, top_k, min_p, u, top_n, edited slot, unused. */
const SAMPLE_PARAMS = 8;
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
    /**
     * Elements from one row to the next when that is not the row length: a column block of a
     * wider output (linearMany's packed q/k/v). Only attention() and toHost() take such a view.
     */
    readonly rowStride = 0,
  ) {}

  /**
   * A MoE layer's output whose combine (shared + routed rows, moe_combine) has not run yet:
   * addRmsNorm runs it fused with the norm; any other use runs it first (CudaBackend.tensor).
   */
  pendingCombine: { shared: DevicePtr; routed: DevicePtr; inv: DevicePtr } | null = null;

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
   * The part of the budget for one step's activations (default: 1/8 of the budget, at most
   * 8 GiB). A layer region (7/16 of it) must hold one layer's activations for the step's
   * tokens: about 200 KB per token for Scout's shapes.
   */
  stepBytes?: number;
  /** Fill every step arena and KV pool with NaN first, so unwritten outputs show (tests). */
  poison?: boolean;
  /** Always use the fallback GEMM kernel instead of cuBLASLt (cross-checks). */
  fallbackGemm?: boolean;
  /** Linears of at most this many rows use the GEMV kernels (default 4; at most 8; 0 = always cuBLASLt; env TSGLANG_GEMV_MAX_N). */
  gemvMaxTokens?: number;
  /** MoE layers of at most this many tokens run on the device alone (default 64, at most 1024; 0 = the host-sorted path; env TSGLANG_MOE_DEVICE_MAX_N). */
  moeDeviceMaxTokens?: number;
  /**
   * Decode batch sizes captured as CUDA graphs (a decode step pads up to the next one; larger
   * steps run directly). Default 1, 2, 4, 8, 16, 24, … 64; [] turns graphs off (as does env
   * TSGLANG_CUDA_GRAPHS=0).
   */
  graphSizes?: number[];
  /**
   * Attention kernels: "cuda" (default) the portable reference kernel, "fa3" the tiled
   * tensor-core kernels (attention.ts; bf16 precision and head_dim 16/32/64/128, else the
   * reference kernel runs).
   */
  attention?: "cuda" | "fa3";
  /**
   * Tensor parallelism: this rank's communicator (nccl.ts), joined on this thread for the same
   * `device`. It gives allReduce/allGatherColumns; the caller destroys it after the backend.
   */
  nccl?: NcclCommunicator;
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
  /** Per row: where its sequence's row starts in slotTable (row · context). */
  rowSlotBase: DevicePtr;
  rowSlot: DevicePtr;
  /** The pool's device slot table, [rows + 1, context] int32. */
  slotTable: DevicePtr;
  /** Chunk sizes whose key ranges were already checked against the slots this step. */
  checked: Set<number>;
  /** The sequences with their rows' offsets in slotTable (the fa kernels' tiles). */
  seqs: FaSeq[];
}

/** One captured decode step (decodeGraphLogits): the executable graph and where its logits land. */
interface GraphEntry {
  exec: DevicePtr;
  ptr: DevicePtr;
  cols: number;
  dtype: DType;
  /** Embedding rows (token ids are checked against it on replay). */
  vocab: number;
  /** The step arena after the capture (memory.ts mark()). */
  mark: number[];
}

/** One of queueGreedy's two pick buffers: `turn` counts the steps that wrote it; `done` is recorded after the latest. */
interface PickSlot {
  ptr: DevicePtr;
  /** queueSample's output rows (SAMPLE_OUT_STRIDE floats each). */
  out: DevicePtr;
  rows: number;
  done: DevicePtr;
  turn: number;
}

/**
 * Picks queued by queueGreedy or queueSample: downloaded on wait() (and, for draws, with their
 * logprobs on sampled()), which waits for their step only.
 */
export class DevicePicks implements PendingSample {
  private ids: Int32Array | null = null;
  private drawn: SampledRows | null = null;
  private readonly turn: number;

  /** `topN`: per row, the top logprobs asked for (queueSample on the drawing rank), else undefined. */
  constructor(
    readonly rows: number,
    readonly slot: PickSlot,
    private readonly native: NativeCuda,
    private readonly topN?: number[],
  ) {
    this.turn = slot.turn;
  }

  /** The device copy is still these picks (a slot is written again two queue calls later). */
  get current(): boolean {
    return this.slot.turn === this.turn;
  }

  wait(): Int32Array {
    if (this.ids) return this.ids;
    this.check();
    const ids = new Int32Array(this.rows);
    if (this.rows > 0) this.native.dtohAfter(ids, this.slot.ptr, this.slot.done);
    return (this.ids = ids);
  }

  sampled(): SampledRows {
    if (this.drawn) return this.drawn;
    if (!this.topN) throw new Error("sampled(): these picks were not drawn on this rank");
    this.check();
    const n = this.rows;
    const host = new Float32Array(n * SAMPLE_OUT_STRIDE);
    if (n > 0) this.native.dtohAfter(host, this.slot.out, this.slot.done);
    const ids = new Int32Array(n);
    const logprobs = new Float32Array(n);
    const top: [number, number][][] | undefined = this.topN.some((t) => t > 0) ? [] : undefined;
    for (let r = 0; r < n; r++) {
      const o = r * SAMPLE_OUT_STRIDE;
      ids[r] = host[o];
      logprobs[r] = host[o + 1];
      if (top) {
        const t: [number, number][] = [];
        for (let i = 0; i < this.topN[r]; i++) t.push([host[o + 2 + 2 * i], host[o + 3 + 2 * i]]);
        top.push(t);
      }
    }
    this.ids ??= ids;
    return (this.drawn = top ? { ids, logprobs, top } : { ids, logprobs });
  }

  private check(): void {
    if (!this.current) throw new Error("picks waited for after two later steps had reused their buffer");
  }
}

/** Padded decode batch sizes captured as CUDA graphs by default (SGLang's set up to 64). */
const DEFAULT_GRAPH_SIZES = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64];
const GEMV_THREADS = 256;
/** Downloads at least this large use the page-locked staging buffer. */
const PINNED_MIN_BYTES = 256 * 1024;
/** The most rows the GEMV kernels take in one pass over the weights (gemv.cuh). */
const GEMV_MAX_TOKENS = 8;
/**
 * Dense linears use the GEMV kernels up to this many rows. Measured on H100 (bench/decode_check.ts,
 * 2026-11-27): at 1 row GEMV beats cuBLASLt everywhere (lm_head 97% vs 81% of copy bandwidth,
 * q_proj 59% vs 52%); at 8 rows the 8-token pass is instruction-bound and cuBLASLt wins (lm_head
 * 92% vs 68%). 4-token passes issue about half as much; rows 5–8 go to cuBLASLt.
 */
const GEMV_DEFAULT_MAX_TOKENS = 4;
/** The device MoE runs the shared expert inside its kernels up to this many tokens (measured: 8 tokens 73% of copy, vs 68% host-sorted). */
const MOE_SHARED_IN_KERNEL_MAX = 8;
/** Shared memory a sm_90 SM gives its blocks (228 KB, less 1 KB the system keeps per block: counted in the static part below). */
const SM90_SHARED_PER_SM = 228 * 1024;
/** A staged GEMV block's static shared memory (mbarriers, the K-part sums) plus the 1 KB reserved per block. */
const STAGED_GEMV_STATIC_SHARED = 2 * 1024;
/** The staged one-token GEMV kernels, and the blocks a SM their registers allow (ptxas, sm_90a: 44 and 32 registers × 256 threads). */
const STAGED_GEMV_BLOCKS_PER_SM = { gemv3_1s_bf16: 5, gemv_push1s_bf16: 8 } as const;
type StagedGemv = keyof typeof STAGED_GEMV_BLOCKS_PER_SM;
/** MoE calls a step can have with moe_down's early shared pass (a count pair each); Maverick has 24, Scout 48. */
const MOE_CALLS_MAX = 256;
/** moe_decode.cu's MOE_ROUTED_MAX_LOCAL: experts per rank the in-kernel routing holds. */
const MOE_ROUTED_MAX_LOCAL = 256;
/** Blocks of moe_gate_up_routed1 an SM holds (ptxas, sm_90a: 64 registers × 256 threads). */
const MOE_ROUTED_BLOCKS_PER_SM = 4;

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
  /** The fa3 attention kernels, when chosen. */
  private readonly fa: FlashAttention | null;
  /** cuBLASLt workspaces: one per stream, as GEMMs on the two may run at once. */
  private readonly workspace: DevicePtr;
  private sideWorkspace: DevicePtr | null = null; // on the side stream's first use
  /** Work is being queued on the side stream (sideStream): GEMMs then use sideWorkspace. */
  private onSide = false;
  /** splitRows views → the weight they share (freed with its last view). */
  private readonly views = new WeakMap<CudaTensor, { ptr: DevicePtr; live: number }>();
  /** Events of the MoE host path (see moe), on the main stream: routing done, rows gathered. */
  private moeEvents: { routed: DevicePtr; gathered: DevicePtr } | null = null;
  /** moe_gate_up_routed's count of finished router blocks (zero between layers: moe_down resets it). */
  private readonly moeRouterDone: DevicePtr;
  /** Per MoE call of a step: the count of gate_up's finished shared slabs and of moe_down blocks past it (moeDownDecode resets both). */
  private readonly moeSharedDone: DevicePtr;
  /** MoE calls so far this step (which moeSharedDone pair the next one uses). */
  private moeCall = 0;
  /** Recorded after the side stream's latest work; `sidePending` until the main stream waited for it (joinSideStream). */
  private sideDone: DevicePtr | null = null;
  private sidePending = false;
  /** The dynamic shared memory each staged GEMV kernel was allowed so far (stagedGemvBytes). */
  private readonly stagedSmem = new Map<StagedGemv, number>();
  /** One-token GEMV launches that staged their weights (stats). */
  private stagedGemvs = 0;
  private readonly comm: NcclCommunicator | null;
  /** The CUDA device ordinal this backend (and its thread) is bound to. */
  readonly deviceOrdinal: number;
  /** The custom all-reduce over peer memory (connectPeers), for small messages; NCCL for the rest. */
  private peerAr: PeerAllReduce | null = null;
  /** The output a producer kernel pushed to every rank's inbox (peer_push.cuh), which the next collective must all-reduce. */
  private pushedPartial: DevicePtr | null = null;
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
  /** The attention kernels the last attention() call ran: "fa3" or "cuda" (the reference; also fa3's fallback for f32 precision or other head dims). */
  attentionKernel: "fa3" | "cuda" | "" = "";
  private readonly gemvMax: number;
  private readonly moeDeviceMax: number;
  // ---- CUDA graphs (decodeGraphLogits) ----
  private readonly graphSizes: number[];
  /** Captured decode steps per model, keyed by padded batch size and the attention split counts ("8/1,4"). */
  private readonly graphs = new Map<object, Map<string, GraphEntry>>();
  /** Set while a graph step is prepared or captured: the step's inputs live at these fixed addresses. */
  private graph: { ids: DevicePtr; meta: Map<string, DevicePtr>; appends: Map<string, DevicePtr>; capturing: boolean; vocab: number } | null = null;
  private kvLayers: AttentionSpec[] = [];
  /** The spare slot of each pool that padding rows of a graph step write and read. */
  private padSlot = { full: -1, swa: -1 };
  /**
   * The per-sequence slot tables (SeqSpan): the host copy (bounds checks) and one device table
   * per pool in use, [rows + 1, context] int32, which the attention kernels read. Row `padRow`
   * (the last) is the padding rows' of graph steps: position 0 holds the spare slot, as does
   * every entry never written.
   */
  private tables: SlotTables | null = null;
  private readonly deviceTables = new Map<Pool, DevicePtr>();
  private padRow = -1;
  /** Staging for a step's slot-table runs and slots: persistent, so graph steps' step memory keeps its layout. */
  private appendBuf: { ptr: DevicePtr; ints: number } | null = null;
  /** CUDA-graph counters and the last replay's device time; `off` says why graphs were turned off, if they were. */
  graphStats = { captures: 0, replays: 0, off: "" };
  private graphEvents: [DevicePtr, DevicePtr] | null = null;
  /** A graph step's gathered uploads (put, flushStepUploads): host bytes by base-region offset, the range written, launches that follow. */
  private stepUploads: { bytes: Uint8Array; lo: number; hi: number; after: (() => void)[] } | null = null;
  /** queueGreedy's two pick buffers and the one it wrote last. */
  private readonly pickSlots: (PickSlot | null)[] = [null, null];
  private pickTurn = 0;
  /** Page-locked staging for large downloads (toHost). */
  private pinned: Uint8Array | null = null;
  private pinnedOff = false;

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
    this.comm = opts.nccl ?? null;
    this.deviceOrdinal = opts.device ?? 0;
    const envInt = (name: string) => (process.env[name] !== undefined && process.env[name] !== "" ? Number(process.env[name]) : undefined);
    this.gemvMax = Math.min(GEMV_MAX_TOKENS, opts.gemvMaxTokens ?? envInt("TSGLANG_GEMV_MAX_N") ?? GEMV_DEFAULT_MAX_TOKENS);
    this.moeDeviceMax = Math.min(1024, opts.moeDeviceMaxTokens ?? envInt("TSGLANG_MOE_DEVICE_MAX_N") ?? 64);
    const graphsOn = process.env.TSGLANG_CUDA_GRAPHS !== "0" && this.native.graphBeginCapture !== undefined;
    this.graphSizes = graphsOn ? [...(opts.graphSizes ?? DEFAULT_GRAPH_SIZES)].sort((a, b) => a - b) : [];
    const free = this.native.memGetInfo().free;
    const budget = opts.memoryBytes ?? Math.floor(free * 0.9);
    // Prefill runs in chunks (8192 tokens by default), so a step's activations stay a few GiB
    // even for Scout; the rest of the budget is for weights and KV.
    const step = opts.stepBytes ?? Math.min(Math.floor(budget / 8), 8192 * MIB);
    this.mem = new DeviceMemory(this.native, budget, step);
    this.k = new Kernels(this.native);
    this.workspace = this.mem.alloc(WORKSPACE_BYTES, "the cuBLASLt workspace");
    this.moeRouterDone = this.mem.alloc(4, "the MoE router count");
    this.native.memset(this.moeRouterDone, 0, 1, 4);
    this.moeSharedDone = this.mem.alloc(MOE_CALLS_MAX * 8, "the MoE shared-slab counts");
    this.native.memset(this.moeSharedDone, 0, MOE_CALLS_MAX * 2, 4);
    if (opts.attention === "fa3" && this.info.ccMajor < 8) throw new Error(`fa3 attention needs an sm_80+ GPU (mma.sync, cp.async); ${this.info.name} is sm_${this.info.ccMajor}${this.info.ccMinor}`);
    this.fa =
      opts.attention === "fa3"
        ? new FlashAttention({
            kernels: this.k,
            native: this.native,
            smCount: this.info.smCount,
            uploadInts: (v) => this.uploadInts(v, true),
            scratch: (bytes) => this.mem.stepAlloc(bytes).ptr,
          }, { sm90: this.info.ccMajor === 9 })
        : null;
    this.beginStep();
  }

  // ---- memory and tensors ----

  /** Device bytes still free for KV pools (after weights), leaving the step arena alone. */
  kvMemoryBytes(): number {
    return this.mem.largestFree();
  }

  /** Starts a new step: every step tensor of the previous one becomes invalid. */
  beginStep(): void {
    this.joinSideStream(); // normally joined already (moe); not when an op threw in between
    this.mem.resetStep();
    this.step++;
    this.meta.clear();
    this.metaBatch = null;
    this.pushedPartial = null;
    this.moeCall = 0;
    if (this.poison) this.mem.poisonStep();
  }

  private tensor(x: Tensor, strided = false): CudaTensor {
    const t = this.checked(x, strided);
    if (t.pendingCombine) this.combine(t);
    return t;
  }

  /** tensor() without running a pending combine: the checks that a tensor is this backend's and alive. */
  private checked(x: Tensor, strided = false): CudaTensor {
    if (!(x instanceof CudaTensor)) throw new Error("cuda backend got a tensor from another backend");
    if (x.released) throw new Error("cuda backend: tensor used after free()");
    if (x.rowStride && !strided) throw new Error(`cuda backend: a column block of a wider output ([${x.shape}] with rows ${x.rowStride} apart, from linearMany) goes to attention() or toHost() only`);
    if (x.region !== PERSISTENT && !this.mem.live(x.region, x.epoch)) {
      throw new Error(`cuda backend: a step tensor [${x.shape}] was used after its memory was recycled (it belongs to an earlier step, or to the layer before last)`);
    }
    return x;
  }

  /** Runs a MoE output's combine into its memory (its inputs live in the same layer region). */
  private combine(x: CudaTensor): void {
    const p = x.pendingCombine!;
    x.pendingCombine = null;
    const d = x.shape[x.shape.length - 1];
    this.k.launch(`moe_combine_${this.t}`, [x.numel / d], [this.rowThreads(d)], (a) => a.ptr(p.shared).ptr(p.routed).ptr(p.inv).ptr(x.ptr).i32(d));
  }

  /** An activation of this layer, or of the whole step with `base`. */
  private stepTensor(shape: number[], dtype: DType, base = false): CudaTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = this.mem.stepAlloc(n * BYTES[dtype], base);
    return new CudaTensor(shape, a.ptr, dtype, a.region, a.epoch);
  }

  private uploadInts(values: Int32Array, base = false): DevicePtr {
    if (this.graph?.capturing) throw new Error("cuda backend: a host upload inside a CUDA-graph capture (per-step inputs must be prepared before it)");
    const p = this.mem.stepAlloc(values.byteLength, base).ptr;
    this.put(p, values);
    return p;
  }

  /**
   * A host → device copy of step inputs: at once, or — while a graph step is prepared
   * (decodeGraphLogits) and the bytes land in the base region — gathered into one upload with the
   * step's other inputs (flushStepUploads). Every copy outside the graph is a stream operation
   * of a few µs between two replays; a tp-4 Scout step had six (two pools' metadata, slot-table
   * appends and attention tiles).
   */
  private put(ptr: DevicePtr, data: ArrayBufferView): void {
    const s = this.stepUploads;
    const off = s ? this.mem.baseOffset(ptr, data.byteLength) : -1;
    if (!s || off < 0) return this.native.htod(ptr, data);
    if (s.bytes.length < off + data.byteLength) {
      const grown = new Uint8Array(Math.max(2 * s.bytes.length, off + data.byteLength, 4096));
      grown.set(s.bytes);
      s.bytes = grown;
    }
    s.bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), off);
    s.lo = Math.min(s.lo, off);
    s.hi = Math.max(s.hi, off + data.byteLength);
  }

  /** Sends what put() gathered as one copy, then runs the launches that read it (slot-table writes). */
  private flushStepUploads(): void {
    const s = this.stepUploads;
    if (!s) return;
    this.stepUploads = null;
    if (s.hi > s.lo) this.native.htod(this.mem.baseStart + BigInt(s.lo), s.bytes.subarray(s.lo, s.hi));
    for (const launch of s.after) launch();
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
    if (x.rowStride) throw new Error(`cuda backend: cannot cast a strided view [${x.shape}]`);
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
    // Transposed once, here, on the device: every weight is then [.., out, in], the layout the
    // GEMV kernels and cuBLASLt's op T read row by row.
    const s = [...h.shape];
    const [rowsIn, colsOut] = [s[s.length - 2], s[s.length - 1]];
    const batch = n / (rowsIn * colsOut);
    const out = this.mem.alloc(bytes.byteLength, `a weight of shape [${h.shape}] (transposed)`);
    this.k.launch(`transpose_${this.t === "bf16" ? "u16" : "u32"}`, [Math.ceil(colsOut / 32), Math.ceil(rowsIn / 32), batch], [32, 8], (a) =>
      a.ptr(ptr).ptr(out).i32(rowsIn).i32(colsOut),
    );
    this.mem.release(ptr); // stream-ordered: a later upload into it queues after the transpose
    [s[s.length - 2], s[s.length - 1]] = [colsOut, rowsIn];
    return new CudaTensor(s, out, this.t, PERSISTENT, 0);
  }

  free(x: Tensor): void {
    if (!(x instanceof CudaTensor) || x.released || x.region !== PERSISTENT) return;
    x.released = true;
    const block = this.views.get(x);
    if (!block) return this.mem.release(x.ptr);
    if (--block.live === 0) this.mem.release(block.ptr); // the last view of a splitRows weight
  }

  /** Backend.splitRows: views of consecutive row blocks of one weight (no copy; freed with the last view). */
  splitRows(w: Tensor, counts: number[]): Tensor[] {
    const wt = this.tensor(w);
    const [total, inDim] = rows(wt, "splitRows");
    if (wt.region !== PERSISTENT || wt.transposed || counts.reduce((a, c) => a + c, 0) !== total) {
      throw new Error(`splitRows: [${counts}] rows of a${wt.transposed ? " transposed" : ""} [${wt.shape}] weight`);
    }
    // The stacked tensor itself counts as one more holder of the block (freeing it alone keeps the views valid).
    const block = { ptr: wt.ptr, live: counts.length + 1 };
    this.views.set(wt, block);
    let at = wt.ptr;
    return counts.map((c) => {
      const v = new CudaTensor([c, inDim], at, wt.dtype, PERSISTENT, 0);
      this.views.set(v, block);
      at += BigInt(c * inDim * BYTES[wt.dtype]);
      return v;
    });
  }

  /** normal(0, std) from `seed` (or the constant `fill` when std is 0), generated on the device. */
  randomWeight(shape: number[], std: number, seed: number, fill = 0): CudaTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const out = new CudaTensor([...shape], this.mem.alloc(n * BYTES[this.t], `a random weight of shape [${shape}]`), this.t, PERSISTENT, 0);
    this.k.launch(`random_normal_${this.t}`, [gridFor(Math.ceil(n / 2))], [256], (a) => a.ptr(out.ptr).u64(n).u32(seed >>> 0).f32(std).f32(fill));
    return out;
  }

  /**
   * Device-to-device copy bandwidth (read + write counted), over two buffers of bytes/2 each
   * (smaller when the free budget is): the median of 10 copies. A copy has a fixed cost of ~9 µs
   * on top of its bytes (COPY_BANDWIDTH_BYTES), so the default is 8 GiB in all.
   */
  copyBandwidth(bytes = COPY_BANDWIDTH_BYTES): CopyBandwidth {
    const half = Math.floor(Math.min(bytes / 2, this.mem.largestFree() / 2 - 256) / 256) * 256;
    if (half < MIB) throw new Error("copyBandwidth: less than 2 MiB of device memory is free");
    const src = this.mem.alloc(half, "the copy-bandwidth source");
    const dst = this.mem.alloc(half, "the copy-bandwidth destination");
    try {
      this.native.memset(src, 0x3f80, half / 2, 2); // bf16 1.0: not zeros
      const ms = this.time(() => this.native.dtod(dst, src, half), 10, 2);
      return { bytesPerS: (2 * half) / (ms / 1000), bytes: 2 * half };
    } finally {
      this.mem.release(src);
      this.mem.release(dst);
    }
  }

  toHost(x: Tensor): Float32Array {
    const xt = this.tensor(x, true);
    if (xt.rowStride) {
      // A column block: download the span from its first element to its last, keep its columns.
      const [n, cols] = rows(xt, "toHost");
      const span = n === 0 ? 0 : (n - 1) * xt.rowStride + cols;
      const all = this.toHost(new CudaTensor([span], xt.ptr, xt.dtype, xt.region, xt.epoch));
      const out = new Float32Array(n * cols);
      for (let r = 0; r < n; r++) out.set(all.subarray(r * xt.rowStride, r * xt.rowStride + cols), r * cols);
      return out;
    }
    // Large downloads (logits: batch × vocab) go through a page-locked staging buffer: pageable
    // copies ran at ~1.2 GB/s on the H100 machines (52 MB of batch-64 logits: ~44 ms).
    const bytes = xt.numel * BYTES[xt.dtype];
    const staged = this.staging(bytes);
    if (staged) {
      this.native.dtoh(staged, xt.ptr);
      if (xt.dtype === "f32") return new Float32Array(staged.buffer.slice(0, bytes));
      return bf16ToFloat32(new Uint16Array(staged.buffer, 0, xt.numel));
    }
    if (xt.dtype === "f32") {
      const out = new Float32Array(xt.numel);
      this.native.dtoh(out, xt.ptr);
      return out;
    }
    const raw = new Uint16Array(xt.numel);
    this.native.dtoh(raw, xt.ptr);
    return bf16ToFloat32(raw);
  }

  /** A page-locked view of `bytes` for a download, or null (small, or page-locking unavailable). */
  private staging(bytes: number): Uint8Array | null {
    if (bytes < PINNED_MIN_BYTES || this.pinnedOff || !this.native.hostRegister) return null;
    if (!this.pinned || this.pinned.byteLength < bytes) {
      const size = Math.ceil(Math.max(bytes, 2 * (this.pinned?.byteLength ?? 0)) / 65536) * 65536;
      this.releasePinned();
      const buf = new Uint8Array(size);
      try {
        this.native.hostRegister(buf);
      } catch (e) {
        this.pinnedOff = true;
        console.warn(`tsglang cuda: downloads stay pageable: ${(e as Error).message}`);
        return null;
      }
      this.pinned = buf;
    }
    return this.pinned.subarray(0, bytes);
  }

  private releasePinned(): void {
    if (!this.pinned) return;
    try {
      this.native.hostUnregister?.(this.pinned);
    } catch {
      // the context is going away
    }
    this.pinned = null;
  }

  /**
   * Greedy picks left on the device (Backend.queueGreedy). One rank: argmax_rows. Vocabulary split
   * over ranks: each rank's (max, global index) per row (argmax_pairs), gathered by an all-reduce
   * ([ranks, rows, 2] fp32 with zeros in the other ranks' places: a few bytes per row instead of
   * the logits, on the custom all-reduce's NVLink path), and argmax_merge picks each row's best,
   * lowest id among equal maxima, the same on every rank. The ids land in one of two page-turning
   * buffers, so a step's picks stay readable while the next step (which may copy them in as its
   * input ids) runs.
   */
  queueGreedy(x: Tensor, split?: { vocabStart: number }): DevicePicks {
    const xt = this.tensor(x);
    const [n, cols] = rows(xt, "queueGreedy");
    const slot = this.nextPickSlot(n);
    if (n > 0 && split) {
      const comm = this.communicator("queueGreedy");
      const all = this.mem.stepAlloc(comm.size * n * 8).ptr;
      this.k.launch(`argmax_pairs_${xt.dtype}`, [n], [1024], (a) => a.ptr(xt.ptr).i32(cols).i32(split.vocabStart).ptr(all).i32(comm.rank).i32(comm.size));
      this.allReduceAt(all, comm.size * n * 2, "f32", "queueGreedy"); // the gather as a sum (argmax_pairs)
      this.k.launch("argmax_merge", [Math.ceil(n / 256)], [256], (a) => a.ptr(all).i32(comm.size).i32(n).ptr(slot.ptr));
    } else if (n > 0) {
      this.k.launch(`argmax_rows_${xt.dtype}`, [n], [1024], (a) => a.ptr(xt.ptr).i32(cols).ptr(slot.ptr));
    }
    this.native.eventRecord(slot.done);
    return new DevicePicks(n, slot, this.native);
  }

  /** The other of the two pick slots, for a step of n rows (grown as needed; its turn counted). */
  private nextPickSlot(n: number): PickSlot {
    this.pickTurn ^= 1;
    let slot = this.pickSlots[this.pickTurn];
    if (!slot || slot.rows < n) {
      if (slot) {
        this.mem.release(slot.ptr);
        this.mem.release(slot.out);
      }
      const capacity = Math.max(n, this.graphSizes.at(-1) ?? 1);
      slot = this.pickSlots[this.pickTurn] = {
        ptr: this.mem.alloc(capacity * 4, "greedy picks"),
        out: this.mem.alloc(capacity * SAMPLE_OUT_STRIDE * 4, "sampled rows"),
        rows: capacity,
        done: slot?.done ?? this.native.eventCreate(),
        turn: 0,
      };
    }
    slot.turn++;
    return slot;
  }

  /** queueSample on one rank, waited for (what the sampling tests call). */
  sampleRows(x: Tensor, rowsIn: SampleRow[]): SampledRows {
    return this.queueSample(x, rowsIn, false).sampled();
  }

  /**
   * Sampling on the device (Backend.queueSample, sample.cu): one block per row filters
   * (temperature, top-k, top-p, min-p) and draws with the row's `u` into a pick slot's output rows
   * (42 floats: id, logprob, 20 top pairs) and its ids; sampled() downloads the rows instead of the
   * logits. Shared (tensor parallelism): the ranks without rows zero their output rows and one
   * all-reduce of the [n, 42] floats gives every rank the drawing rank's (x + 0 is x).
   */
  queueSample(x: Tensor, rowsIn: SampleRow[] | null, shared: boolean): DevicePicks {
    const xt = this.tensor(x);
    const [n, cols] = rows(xt, "queueSample");
    if (rowsIn && rowsIn.length !== n) throw new Error(`queueSample: ${rowsIn.length} sampling rows for ${n} logit rows`);
    const slot = this.nextPickSlot(n);
    const topN = rowsIn?.map((r) => Math.max(0, Math.min(SAMPLE_MAX_TOP, Math.floor(r.topN))));
    if (n > 0 && rowsIn) {
      const params = new Float32Array(SAMPLE_PARAMS * n);
      const edited: number[] = []; // logit rows with penalties or masks, in slot order
      rowsIn.forEach((r, i) => {
        // u as fp32 stays below 1 (a double just under 1 would round up to it).
        const u = Math.min(Math.max(Math.fround(r.u), 0), 0.99999994);
        const editSlot = r.edits && r.edits.ids.length > 0 ? edited.push(i) - 1 : -1;
        params.set([r.temperature, r.topP, r.topK, r.minP, u, topN![i], editSlot, 0], SAMPLE_PARAMS * i);
      });
      const paramsDev = this.mem.stepAlloc(params.byteLength).ptr;
      this.native.htod(paramsDev, params);
      const editedDev = edited.length > 0 ? this.editRows(xt, cols, edited.map((i) => [i, rowsIn[i].edits!] as const)) : 0n;
      this.k.launch(`sample_rows_${xt.dtype}`, [n], [1024], (a) => a.ptr(xt.ptr).i32(cols).ptr(paramsDev).ptr(editedDev).ptr(slot.out));
    }
    if (n > 0 && shared) {
      if (!rowsIn) this.native.memset(slot.out, 0, n * SAMPLE_OUT_STRIDE, 4);
      this.communicator("queueSample").allReduce(slot.out, n * SAMPLE_OUT_STRIDE, "f32");
    }
    if (n > 0) this.k.launch("sample_ids", [Math.ceil(n / 256)], [256], (a) => a.ptr(slot.out).i32(SAMPLE_OUT_STRIDE).i32(n).ptr(slot.ptr));
    this.native.eventRecord(slot.done);
    return new DevicePicks(n, slot, this.native, topN);
  }

  /**
   * fp32 copies of the given logit rows with their edits applied (sample.cu logit_edit_rows):
   * entries as int4 {id, flags, sub bits, repetition bits}, one block per row.
   */
  private editRows(xt: CudaTensor, cols: number, list: (readonly [number, LogitEdits])[]): DevicePtr {
    const total = list.reduce((a, [, e]) => a + e.ids.length, 0);
    const entries = new Int32Array(4 * total);
    const asInt = new Int32Array(1);
    const asFloat = new Float32Array(asInt.buffer);
    const bits = (v: number) => ((asFloat[0] = v), asInt[0]);
    const header = new Int32Array(2 * list.length + 1); // [rows | offsets]
    let at = 0;
    list.forEach(([row, e], b) => {
      header[b] = row;
      header[list.length + b] = at;
      for (let i = 0; i < e.ids.length; i++, at++) entries.set([e.ids[i], e.flags[i], bits(e.sub[i]), bits(e.repetition)], 4 * at);
    });
    header[2 * list.length] = at;
    const headerDev = this.uploadInts(header);
    const entriesDev = this.mem.stepAlloc(Math.max(16, entries.byteLength)).ptr;
    if (total > 0) this.native.htod(entriesDev, entries);
    const editedDev = this.mem.stepAlloc(list.length * cols * 4).ptr;
    this.k.launch(`logit_edit_rows_${xt.dtype}`, [list.length], [1024], (a) =>
      a.ptr(xt.ptr).i32(cols).ptr(headerDev).ptr(headerDev + BigInt(list.length * 4)).ptr(entriesDev).ptr(editedDev),
    );
    return editedDev;
  }

  synchronize(): void {
    this.native.synchronize();
  }

  stats() {
    return { ...this.mem.stats(), fallbackGemms: this.fallbackGemms, stagedGemvs: this.stagedGemvs };
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
    // Every rank destroys together; the barrier ensures no peer still reads this rank's staging buffer.
    const peers = this.peerAr;
    this.peerAr = null;
    peers?.barrier();
    this.native.synchronize();
    if (this.deviceOrdinal === 0) this.k.stamps?.dump(`${this.info.name}${this.comm ? `, rank 0 of ${this.comm.size}` : ""}`);
    this.dropGraphs();
    this.releasePinned();
    this.mem.destroy();
  }

  // ---- ops ----

  /**
   * Rows of the table for `ids`; the table holds vocabulary rows [vocabStart, vocabStart + rows).
   * With a communicator (vocabulary parallelism) other ids give zero rows, which the all-reduce
   * fills; on a lone rank an id outside them is an error.
   */
  embedding(table: Tensor, ids: Int32Array, vocabStart = 0): CudaTensor {
    const tb = this.tensor(table);
    if (tb.transposed || tb.shape.length !== 2) throw new Error("embedding: the table must be [vocab, d]");
    const [vocab, d] = tb.shape;
    const local = new Int32Array(ids.length);
    const fullVocab = this.comm ? vocab * this.comm.size : vocab;
    // A plain loop, not forEach: a prefill's first step runs this in V8's interpreter, where a
    // callback per token costs several times the loop (util/int_arrays.ts says why it matters).
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      let l = id - vocabStart;
      if (this.comm && id >= 0 && id < fullVocab) {
        if (l < 0 || l >= vocab) l = -1; // another rank's slice: a zero row
      } else if (l < 0 || l >= vocab) {
        throw new Error(`token id ${id} is outside the vocabulary [${vocabStart}, ${vocabStart + vocab})`);
      }
      local[i] = l;
    }
    // A forward step starts with its embedding; a CUDA-graph step began in decodeGraphLogits(), which
    // put the ids at a fixed address.
    // Its ids are global there (the same on every rank): the rank's slice is taken on the device.
    const g = this.graph;
    if (g) g.vocab = fullVocab;
    else this.beginStep();
    const out = this.stepTensor([ids.length, d], "f32", true); // the residual stream: step-long
    if (g) {
      this.k.launch(`embedding_shard_${tb.dtype}`, [ids.length], [this.rowThreads(d)], (a) => a.ptr(tb.ptr).ptr(g.ids).ptr(out.ptr).i32(d).i32(vocabStart).i32(vocab));
      return out;
    }
    const idsDev = this.uploadInts(local, true);
    this.k.launch(`embedding_${tb.dtype}`, [ids.length], [this.rowThreads(d)], (a) => a.ptr(tb.ptr).ptr(idsDev).ptr(out.ptr).i32(d));
    return out;
  }

  rmsNorm(x: Tensor, w: Tensor, eps: number): CudaTensor {
    let xt = this.tensor(x);
    const wt = this.tensor(w);
    const [n, d] = rows(xt, "rmsNorm");
    if (wt.numel !== d) throw new Error(`rmsNorm: weight has ${wt.numel} elements, rows have ${d}`);
    if (!(xt.dtype === "f32" || this.t === "bf16")) xt = this.as(xt, "f32");
    const out = this.stepTensor([n, d], this.t);
    const vec = this.vecRows(d, wt.dtype, [xt.ptr, wt.ptr, out.ptr]);
    const name = vec ? `rms_norm_vec_${xt.dtype}_bf16` : `rms_norm_${xt.dtype}_${this.t}`;
    this.k.launch(name, [n], [vec ? this.rowThreads(d) : blockFor(d)], (a) => a.ptr(xt.ptr).ptr(wt.ptr).ptr(out.ptr).i32(d).f32(eps));
    return out;
  }

  addRmsNorm(residual: Tensor, x: Tensor, w: Tensor, eps: number): CudaTensor {
    const rt = this.residual(residual, "addRmsNorm");
    const fused = this.addRmsNormMoe(rt, x, w, eps);
    if (fused) return fused;
    let xt = this.tensor(x);
    const wt = this.tensor(w);
    const [n, d] = rows(rt, "addRmsNorm");
    if (xt.numel !== n * d) throw new Error(`addRmsNorm: x [${xt.shape}] does not match the residual [${rt.shape}]`);
    if (wt.numel !== d) throw new Error(`addRmsNorm: weight has ${wt.numel} elements, rows have ${d}`);
    if (!(xt.dtype === "f32" || this.t === "bf16")) xt = this.as(xt, "f32");
    const out = this.stepTensor([n, d], this.t);
    const vec = this.vecRows(d, wt.dtype, [rt.ptr, xt.ptr, wt.ptr, out.ptr]);
    const name = vec ? `add_rms_norm_vec_${xt.dtype}_bf16` : `add_rms_norm_${xt.dtype}_${this.t}`;
    const threads = vec ? this.rowThreads(d) : blockFor(d);
    this.k.launch(name, [n], [threads], (a) => a.ptr(rt.ptr).ptr(xt.ptr).ptr(wt.ptr).ptr(out.ptr).i32(d).f32(eps));
    return out;
  }

  /** addRmsNorm of a MoE output still to combine: both in one launch (norm.cu, add_rms_norm_moe); null where the vector kernel does not fit. */
  private addRmsNormMoe(rt: CudaTensor, x: Tensor, w: Tensor, eps: number): CudaTensor | null {
    if (!(x instanceof CudaTensor) || !x.pendingCombine) return null;
    const p = x.pendingCombine;
    const xt = this.checked(x);
    const wt = this.tensor(w);
    const [n, d] = rows(rt, "addRmsNorm");
    if (xt.numel !== n * d || wt.numel !== d || xt.dtype !== "bf16") return null;
    if (!this.vecRows(d, wt.dtype, [rt.ptr, xt.ptr, wt.ptr, p.shared, p.routed])) return null;
    x.pendingCombine = null;
    const out = this.stepTensor([n, d], this.t);
    this.k.launch("add_rms_norm_moe_bf16", [n], [this.rowThreads(d)], (a) =>
      a.ptr(rt.ptr).ptr(p.shared).ptr(p.routed).ptr(p.inv).ptr(xt.ptr).ptr(wt.ptr).ptr(out.ptr).i32(d).f32(eps),
    );
    return out;
  }

  /** Rows of ≤ 8192 in bf16 with 16-byte rows and addresses: norm.cu's vector kernels (one thread per 8 elements) take them. */
  private vecRows(d: number, weightType: DType, ptrs: DevicePtr[]): boolean {
    return this.t === "bf16" && weightType === "bf16" && d % 8 === 0 && d <= 8 * 1024 && ptrs.every((p) => p % 16n === 0n);
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

  /** y = x · wᵀ; `outF32` gives fp32 output (logits) in bf16 mode; `allReduceNext`: see ReducedOutput. */
  linear(x: Tensor, w: Tensor, opts: LinearOptions = {}): CudaTensor {
    const xt = this.as(this.tensor(x), this.t);
    const wt = this.tensor(w);
    const [n, inDim] = rows(xt, "linear");
    if (wt.shape.length !== 2) throw new Error(`linear: weight must be [out, in], got [${wt.shape}]`);
    const [out, wIn] = wt.shape;
    if (wIn !== inDim) throw new Error(`linear: x has ${inDim} columns, weight expects ${wIn}`);
    const y = this.stepTensor([n, out], opts.outF32 ? "f32" : this.t);
    const rb = this.pushRowsPerBlock(out);
    if (opts.allReduceNext && n === 1 && y.dtype === "bf16" && this.gemvApplies(n, inDim, xt.ptr, wt, wt.ptr) && this.peerAr?.canPush(out, rb)) {
      // One token under tensor parallelism: the GEMV pushes its rows to every rank as they finish.
      const staged = this.stagedGemvBytes("gemv_push1s_bf16", rb, inDim, out / rb);
      this.k.launch(staged ? "gemv_push1s_bf16" : "gemv_push1_bf16", [out / rb], [GEMV_THREADS], (a) =>
        this.peerAr!.pushTarget(a.ptr(xt.ptr).ptr(wt.ptr).ptr(y.ptr).i32(inDim).i32(out).i32(rb)),
        staged,
      );
      this.pushed(y.ptr);
      return y;
    }
    this.gemm(y.ptr, y.dtype, xt.ptr, n, inDim, wt, 0, out);
    return y;
  }

  /**
   * Shared memory for a one-token GEMV kernel that stages its block's rows there (q/k/v's
   * gemv3_1s_bf16, o_proj's gemv_push1s_bf16: gemv.cuh's gemvStaged1, sm_90), or 0 for the
   * register path: staging where the grid, at the blocks a SM that memory leaves, is still one
   * wave (a tp-4 rank's q/k/v: 448 blocks of 50 KB, four a SM; one GPU's 896 blocks of 90 KB
   * would be 3.4 waves).
   */
  private stagedGemvBytes(name: StagedGemv, rb: number, inDim: number, blocks: number): number {
    if (this.info.ccMajor !== 9 || this.t !== "bf16") return 0;
    const bytes = (rb + 1) * inDim * 2; // rb weight rows, then the input row (gemvStaged1)
    const perSm = Math.min(STAGED_GEMV_BLOCKS_PER_SM[name], Math.floor(SM90_SHARED_PER_SM / (bytes + STAGED_GEMV_STATIC_SHARED)));
    if (blocks > perSm * this.info.smCount) return 0;
    if ((this.stagedSmem.get(name) ?? 0) < bytes) {
      this.native.setMaxDynamicShared(this.k.fn(name), bytes);
      this.stagedSmem.set(name, bytes);
    }
    if (!this.k.dry) this.stagedGemvs++;
    return bytes;
  }

  /** Rows a block of a pushing kernel (gemv_push1, moe_down_push1) takes: the GEMV's, in whole 4-row units. */
  private pushRowsPerBlock(rows: number): number {
    return Math.max(4, this.rowsPerBlock(rows));
  }

  /** Records a producer's push (peer_push.cuh): its output must be the next collective's input. */
  private pushed(ptr: DevicePtr): void {
    if (!this.k.dry) this.pushedPartial = ptr;
  }

  /** Throws if a pushed output is waiting for its all-reduce (any other collective now would desynchronise the ranks' epochs). */
  private checkNothingPushed(op: string): void {
    if (this.pushedPartial !== null) throw new Error(`cuda backend: ${op} while a pushed partial sum (linear/moe with allReduceNext) waits for its allReduceAddRmsNorm`);
  }

  /** Can the GEMV kernels take this product (16-byte rows and addresses, few rows)? */
  private gemvApplies(n: number, inDim: number, x: DevicePtr, w: CudaTensor, wPtr: DevicePtr): boolean {
    return !w.transposed && !this.fallbackGemm && n <= this.gemvMax && inDim % (16 / BYTES[this.t]) === 0 && x % 16n === 0n && wPtr % 16n === 0n;
  }

  /**
   * y[n, out] = x[n, inDim] · W[out, inDim]ᵀ where W starts `wOffset` elements into `w`.
   * Row-major y, x and W are column-major yᵀ, xᵀ and Wᵀ, so this is the column-major
   * D[out, n] = op(W)·X with op = T for [out, in] weights and N for transposed-stored ones.
   */
  private gemm(y: DevicePtr, yType: DType, x: DevicePtr, n: number, inDim: number, w: CudaTensor, wOffset: number, out: number): void {
    if (n === 0) return;
    const wPtr = w.ptr + BigInt(wOffset * BYTES[w.dtype]);
    // Few rows: the GEMV kernels stream the weights at memory speed (cuBLASLt's small-n kernels
    // do not); they need 16-byte rows and addresses.
    if (this.gemvApplies(n, inDim, x, w, wPtr)) {
      const rb = this.rowsPerBlock(out);
      this.k.launch(`gemv${tokensPerPass(n)}_${this.t}_${yType}`, [Math.ceil(out / rb)], [GEMV_THREADS], (a) =>
        a.ptr(x).ptr(wPtr).ptr(y).i32(n).i32(inDim).i32(out).i32(rb),
      );
      return;
    }
    const ok = !this.fallbackGemm && this.native.matmul(...this.matmulArgs(y, yType, x, n, inDim, w.transposed, wPtr, out));
    if (ok) return;
    this.fallbackGemms++;
    this.k.launch(`gemm_fallback_${this.t}_${yType}`, [Math.ceil(out / 16), Math.ceil(n / 16)], [16, 16], (a) =>
      a.ptr(x).ptr(wPtr).ptr(y).i32(n).i32(out).i32(inDim).i32(w.transposed ? 1 : 0),
    );
  }

  /** cuBLASLt's arguments for y[n, out] = x[n, inDim] · wᵀ (column-major: D[out, n] = op(W)·X). */
  private matmulArgs(y: DevicePtr, yType: DType, x: DevicePtr, n: number, inDim: number, transposed: boolean, wPtr: DevicePtr, out: number) {
    const ab = this.t === "bf16" ? CUDA_R_16BF : CUDA_R_32F;
    const d = yType === "bf16" ? CUDA_R_16BF : CUDA_R_32F;
    const ws = this.onSide ? this.sideWorkspace! : this.workspace;
    return [transposed ? 0 : 1, 0, out, n, inDim, wPtr, transposed ? out : inDim, x, inDim, y, out, ab, d, 1, 0, ws, WORKSPACE_BYTES] as const;
  }

  /** Backend.gemmStats: the native cuBLASLt planning counters of this thread. */
  gemmStats(): GemmStats {
    return this.native.matmulStats();
  }

  /**
   * Backend.prepareGemms: for each distinct weight shape, one GEMM at every cuBLASLt bucket of
   * rows (native matmulBucket) up to maxRows, on scratch rows in the layer region of the step
   * arena (no memory beyond it). Each bucket's algorithm is chosen there (timed among cuBLASLt's
   * candidates, blaslt.cc) and its kernels load, so a serving step meets neither; the MoE prefill
   * otherwise paid ~0.3 ms of heuristic plus module loads for every new per-expert row count.
   * Buckets whose operands do not fit the region are left to be planned when met.
   */
  prepareGemms(specs: GemmWarmup[]): { gemms: number; shapes: number } {
    if (this.graph) throw new Error("prepareGemms: not inside a CUDA-graph step");
    if (this.fallbackGemm) return { gemms: 0, shapes: 0 }; // nothing to plan: every GEMM is the simple kernel
    // experts: some weight of this shape is an expert stack (the shared expert's has the same shape).
    const seen = new Map<string, { w: CudaTensor; maxRows: number; yType: DType; experts: boolean }>();
    for (const s of specs) {
      const w = this.tensor(s.weight);
      if (w.shape.length !== 2 && w.shape.length !== 3) throw new Error(`prepareGemms: weight must be [out, in] or [experts, out, in], got [${w.shape}]`);
      const yType: DType = s.outF32 ? "f32" : this.t;
      const [out, inDim] = w.shape.slice(-2);
      // cuBLASLt plans per shape, op and operand alignment (blaslt.cc): one warm-up per such key.
      const key = `${out},${inDim},${w.transposed},${w.dtype},${yType},${alignment(w.ptr)}`;
      const had = seen.get(key);
      const experts = w.shape.length === 3;
      if (had) {
        had.maxRows = Math.max(had.maxRows, s.maxRows);
        had.experts ||= experts;
      } else seen.set(key, { w, maxRows: s.maxRows, yType, experts });
    }
    let gemms = 0;
    // Bucket = n means per-n planning (TSGLANG_BLASLT_EXACT=1): plan only the small counts then.
    const exact = this.native.matmulBucket(17) === 17;
    for (const { w, maxRows, yType, experts } of seen.values()) {
      const [out, inDim] = w.shape.slice(-2);
      const limit = exact ? Math.min(maxRows, 64) : maxRows;
      if (limit < 1) continue;
      const rowBytes = inDim * BYTES[this.t] + out * BYTES[yType];
      const fit = Math.floor((this.mem.layerRegionBytes - 2 * 256) / rowBytes);
      const rowsMax = Math.min(this.native.matmulBucket(limit), fit);
      if (rowsMax < 1) continue;
      this.mem.resetStep(); // scratch only: the previous spec's rows are done with (beginStep would poison it again)
      const x = this.stepTensor([rowsMax, inDim], this.t);
      const y = this.stepTensor([rowsMax, out], yType);
      // Small finite inputs (2^-7): outputs stay finite for any weights; the values are unused.
      if (this.t === "bf16") this.native.memset(x.ptr, 0x3c00, rowsMax * inDim, 2);
      else this.native.memset(x.ptr, 0x3c000000, rowsMax * inDim, 4);
      for (let n = 1; n <= limit; ) {
        const nb = this.native.matmulBucket(n);
        if (nb > rowsMax) break;
        this.gemm(y.ptr, yType, x.ptr, nb, inDim, w, 0, out);
        gemms++;
        n = nb + 1;
      }
      // Expert weights meet every row count (each expert gets some of a step's rows): their plans
      // for every n (descriptors over the bucket's algorithm, not run) are made here too. Without
      // this, bench-one-batch's first timed 2048-token prefills each made 12–76 new plans (~4 µs
      // of host time each, between a layer's routing and its experts).
      if (experts && !exact) {
        for (let n = this.gemvMax + 1; n <= Math.min(limit, rowsMax); n++) this.native.matmulPlan(...this.matmulArgs(y.ptr, yType, x.ptr, n, inDim, w.transposed, w.ptr, out));
      }
    }
    this.native.synchronize();
    this.beginStep();
    return { gemms, shapes: seen.size };
  }

  /**
   * Several linears of the same input (q, k and v): one GEMV launch over their rows together when
   * the GEMV kernels take the input (few rows); one GEMM when the weights lie side by side
   * (splitRows views); else one linear each. Either way the small k/v projections ride with q
   * instead of under-filling the GPU in launches of their own.
   */
  linearMany(x: Tensor, ws: Tensor[]): CudaTensor[] {
    const xt = this.as(this.tensor(x), this.t);
    const wts = ws.map((w) => this.tensor(w));
    const [n, inDim] = rows(xt, "linearMany");
    const total = wts.reduce((a, w) => a + w.shape[0], 0);
    // [out, in] weights of this input's width in the storage type: what both fused paths take.
    const plain = !this.fallbackGemm && wts.every((w) => w.shape.length === 2 && w.shape[1] === inDim && !w.transposed && w.dtype === this.t);
    const fits =
      plain && wts.length >= 1 && wts.length <= 3 && n >= 1 && n <= this.gemvMax && inDim % (16 / BYTES[this.t]) === 0 && xt.ptr % 16n === 0n &&
      wts.every((w) => w.ptr % 16n === 0n);
    if (!fits) {
      // Many rows: weights side by side in memory (splitRows views) run as one GEMM — the k and v GEMMs
      // alone are too small to fill the GPU (measured ~370 TFLOP/s each at 2048 rows on an H100).
      // Each output is then a column block of one [n, Σ out] tensor, which attention() reads.
      if (plain && n > this.gemvMax && wts.length > 1 && contiguous(wts)) {
        const y = this.stepTensor([n, total], this.t);
        this.gemm(y.ptr, this.t, xt.ptr, n, inDim, wts[0], 0, total);
        let col = 0;
        return wts.map((w) => {
          const v = new CudaTensor([n, w.shape[0]], y.ptr + BigInt(col * BYTES[this.t]), this.t, y.region, y.epoch, false, total);
          col += w.shape[0];
          return v;
        });
      }
      return wts.map((w) => this.linear(xt, w));
    }
    const outs = wts.map((w) => this.stepTensor([n, w.shape[0]], this.t));
    const rb = this.rowsPerBlock(total);
    const blocks = Math.ceil(total / rb);
    const part = (i: number) => (i < wts.length ? [wts[i].ptr, outs[i].ptr, wts[i].shape[0]] as const : [0n, 0n, 0] as const);
    const staged = n === 1 ? this.stagedGemvBytes("gemv3_1s_bf16", rb, inDim, blocks) : 0;
    this.k.launch(staged ? "gemv3_1s_bf16" : `gemv3_${tokensPerPass(n)}_${this.t}`, [blocks], [GEMV_THREADS], (a) => {
      a.ptr(xt.ptr).i32(n).i32(inDim).i32(rb);
      for (let i = 0; i < 3; i++) {
        const [w, y, o] = part(i);
        a.ptr(w).ptr(y).i32(o);
      }
      return a;
    }, staged);
    return outs;
  }

  /** Threads for a one-block-per-row kernel using common.cuh's scaleRow: one per 8 bf16 elements (≤ 1024), else blockFor. */
  private rowThreads(d: number): number {
    return this.t === "bf16" && d % 8 === 0 ? threadsPer8(d) : blockFor(d);
  }

  /** Output rows per GEMV block: as many as keep ≥ 2 blocks per SM (the rest split K within the block). */
  private rowsPerBlock(rows: number): number {
    for (const rb of [8, 4, 2]) if (Math.ceil(rows / rb) >= 2 * this.info.smCount) return rb;
    return 1;
  }

  siluMul(gateUp: Tensor): CudaTensor {
    const g = this.as(this.tensor(gateUp), this.t);
    const [n, twoF] = rows(g, "siluMul");
    const f = twoF / 2;
    const out = this.stepTensor([n, f], this.t);
    this.launchSiluMul(g.ptr, out.ptr, n, f);
    return out;
  }

  /** out [n, F] = SiLU(gu[:, :F]) · gu[:, F:]; the bf16 kernel takes 8 elements a thread when F % 8 == 0. */
  private launchSiluMul(gu: DevicePtr, out: DevicePtr, n: number, f: number): void {
    const perThread = this.t === "bf16" && f % 8 === 0 ? 8 : 1;
    this.k.launch(`silu_mul_${this.t}`, [gridFor((n * f) / perThread)], [256], (a) => a.ptr(gu).ptr(out).u64(n).i32(f));
  }

  // ---- tensor parallelism (NCCL on this thread's stream) ----

  private communicator(op: string): NcclCommunicator {
    if (!this.comm) throw new Error(`cuda backend: ${op} needs an NCCL communicator (CudaBackendOptions.nccl): this backend is a lone rank`);
    return this.comm;
  }

  /** Sums x over all ranks, in place (fp32 or bf16, as stored). */
  allReduce(x: Tensor): void {
    const xt = this.tensor(x);
    this.allReduceAt(xt.ptr, xt.numel, xt.dtype, "allReduce");
  }

  /** `count` elements at ptr summed over all ranks, in place: the custom all-reduce where it fits, else NCCL. */
  private allReduceAt(ptr: DevicePtr, count: number, dtype: "bf16" | "f32", op: string): void {
    this.checkNothingPushed(op);
    if (this.peerAr?.covers(count * BYTES[dtype])) this.peerAr.run(ptr, count, dtype);
    else this.communicator(op).allReduce(ptr, count, dtype);
  }

  /**
   * allReduce(x) then addRmsNorm(residual, x, w, eps) — in one launch of the custom all-reduce
   * for decode-sized bf16 rows (allreduce.cu's fused kernel, bit-identical to the two), else the two.
   */
  allReduceAddRmsNorm(residual: Tensor, x: Tensor, w: Tensor, eps: number): CudaTensor {
    const rt = this.residual(residual, "allReduceAddRmsNorm");
    const xt = this.tensor(x);
    const wt = this.tensor(w);
    const [n, d] = rows(rt, "allReduceAddRmsNorm");
    const pushed = this.pushedPartial === xt.ptr;
    if (!pushed) this.checkNothingPushed("allReduceAddRmsNorm of another tensor");
    this.pushedPartial = null;
    const fused = this.peerAr?.coversRows(n, d) && xt.dtype === "bf16" && xt.numel === n * d && wt.numel === d && this.vecRows(d, wt.dtype, [rt.ptr, xt.ptr, wt.ptr]);
    // Without the fused kernel the pull path below reads x itself; a push of x is then never
    // read: canPush implied the custom all-reduce covers the row, so this call still advances
    // the epoch, and the push's flags never match a later one.
    if (!fused) {
      this.allReduce(xt);
      return this.addRmsNorm(rt, xt, wt, eps);
    }
    const out = this.stepTensor([n, d], this.t);
    if (pushed) this.peerAr!.runPushedAddRmsNorm(rt.ptr, wt.ptr, out.ptr, d, eps);
    else this.peerAr!.runAddRmsNorm(xt.ptr, rt.ptr, wt.ptr, out.ptr, n, d, eps);
    return out;
  }

  /**
   * Sets up the custom all-reduce over peer memory (peer_allreduce.ts) with the other ranks of
   * this backend's communicator: every rank calls it concurrently, with the group's shared
   * exchange. All-reduces that fit then take it on every rank, the rest NCCL; if any rank cannot
   * use peer memory, none does (`peerAllReduce.off` says why).
   */
  async connectPeers(exchange: PeerExchange): Promise<PeerAllReduce> {
    const comm = this.communicator("connectPeers");
    if (this.peerAr) throw new Error("cuda backend: connectPeers was already called");
    const host = { native: this.native, kernels: this.k, alloc: (bytes: number, what: string) => this.mem.alloc(bytes, what), release: (p: DevicePtr) => this.mem.release(p) };
    this.peerAr = await PeerAllReduce.connect(host, { rank: comm.rank, ranks: comm.size, device: this.deviceOrdinal, exchange });
    return this.peerAr;
  }

  /** The custom all-reduce once connected (its `off`, `maxBytes`, `calls`), else null. */
  get peerAllReduce(): PeerAllReduce | null {
    return this.peerAr;
  }

  /**
   * [rows, cols] on each rank → [rows, cols·ranks], rank-major column blocks: an all-gather into
   * [ranks, rows, cols], then a row gather that interleaves it into [rows, ranks, cols].
   */
  allGatherColumns(x: Tensor): CudaTensor {
    this.checkNothingPushed("allGatherColumns");
    const xt = this.tensor(x);
    const comm = this.communicator("allGatherColumns");
    const [n, cols] = rows(xt, "allGatherColumns");
    const size = comm.size;
    if (size === 1) return xt;
    const all = this.stepTensor([size * n, cols], xt.dtype);
    comm.allGather(xt.ptr, all.ptr, xt.numel, xt.dtype);
    const order = new Int32Array(n * size);
    for (let i = 0; i < n; i++) for (let r = 0; r < size; r++) order[i * size + r] = r * n + i;
    const out = this.gatherRows(all, order);
    return new CudaTensor([n, cols * size], out.ptr, out.dtype, out.region, out.epoch);
  }

  gatherRows(x: Tensor, rowIds: Int32Array): CudaTensor {
    const xt = this.tensor(x);
    const [n, d] = rows(xt, "gatherRows");
    for (const r of rowIds) if (r < 0 || r >= n) throw new Error(`gatherRows: row ${r} outside [0, ${n})`);
    // Every row in order (decode: each row is a sequence's last token): the tensor itself.
    if (rowIds.length === n && rowIds.every((r, i) => r === i)) return xt;
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
    // Each pool gets one spare slot past the caller's: padding rows of CUDA-graph steps use it.
    this.dropGraphs();
    this.kvLayers = [...layers];
    this.padSlot = { full: sizes.full, swa: sizes.swa };
    for (const [i, l] of layers.entries()) {
      const slots = (l.pool === "full" ? sizes.full : sizes.swa) + 1;
      const k = this.mem.alloc(slots * width, `layer ${i}'s K pool (${slots} slots)`);
      const v = this.mem.alloc(slots * width, `layer ${i}'s V pool (${slots} slots)`);
      // NaN in test mode (a read of a slot nobody wrote shows), zeros otherwise.
      this.native.memset(k, this.poison ? 0xff : 0, slots * width, 1);
      this.native.memset(v, this.poison ? 0xff : 0, slots * width, 1);
      this.kv.push({ k, v, slots });
    }
    for (const t of this.deviceTables.values()) this.mem.release(t);
    this.deviceTables.clear();
    const pools = [...new Set(layers.map((l) => l.pool))];
    this.padRow = sizes.rows;
    this.tables = new SlotTables({ ...sizes, rows: sizes.rows + 1 }, pools);
    for (const pool of pools) {
      const entries = (sizes.rows + 1) * sizes.context;
      const t = this.mem.alloc(entries * 4, `the ${pool} pool's slot table (${sizes.rows + 1} rows × ${sizes.context})`);
      this.native.memset(t, this.padSlot[pool], entries, 4);
      this.deviceTables.set(pool, t);
    }
  }

  slotTableBytes(rows: number, context: number, pools: number): number {
    return pools * (rows + 1) * context * 4;
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
    const qt = this.as(this.tensor(q, true), this.t);
    const kt = this.as(this.tensor(k, true), this.t);
    const vt = this.as(this.tensor(v, true), this.t);
    const n = batch.ids.length;
    if (qt.numel !== n * hq * dim || kt.numel !== n * hkv * dim || vt.numel !== n * hkv * dim) {
      throw new Error(`attention: q [${qt.shape}], k [${kt.shape}], v [${vt.shape}] do not fit ${n} rows of ${hq}/${hkv} heads × ${dim}`);
    }
    const meta = this.stepMeta(batch, spec, cache.slots);
    const flags = (spec.rope ? PREP_ROPE : 0) | (spec.qkNorm ? PREP_QK_NORM : 0) | (spec.temperatureTuning ? PREP_TEMPERATURE : 0);
    const qRot = this.stepTensor([n, hq * dim], this.t);
    const invFreq = this.invFreq;
    // One warp per head (q, k and v heads of the row): at decode a row is all there is, and
    // four warps walking 14+ heads serially were latency-bound (9 µs per layer in an ncu profile).
    this.k.launch(`attn_prep_${this.t}`, [n], [Math.min(1024, 32 * (hq + 2 * hkv))], (a) =>
      a.ptr(qt.ptr).ptr(kt.ptr).ptr(vt.ptr).ptr(qRot.ptr).ptr(cache.k).ptr(cache.v).ptr(meta.positions).ptr(meta.rowSlot).ptr(invFreq)
        .i32(hq).i32(hkv).i32(dim).i32(qt.rowStride || hq * dim).i32(kt.rowStride || hkv * dim).i32(vt.rowStride || hkv * dim)
        .i32(flags).f32(p.eps).f32(p.floorScale).f32(p.attnScale),
    );
    const out = this.stepTensor([n, hq * dim], this.t);
    if (this.fa && this.t === "bf16" && faUnsupported(dim, hq, hkv) === null) {
      this.fa.run(meta, meta.seqs, { q: qRot.ptr, kPool: cache.k, vPool: cache.v, slotTable: meta.slotTable, out: out.ptr, rows: n, hq, hkv, dim, chunk: spec.chunkSize });
      this.attentionKernel = "fa3";
      return out;
    }
    this.k.launch(`attention_${this.t}`, [n, hq], [128], (a) =>
      a.ptr(qRot.ptr).ptr(cache.k).ptr(cache.v).ptr(meta.slotTable).ptr(meta.rowSlotBase).ptr(meta.rowPos).ptr(out.ptr)
        .i32(hq).i32(hkv).i32(dim).i32(spec.chunkSize).f32(1 / Math.sqrt(dim)),
    );
    this.attentionKernel = "cuda";
    return out;
  }

  /**
   * The step's attention metadata for one pool, built and uploaded once per (step, pool): per
   * row its RoPE position, mask position, new-token slot and where its sequence's row starts in
   * the pool's slot table. The first call of a step also appends the step's new slots to the
   * tables (appendSlots). Every slot a kernel will touch is checked on the host (the tables'
   * entries when appended, the new tokens' and the live window's here), so a bad slot is an
   * error message and never an out-of-bounds device access.
   */
  private stepMeta(batch: StepBatch, spec: AttentionSpec, poolSlots: number): StepMeta {
    const tables = this.tables;
    const slotTable = this.deviceTables.get(spec.pool);
    if (!tables || slotTable === undefined) throw new Error(`attention: no ${spec.pool} slot table (allocKv first)`);
    if (this.metaBatch !== batch || this.metaStep !== this.step) {
      this.meta.clear();
      this.metaBatch = batch;
      this.metaStep = this.step;
      this.appendSlots(batch);
    }
    let m = this.meta.get(spec.pool);
    if (m?.checked.has(spec.chunkSize)) return m; // every layer after the pool's first of this chunk size
    const n = batch.ids.length;
    const context = tables.sizes.context;
    const padSlots = Int32Array.of(this.padSlot[spec.pool]); // the padding row's one position
    const slotsOf = (row: number) => (row === this.padRow ? padSlots : tables.slots(spec.pool, row));
    if (!m) {
      if (batch.positions.length !== n) throw new Error(`attention: ${batch.positions.length} positions for ${n} tokens`);
      const host = new Int32Array(4 * n);
      const seqs: FaSeq[] = [];
      host.set(batch.positions, 0);
      const rowPos = host.subarray(n, 2 * n).fill(-1);
      const rowSlotBase = host.subarray(2 * n, 3 * n);
      const rowSlot = host.subarray(3 * n, 4 * n);
      // Per sequence, copies, fills and native searches, not a loop per row (util/int_arrays.ts):
      // the tables hold only slots inside the pool or −1 (gone SWA KV; checked when appended),
      // so a slot a kernel will read is valid unless it is −1.
      let end = 0; // sequences' row ranges, in order of their first row, may not overlap
      for (const s of [...batch.seqs].sort((a, b) => a.qStart - b.qStart)) {
        if (s.qLen > 0 && s.qStart < end) throw new Error(`attention: row ${s.qStart} belongs to two sequences`);
        end = Math.max(end, s.qStart + s.qLen);
      }
      for (const s of batch.seqs) {
        if (s.qLen > s.kvLen || s.qStart < 0 || s.qStart + s.qLen > n) throw new Error(`attention: sequence rows [${s.qStart}, ${s.qStart + s.qLen}) do not fit the step`);
        const slots = slotsOf(s.row);
        if (slots.length < s.kvLen) throw new Error(`attention: a sequence of ${s.kvLen} tokens has only ${slots.length} ${spec.pool} slots`);
        const first = s.kvLen - s.qLen;
        const fresh = slots.subarray(first, s.kvLen);
        const gone = fresh.indexOf(-1);
        if (gone >= 0) throw new Error(`attention: no valid ${spec.pool} KV slot for position ${first + gone} (slot -1, pool of ${poolSlots})`);
        rowPos.set(ramp(first, s.kvLen), s.qStart);
        rowSlotBase.fill(s.row * context, s.qStart, s.qStart + s.qLen);
        rowSlot.set(fresh, s.qStart);
        seqs.push({ qStart: s.qStart, qLen: s.qLen, kvLen: s.kvLen, slotBase: s.row * context });
      }
      const missing = rowPos.indexOf(-1);
      if (missing >= 0) throw new Error(`attention: row ${missing} belongs to no sequence`);
      const dev = this.uploadMeta(spec.pool, host); // every layer of the step reads it
      const at = (i: number) => dev + BigInt(i * 4);
      m = { positions: at(0), rowPos: at(n), rowSlotBase: at(2 * n), rowSlot: at(3 * n), slotTable, checked: new Set(), seqs };
      this.meta.set(spec.pool, m);
    }
    if (!m.checked.has(spec.chunkSize) && spec.chunkSize > 0) {
      // The keys read are [lo(p), p] for every query p; their union is [lo(first), kvLen). A
      // global layer's keys are every position, each checked when its slot was appended.
      for (const s of batch.seqs) {
        if (s.qLen === 0) continue;
        const slots = slotsOf(s.row);
        const first = s.kvLen - s.qLen;
        const lo = first - (first % spec.chunkSize);
        const gone = slots.subarray(lo, s.kvLen).indexOf(-1);
        if (gone >= 0) throw new Error(`attention: KV for position ${lo + gone} is gone (${spec.pool} slot -1)`);
      }
    }
    m.checked.add(spec.chunkSize);
    return m;
  }

  /** Appends the step's new slots to the host tables (validated) and copies them to the device tables. */
  private appendSlots(batch: StepBatch): void {
    const appends = this.tables!.apply(batch, this.padRow);
    for (const [pool, table] of this.deviceTables) {
      const { segs, packed } = appends[pool];
      const runs = segs.length / 3;
      if (runs === 0) continue;
      // One upload: the runs, then their slots (a graph step's: with its other inputs, into its fixed block).
      const fixed = this.graph?.appends.get(pool);
      const gathered = this.stepUploads !== null && fixed !== undefined && packed.length <= this.graphAppendInts();
      const buf = gathered ? fixed : this.appendStaging(packed.length);
      this.put(buf, packed);
      let longest = 0;
      for (let k = 0; k < runs; k++) longest = Math.max(longest, segs[3 * k + 1]);
      const write = () =>
        this.k.launch("slot_table_write", [runs, Math.min(65535, Math.ceil(longest / 256))], [256], (a) =>
          a.ptr(table).ptr(buf).ptr(buf + BigInt(segs.length * 4)).i32(this.padSlot[pool]),
        );
      if (gathered) this.stepUploads!.after.push(write);
      else write();
    }
  }

  /** The persistent slot-table staging buffer, grown to hold `ints`. */
  private appendStaging(ints: number): DevicePtr {
    if (!this.appendBuf || this.appendBuf.ints < ints) {
      if (this.appendBuf) this.mem.release(this.appendBuf.ptr);
      const size = Math.max(ints, 2 * (this.appendBuf?.ints ?? 0), 1 << 16);
      this.appendBuf = { ptr: this.mem.alloc(size * 4, "slot-table staging"), ints: size };
    }
    return this.appendBuf.ptr;
  }

  // ---- MoE ----

  /**
   * Top-1 sigmoid routing on the expert input plus the shared expert (spec §1.6): router GEMM →
   * route kernel → [side stream: shared expert] → (host) counting sort by expert → gather + scale
   * → per-expert gate_up GEMMs over contiguous rows → SiLU-mul → per-expert down GEMMs, half the
   * experts on each stream → shared + routed.
   */
  moe(x: Tensor, w: MoeWeights, opts: ReducedOutput = {}): CudaTensor {
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
    const router = this.tensor(w.router);
    if (router.shape[0] !== e) throw new Error(`moe: the router has ${router.shape[0]} rows for ${e} experts`);
    if (n > 0 && n <= this.moeDeviceMax && !gu.transposed && !dn.transposed) {
      const out = this.moeDevice(xt, w, router, gu, dn, first, local, opts);
      if (out) return out;
    }

    // The host sorts the rows by expert: not possible inside a CUDA-graph capture.
    if (this.graph?.capturing) throw new Error("cuda backend: the MoE host path (more rows than the device MoE kernels take, or transposed experts) inside a CUDA-graph capture");
    const ev = (this.moeEvents ??= { routed: this.native.eventCreate(), gathered: this.native.eventCreate() });
    const logits = this.linear(xt, w.router);
    const expertDev = this.mem.stepAlloc(n * 4).ptr;
    const scoreDev = this.mem.stepAlloc(n * 4).ptr;
    this.k.launch(`moe_route_${this.t}`, [Math.ceil(n / 128)], [128], (a) => a.ptr(logits.ptr).ptr(expertDev).ptr(scoreDev).i32(n).i32(e));
    this.native.eventRecord(ev.routed);
    // The shared expert needs no routing: it runs on the side stream while the host sorts the
    // rows and the routed experts run (queued after the routing, so the router never waits for it).
    const shared = this.onSideStream(ev.routed, () => this.linear(this.siluMul(this.linear(xt, w.sharedGateUp)), w.sharedDown));
    const expert = new Int32Array(n);
    this.native.dtohAfter(expert, expertDev, ev.routed); // the one host sync of the layer

    // Counting sort: rows of expert j occupy [offset[j], offset[j] + count[j]) in ascending row order.
    const count = new Int32Array(e);
    for (let r = 0; r < n; r++) count[expert[r]]++; // indexed, not for-of: cheaper while V8 interprets it
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
    this.k.launch(`moe_gather_${this.t}`, [n], [this.rowThreads(d)], (a) => a.ptr(xt.ptr).ptr(permDev).ptr(scoreDev).ptr(xin.ptr).i32(d));

    // This rank's experts own the sorted rows [lo, hi); the other rows get no routed part here.
    const es = BYTES[this.t];
    const lo = offset[first];
    const hi = offset[first + local];
    const h = this.stepTensor([n, twoF], this.t);
    const act = this.stepTensor([n, f], this.t);
    const y = this.stepTensor([n, d], this.t);
    this.native.memset(y.ptr, 0, lo * d * es, 1);
    this.native.memset(y.ptr + BigInt(hi * d * es), 0, (n - hi) * d * es, 1);
    // Experts js[a, b) (in expert order, so their rows are one range): gate_up GEMMs, one SiLU-mul
    // over the range, down GEMMs.
    const js = Array.from({ length: local }, (_, i) => first + i).filter((j) => count[j] > 0);
    const runExperts = (a: number, b: number) => {
      if (a >= b) return;
      for (const j of js.slice(a, b)) this.gemm(h.ptr + BigInt(offset[j] * twoF * es), this.t, xin.ptr + BigInt(offset[j] * d * es), count[j], d, gu, (j - first) * twoF * d, twoF);
      const r0 = offset[js[a]];
      const r1 = offset[js[b - 1]] + count[js[b - 1]];
      this.launchSiluMul(h.ptr + BigInt(r0 * twoF * es), act.ptr + BigInt(r0 * f * es), r1 - r0, f);
      for (const j of js.slice(a, b)) this.gemm(y.ptr + BigInt(offset[j] * d * es), this.t, act.ptr + BigInt(offset[j] * f * es), count[j], f, dn, (j - first) * d * f, d);
    };
    // Half the experts on each stream: one expert's GEMMs (~128 rows at 2048 tokens) do not fill
    // the GPU alone (~2 TB/s in gate_up), so two streams overlap one's ramp and tail with the
    // other's weight reads (2048-token prefill on an H100: 13.40 → 13.18 ms, docs/PERF.md).
    const mid = Math.ceil(js.length / 2);
    this.native.eventRecord(ev.gathered);
    runExperts(0, mid);
    this.onSideStream(ev.gathered, () => runExperts(mid, js.length));
    const out = this.stepTensor([n, d], this.t);
    this.joinSideStream(); // the side stream's shared expert and experts
    // The combine runs with the next add + RMSNorm where that follows (addRmsNorm), else at first use.
    out.pendingCombine = { shared: shared.ptr, routed: y.ptr, inv: invDev };
    return out;
  }

  /**
   * Queues `run` on the side stream after `after` (an event recorded on the main stream). The main
   * stream must joinSideStream() before it reads what `run` wrote; a step that begins joins it
   * too, so work left behind by an op that threw never overlaps the next step's use of the arena.
   * Not inside a CUDA-graph capture (the host paths that use it are not captured either).
   */
  private onSideStream<R>(after: DevicePtr, run: () => R): R {
    if (this.graph?.capturing) throw new Error("cuda backend: side-stream work inside a CUDA-graph capture");
    this.sideWorkspace ??= this.mem.alloc(WORKSPACE_BYTES, "the side stream's cuBLASLt workspace");
    this.sideDone ??= this.native.eventCreate();
    this.native.useSideStream(true);
    this.onSide = true;
    try {
      this.native.streamWaitEvent(after);
      return run();
    } finally {
      this.native.eventRecord(this.sideDone);
      this.sidePending = true;
      this.onSide = false;
      this.native.useSideStream(false);
    }
  }

  /** Work queued on the main stream from now on waits for everything queued on the side stream. */
  private joinSideStream(): void {
    if (!this.sidePending) return;
    this.native.streamWaitEvent(this.sideDone!);
    this.sidePending = false;
  }

  /**
   * The MoE layer for few tokens, all on the device (moe_decode.cu): router GEMM → route + sort
   * (one block) → gather·score → gate_up with SiLU fused → down with the shared + routed combine
   * fused. The shared expert runs inside the two expert kernels when n ≤ 8 (one pass over its
   * weights), else through cuBLASLt (the down kernel then adds into its output). Null when the
   * shapes do not suit the kernels (16-byte rows).
   */
  private moeDevice(xt: CudaTensor, w: MoeWeights, router: CudaTensor, gu: CudaTensor, dn: CudaTensor, first: number, local: number, opts: ReducedOutput): CudaTensor | null {
    const [n, d] = xt.shape;
    const e = w.numExperts;
    const f = gu.shape[1] / 2;
    const sgu = this.tensor(w.sharedGateUp);
    const sdn = this.tensor(w.sharedDown);
    const fs = sgu.shape[0] / 2;
    const epv = 16 / BYTES[this.t];
    if (sgu.transposed || sdn.transposed || sgu.shape[1] !== d || sdn.shape[0] !== d || sdn.shape[1] !== fs) return null;
    if (d % epv !== 0 || f % epv !== 0 || fs % epv !== 0 || !Number.isInteger(fs)) return null;

    // The routing (moe_down reads perm and offsets): sorted row → token, each expert's first row.
    const perm = this.mem.stepAlloc(n * 4).ptr;
    const offsets = this.mem.stepAlloc((local + 1) * 4).ptr;
    const withShared = n <= MOE_SHARED_IN_KERNEL_MAX;
    // Without the shared expert in the kernels, `out` starts as its output and the down kernel adds into it.
    const out = withShared ? this.stepTensor([n, d], this.t) : this.linear(this.siluMul(this.linear(xt, w.sharedGateUp)), w.sharedDown);
    const act = this.stepTensor([n, f], this.t);
    const actShared = withShared ? this.stepTensor([n, fs], this.t) : act;
    const nt = tokensPerPass(n);
    const cols = Math.max(f, withShared ? fs : 0);
    // Many tokens (no shared group): one expert per grid row instead of each block walking them all.
    const ys = withShared ? 1 : local;
    const routed = withShared && local <= MOE_ROUTED_MAX_LOCAL;
    // The routed kernel's grid is two blocks a slab (a shared one, a routed one); it takes the
    // fewest rows a block that keep it one wave, where it can hold the router.
    const wave = MOE_ROUTED_BLOCKS_PER_SM * this.info.smCount;
    const rbUp = (routed ? [1, 2, 4, 8].find((rb) => 2 * Math.ceil(cols / rb) <= wave) : undefined) ?? this.rowsPerBlock(cols);
    const upBlocks = (routed ? 2 : 1) * Math.ceil(cols / rbUp);
    // The router GEMV inside the routed kernel (its first e routed blocks, one router row each)
    // where the grid is one wave: on 4 × H200 a tp-4 rank's 512 blocks ran the layer ~3 µs faster
    // than with the router launch, while one GPU's 1024 (two waves) ran ~7 µs slower (2026-11-27,
    // tp4-ab-…-8-router-in-gate-up.jsonl).
    const routerInKernel = routed && e <= upBlocks / 2 && upBlocks <= wave && !router.transposed;
    const routerDone = routerInKernel ? this.moeRouterDone : 0n;
    // One token: moe_down runs its shared pass as soon as gate_up's shared half is done (a count
    // per MoE call of the step), while the routed half, which waits for the router, still runs.
    const call = this.moeCall++;
    const sharedDone = routed && n === 1 && call < MOE_CALLS_MAX ? this.moeSharedDone + BigInt(call * 8) : 0n;
    const sharedBlocks = sharedDone ? upBlocks / 2 : 0;
    if (routed) {
      // Decode: routing and the scaled gather (and maybe the router) happen inside the gate_up kernel.
      const logits = routerInKernel ? this.stepTensor([n, e], this.t) : this.linear(xt, router);
      this.k.launch(`moe_gate_up_routed${nt}_${this.t}`, [upBlocks], [GEMV_THREADS], (a) =>
        a.ptr(routerInKernel ? router.ptr : 0n).ptr(routerDone).ptr(logits.ptr).i32(e).i32(first).ptr(xt.ptr).ptr(sgu.ptr).ptr(gu.ptr).ptr(perm).ptr(offsets)
          .ptr(actShared.ptr).ptr(act.ptr).i32(n).i32(d).i32(fs).i32(f).i32(local).i32(rbUp).ptr(sharedDone),
      );
    } else {
      const logits = this.linear(xt, router);
      const score = this.mem.stepAlloc(n * 4).ptr; // each token's routing score, for the gather
      this.k.launch(`moe_route_sort_${this.t}`, [1], [256], (a) => a.ptr(logits.ptr).i32(n).i32(e).i32(first).i32(local).ptr(perm).ptr(score).ptr(offsets));
      const xin = this.stepTensor([n, d], this.t);
      this.k.launch(`moe_gather_dev_${this.t}`, [n], [this.rowThreads(d)], (a) => a.ptr(xt.ptr).ptr(perm).ptr(score).ptr(offsets).i32(local).ptr(xin.ptr).i32(d));
      this.k.launch(`moe_gate_up${nt}_${this.t}`, [Math.ceil(cols / rbUp), ys], [GEMV_THREADS], (a) =>
        a.ptr(xt.ptr).ptr(xin.ptr).ptr(sgu.ptr).ptr(gu.ptr).ptr(offsets).ptr(actShared.ptr).ptr(act.ptr)
          .i32(n).i32(d).i32(fs).i32(f).i32(local).i32(withShared ? 1 : 0).i32(rbUp),
      );
    }
    const rbDown = this.rowsPerBlock(d);
    const rbPush = this.pushRowsPerBlock(d);
    if (opts.allReduceNext && n === 1 && withShared && this.t === "bf16" && this.peerAr?.canPush(d, rbPush)) {
      // One token under tensor parallelism: the down kernel pushes its rows to every rank as they finish.
      this.k.launch("moe_down_push1_bf16", [d / rbPush], [GEMV_THREADS], (a) =>
        this.peerAr!.pushTarget(
          a.ptr(actShared.ptr).ptr(act.ptr).ptr(sdn.ptr).ptr(dn.ptr).ptr(offsets).ptr(perm).ptr(out.ptr)
            .i32(d).i32(fs).i32(f).i32(local).i32(rbPush).ptr(routerDone).ptr(sharedDone).i32(sharedBlocks),
        ),
      );
      this.pushed(out.ptr);
      return out;
    }
    this.k.launch(`moe_down${nt}_${this.t}`, [Math.ceil(d / rbDown), ys], [GEMV_THREADS], (a) =>
      a.ptr(actShared.ptr).ptr(act.ptr).ptr(sdn.ptr).ptr(dn.ptr).ptr(offsets).ptr(perm).ptr(out.ptr)
        .i32(n).i32(d).i32(fs).i32(f).i32(local).i32(withShared ? 1 : 0).i32(rbDown).ptr(routerDone) // it zeroes the count
        .ptr(sharedDone).i32(sharedBlocks),
    );
    return out;
  }

  // ---- CUDA graphs ----

  /** Device time of the last graph replay in ms (waits for it); null before any. */
  lastReplayMs(): number | null {
    return this.graphEvents && this.graphStats.replays > 0 ? this.native.eventElapsed(...this.graphEvents) : null;
  }

  /**
   * A decode step through a CUDA graph (Backend.decodeGraphLogits). It qualifies when every
   * sequence adds one token, rows in sequence order, and every row wants logits. The batch is
   * padded to the next captured size (padding rows: token 0 at position 0 in each pool's spare
   * slot), the step's inputs (token ids — or, with `idsFrom`, the previous step's picks copied on
   * the device — attention metadata, the fa kernels' tile tables) go to fixed addresses, the first
   * step of a size captures `run` (the model's forward up to its logits) and every later one
   * replays it. Returns this rank's [rows, cols] logits of the real rows on the device (valid until
   * the next step), or null (graphs off, or the step does not qualify): the caller then runs the
   * step directly. One model per `key`. Under tensor parallelism every rank calls it in step (same
   * batches, same order): the graphs hold the ranks' NCCL all-reduces, so every rank must capture,
   * and then replay, the same sizes together.
   *
   * What a graph cannot see: host-side choices inside ops. Every op in the captured region must
   * take its per-step inputs from device memory (what is prepared here) and choose kernels from
   * shapes alone; a host upload during capture is an error, and turns graphs off.
   */
  decodeGraphLogits(key: object, batch: StepBatch, run: (b: StepBatch) => Tensor, idsFrom?: PendingPicks): CudaTensor | null {
    if (this.graphSizes.length === 0 || this.graphStats.off !== "" || !this.params || this.kvLayers.length === 0) return null;
    const n = batch.ids.length;
    const size = this.graphSizes.find((s) => s >= n);
    if (size === undefined || n === 0 || batch.seqs.length !== n || batch.logitRows.length !== n || batch.positions.length !== n) return null;
    for (let i = 0; i < n; i++) {
      const s = batch.seqs[i];
      if (s.qStart !== i || s.qLen !== 1 || batch.logitRows[i] !== i) return null;
    }
    if (idsFrom && !(idsFrom instanceof DevicePicks && idsFrom.current && idsFrom.rows === n)) {
      throw new Error("cuda backend: a step's input ids must be the latest picks of this backend, one per row");
    }
    const padded = this.padBatch(batch, size);

    this.beginStep();
    const ids = this.mem.stepAlloc(this.graphSizes[this.graphSizes.length - 1] * 4, true).ptr;
    const meta = new Map<string, DevicePtr>();
    const appends = new Map<string, DevicePtr>();
    for (const pool of ["full", "swa"]) {
      // Attention metadata, 4 ints per row (the slot lists are in the device tables), and the
      // slot-table appends, in fixed blocks per pool: the attention tiles after them must land at
      // the address the graph was captured with.
      if (!this.kvLayers.some((l) => l.pool === pool)) continue;
      meta.set(pool, this.mem.stepAlloc(this.graphMetaInts() * 4, true).ptr);
      appends.set(pool, this.mem.stepAlloc(this.graphAppendInts() * 4, true).ptr);
    }
    let entry: GraphEntry | undefined;
    this.graph = { ids, meta, appends, capturing: false, vocab: 0 };
    // The step's inputs (ids, metadata, slot-table appends, attention tiles) go up as one copy.
    this.stepUploads = { bytes: new Uint8Array(0), lo: Infinity, hi: 0, after: [] };
    try {
      // Padding rows keep token 0; chained steps copy the previous picks in after the upload.
      if (idsFrom) {
        if (size > n) this.put(ids + BigInt(n * 4), new Int32Array(size - n));
      } else this.put(ids, padded.ids);
      for (const [i, spec] of this.kvLayers.entries()) this.stepMeta(padded, spec, this.kv[i].slots);
      // One graph per batch size and per attention split counts (FlashAttention.splitsOf): the
      // counts grow with the context, and a graph replays the ones it was captured with.
      const graphKey = `${size}/${this.prepareAttention(size).join(",")}`;
      this.flushStepUploads(); // before a capture: stream operations during it would be captured
      // The previous step's picks, in step order on the device.
      if (idsFrom) this.native.dtod(ids, (idsFrom as DevicePicks).slot.ptr, n * 4);
      entry = this.graphs.get(key)?.get(graphKey);
      if (entry && !idsFrom) for (const id of batch.ids) if (id < 0 || id >= entry.vocab) throw new Error(`token id ${id} is outside the vocabulary [0, ${entry.vocab})`);
      entry ??= this.captureStep(key, graphKey, size, padded, run) ?? undefined;
    } finally {
      this.flushStepUploads(); // what was asked for before an error still reaches the device (the host tables have it)
      this.graph = null;
    }
    if (!entry) return null;
    const [t0, t1] = (this.graphEvents ??= [this.native.eventCreate(), this.native.eventCreate()]);
    this.native.eventRecord(t0);
    this.native.graphLaunch!(entry.exec);
    this.native.eventRecord(t1);
    this.graphStats.replays++;
    this.mem.restore(entry.mark); // what comes after (argmax, downloads) allocates past the graph's memory
    return new CudaTensor([n, entry.cols], entry.ptr, entry.dtype, PERSISTENT, 0);
  }

  /** Ints of a graph step's attention metadata per pool: 4 per row of the largest captured size. */
  private graphMetaInts(): number {
    return 4 * this.graphSizes[this.graphSizes.length - 1];
  }

  /** Ints of a graph step's slot-table appends per pool (runs of 3 ints, then slots): room for a few runs a row; more goes the ungathered way. */
  private graphAppendInts(): number {
    return 16 * this.graphSizes[this.graphSizes.length - 1] + 64;
  }

  /** The batch with padding rows up to `size` (each a one-token sequence on the padding row, in the spare slots). */
  private padBatch(b: StepBatch, size: number): StepBatch {
    const n = b.ids.length;
    if (size === n) return b;
    const ids = new Int32Array(size);
    ids.set(b.ids);
    const positions = new Int32Array(size);
    positions.set(b.positions);
    const full = Int32Array.of(this.padSlot.full);
    const swa = Int32Array.of(this.padSlot.swa);
    const seqs = [...b.seqs];
    for (let i = n; i < size; i++) seqs.push({ qStart: i, qLen: 1, kvLen: 1, row: this.padRow, slotsFrom: 0, fullSlots: full, swaSlots: swa });
    return { ...b, ids, positions, seqs, logitRows: Int32Array.from({ length: size }, (_, i) => i) };
  }

  /**
   * The fa kernels' per-step tile tables: their host side runs now with launches skipped, so the
   * tables are uploaded (at the same address each step) before the capture or replay. Returns the
   * decode split count of each (pool, chunk size) the layers use, in layer order: what a captured
   * graph bakes in.
   */
  private prepareAttention(rows: number): number[] {
    const p = this.params!;
    if (!this.fa || this.t !== "bf16" || faUnsupported(p.headDim, p.numHeads, p.numKvHeads) !== null) return [];
    const groups = new Map<string, { m: StepMeta; chunk: number }>();
    for (const l of this.kvLayers) {
      const m = this.meta.get(l.pool);
      if (m) groups.set(`${l.pool}/${l.chunkSize}`, { m, chunk: l.chunkSize });
    }
    this.k.dry = true;
    try {
      for (const { m, chunk } of groups.values()) {
        this.fa.run(m, m.seqs, { q: 0n, kPool: 0n, vPool: 0n, slotTable: m.slotTable, out: 0n, rows, hq: p.numHeads, hkv: p.numKvHeads, dim: p.headDim, chunk });
      }
    } finally {
      this.k.dry = false;
    }
    return [...groups.values()].map(({ m, chunk }) => this.fa!.splitsOf(m, chunk));
  }

  /** Attention metadata for a step: a step upload, or in a graph step the pool's reserved block. */
  private uploadMeta(pool: string, host: Int32Array): DevicePtr {
    const fixed = this.graph?.meta.get(pool);
    if (fixed === undefined) return this.uploadInts(host, true);
    if (this.graph!.capturing) throw new Error("cuda backend: attention metadata built inside a CUDA-graph capture");
    if (host.length > this.graphMetaInts()) throw new Error(`cuda backend: graph metadata of ${host.length} ints outgrew its ${this.graphMetaInts()}`);
    this.put(fixed, host);
    return fixed;
  }

  /** Records `run` on the stream as a graph; null (graphs then off, with the reason) when that fails. */
  private captureStep(key: object, graphKey: string, size: number, padded: StepBatch, run: (b: StepBatch) => Tensor): GraphEntry | null {
    const g = this.graph!;
    let out: CudaTensor | null = null;
    let exec: DevicePtr | null = null;
    let error: unknown = null;
    try {
      this.native.graphBeginCapture!();
    } catch (e) {
      return this.graphsOff(e);
    }
    g.capturing = true;
    this.k.setCapturing(true);
    try {
      out = this.tensor(run(padded));
    } catch (e) {
      error = e;
    }
    this.k.setCapturing(false); // before the capture ends: a kernel-stamp profile closes inside it
    try {
      exec = this.native.graphEndCapture!();
    } catch (e) {
      error ??= e;
    } finally {
      g.capturing = false;
    }
    if (error === null && (out === null || out.shape.length !== 2 || out.shape[0] !== size)) error = new Error(`the captured step returned [${out?.shape}], not [${size}, vocab] logits`);
    if (error !== null || out === null || exec === null) {
      if (exec !== null) this.native.graphDestroy!(exec);
      return this.graphsOff(error);
    }
    const entry: GraphEntry = { exec, ptr: out.ptr, cols: out.shape[1], dtype: out.dtype, vocab: g.vocab, mark: this.mem.mark() };
    let sizes = this.graphs.get(key);
    if (!sizes) this.graphs.set(key, (sizes = new Map()));
    sizes.set(graphKey, entry);
    this.graphStats.captures++;
    return entry;
  }

  private graphsOff(e: unknown): null {
    this.graphStats.off = (e as Error)?.message ?? String(e);
    console.warn(`tsglang cuda: CUDA graphs turned off, decode steps run directly: ${this.graphStats.off}`);
    return null;
  }

  /** Destroys every captured graph (KV pools moved, metadata reservation grew, shutdown). */
  private dropGraphs(): void {
    for (const sizes of this.graphs.values()) for (const e of sizes.values()) this.native.graphDestroy?.(e.exec);
    this.graphs.clear();
  }
}

/** Tokens per pass of the GEMV kernels for a batch of n: n rounded up to 1, 2, 4 or 8. */
function tokensPerPass(n: number): number {
  return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8;
}

/** The largest power of two ≤ 256 dividing a device address (what blaslt.cc keys plans by). */
function alignment(p: DevicePtr): number {
  let a = 256;
  while (a > 1 && p % BigInt(a) !== 0n) a >>= 1;
  return a;
}

/** Do the tensors lie back to back in memory, in this order? */
function contiguous(ts: CudaTensor[]): boolean {
  return ts.every((t, i) => i === 0 || t.ptr === ts[i - 1].ptr + BigInt(ts[i - 1].numel * BYTES[t.dtype]));
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
 * The backend for --device cuda. Attention: `cuda` is the portable reference kernel; `fa3` the
 * tiled tensor-core kernels (attention.ts; mma.sync, so sm_80+); `auto` gives fa3 on Hopper
 * (sm_90) and cuda elsewhere.
 */
export async function createCudaBackendChoice(attention: AttentionBackend): Promise<BackendChoice> {
  if (attention === "cpu") throw new Error("--attention-backend cpu needs --device cpu");
  const native = loadNative();
  native.openDriver(driverCandidates());
  const info = native.init(0);
  const kind = attention === "auto" ? (info.ccMajor === 9 ? "fa3" : "cuda") : attention;
  if (kind === "fa3" && info.ccMajor < 8) throw new Error(`--attention-backend fa3 needs an sm_80+ GPU (tensor-core mma.sync); ${info.name} is sm_${info.ccMajor}${info.ccMinor}: use cuda`);
  const backend = new CudaBackend({ attention: kind });
  const i = backend.info;
  const what = kind === "fa3" ? "fa3 tiled tensor-core attention" : "reference attention kernel";
  return { backend, device: "cuda", attention: kind, description: `cuda (bf16, ${i.name}, sm_${i.ccMajor}${i.ccMinor}; ${what})` };
}
