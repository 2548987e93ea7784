// Memory planner: how a Llama 4 model is laid out in GPU memory per tensor-parallel rank, and the
// longest context that fits. Pure functions of the config and the launch settings; no GPU needed.
//
// It follows SGLang's budget (sglang-notes.md §2.5–§2.7, §10) and then counts what SGLang leaves
// out, so that whatever it admits runs without OOM:
//
//   pre      = GPU memory free after the CUDA context and NCCL are up              (§2.5 step 1)
//   f        = --mem-fraction-static, default from SGLang's reserve rule          (§2.6)
//   B        = f·pre − weights      (SGLang's "rest": avail − pre·(1−f))          (§2.5 step 3)
//   B        = req_to_token + decode-graph page tables + full pool + SWA pool     (§2.7: we count
//              the context-sized buffers inside B; SGLang allocates them from the slack and OOMs)
//   (1−f)·pre must still hold the activation/logits/graph reserve (checked, not assumed).
//
// Pools (§2.5 steps 4–6): with the hybrid SWA cache, global layers keep every token in the full
// pool and chunked-local layers keep a window in the SWA pool; cell = B_full·n_full + r·B_swa·n_swa,
// full = floor(avail / cell), swa = floor(full·r). Without it every layer keeps every token.
//
// docs/MEMORY.md has the formula, the figures for Scout/Maverick and where we differ from SGLang.

import type { Llama4Config } from "../model/config.js";
import { SLOT_TABLE_MAX_ENTRIES } from "./slot_tables.js";

const MiB = 2 ** 20;
const GiB = 2 ** 30;

// ---------------------------------------------------------------------------------------------
// GPUs

export interface GpuSpec {
  /** Display name. */
  name: string;
  /** Total memory as nvidia-smi reports it (`memory.total`), in MiB. SGLang's default
   *  mem_fraction_static, chunked-prefill size and graph batch size key on this figure (§2.6, §10). */
  memoryMiB: number;
}

/** The usable memory each card reports (nvidia-smi memory.total, as seen on our machines). */
export const GPUS = {
  h100: { name: "H100 80GB HBM3", memoryMiB: 81559 },
  h200: { name: "H200", memoryMiB: 143771 },
} as const satisfies Record<string, GpuSpec>;

export type GpuName = keyof typeof GPUS;

/** A GPU given by its total memory in bytes (what nvidia-smi would report). */
export function gpuFromBytes(bytes: number): GpuSpec {
  if (!Number.isFinite(bytes) || bytes <= 0) throw new PlanError(`GPU memory must be a positive number of bytes, got ${bytes}`);
  return { name: `${fmtGiB(bytes)} GPU`, memoryMiB: bytes / MiB };
}

// ---------------------------------------------------------------------------------------------
// Constants. Each is a measured or SGLang-derived figure; docs/MEMORY.md lists them.

/** nvidia-smi total minus what cudaMemGetInfo reports as total: 615 MiB measured on an H200
 *  (143771 vs 143156 MiB); PyTorch reports 79.11–79.33 GiB on H100s (≈ 330–560 MiB). Rounded up. */
export const DRIVER_RESERVED_BYTES = 640 * MiB;
/** CUDA context, loaded kernels and the cuBLASLt workspace: PyTorch measured 623 MiB for the
 *  context and 98 MiB more after the first cuBLAS GEMM on an H200. Rounded up. */
export const CUDA_CONTEXT_BYTES = 1 * GiB;
/** NCCL communicator with all-reduce/all-gather buffers, tp > 1: measured 876 MiB (4 ranks, H200).
 *  SGLang's reserve rule budgets (tp/8)·1 GiB for this (§2.6); we take it out of `pre` up front. */
export const NCCL_BYTES = 1.5 * GiB;
/** All-to-all peer buffers per extra expert-parallel peer: measured 1214 MiB for 3 peers. */
export const NCCL_ALLTOALL_PER_PEER_BYTES = 512 * MiB;
/** SGLANG_SWA_EVICTION_INTERVAL: out-of-window SWA slots are freed every 128 decode steps (§2.4). */
export const SWA_EVICTION_INTERVAL = 128;
/** Default cap on the context-sized buffers (req_to_token + graph page tables) when
 *  --max-running-requests is not given: at most this share of B. SGLang has no cap (§2.7, #5755). */
export const CONTEXT_BUFFER_SHARE = 1 / 8;
// The engine's slot tables (req_to_token: [R + 1, L] per pool) are indexed by 32-bit ints in the
// kernels, so (R + 1)·L stays within SLOT_TABLE_MAX_ENTRIES; SGLang indexes with int64 and has no such bound.
export { SLOT_TABLE_MAX_ENTRIES };
/** SGLang's default --swa-full-tokens-ratio (§2.2). */
export const DEFAULT_SWA_FULL_TOKENS_RATIO = 0.8;
/** The ratio 'auto' picks is rounded down to this step so that passing it back reproduces the plan. */
export const RATIO_STEP = 1e-4;
/** SGLang's default --max-prefill-tokens (§10.2). */
export const DEFAULT_MAX_PREFILL_TOKENS = 16384;
/** VocabParallelEmbedding pads the vocabulary to a multiple of 64 before splitting it (§1.7). */
const VOCAB_PADDING = 64;
/** FusedMoE pads the per-rank expert width to a multiple of 128 (§1.7). */
const MOE_WIDTH_PADDING = 128;

export class PlanError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PlanError";
  }
}

// ---------------------------------------------------------------------------------------------
// SGLang defaults that depend on GPU memory (all in MiB of nvidia-smi total, §2.6 and §10)

/** `cuda_graph_max_bs` default (§10.1 table). */
export function defaultCudaGraphMaxBs(memoryMiB: number, tp: number): number {
  const big = tp >= 4;
  if (memoryMiB < 20 * 1024) return 8;
  if (memoryMiB < 35 * 1024) return big ? 80 : 24;
  if (memoryMiB < 60 * 1024) return big ? 160 : 32;
  if (memoryMiB < 160 * 1024) return big ? 512 : 256;
  return 512;
}

/** `chunked_prefill_size` default (§10.2). */
export function defaultChunkedPrefillSize(memoryMiB: number): number {
  if (memoryMiB < 35 * 1024) return 2048;
  if (memoryMiB < 60 * 1024) return 4096;
  if (memoryMiB < 160 * 1024) return 8192;
  return 16384;
}

/**
 * SGLang's default --mem-fraction-static (§2.6, `_handle_gpu_memory_settings`):
 * reserved = 512 + 1.5·max(chunk, 2048) + (tp/8)·1024 + 2·graph_max_bs MiB, at least 10 GiB on
 * cards over 60 GB; f = round((mem − reserved)/mem, 3). With chunked prefill off SGLang uses
 * max_prefill_tokens in place of the chunk.
 */
export function defaultMemFractionStatic(
  memoryMiB: number,
  tp: number,
  chunkedPrefillSize: number,
  cudaGraphMaxBs: number,
  maxPrefillTokens = DEFAULT_MAX_PREFILL_TOKENS,
): number {
  let reserved = 512;
  reserved += 1.5 * Math.max(chunkedPrefillSize > 0 ? chunkedPrefillSize : maxPrefillTokens, 2048);
  reserved += (tp / 8) * 1024;
  reserved += 2 * cudaGraphMaxBs;
  if (memoryMiB > 60 * 1024) reserved = Math.max(reserved, 10 * 1024);
  return Math.round(((memoryMiB - reserved) / memoryMiB) * 1000) / 1000;
}

// ---------------------------------------------------------------------------------------------
// Weights

/** Parameter count of the vision tower + adapter + projector from a HF `vision_config`
 *  (llama4-spec.md §3.3; 871,932,416 for Scout/Maverick). 0 when there is none. */
export function visionParamCount(visionConfig: unknown, textHiddenSize: number): number {
  if (typeof visionConfig !== "object" || visionConfig === null || Array.isArray(visionConfig)) return 0;
  const v = visionConfig as Record<string, unknown>;
  const num = (k: string, d: number): number => {
    const x = v[k];
    if (x === undefined || x === null) return d;
    if (typeof x !== "number" || !Number.isFinite(x) || x < 0) throw new PlanError(`vision_config.${k} must be a non-negative number`);
    return x;
  };
  const h = num("hidden_size", 1408);
  const layers = num("num_hidden_layers", 34);
  const inter = num("intermediate_size", 5632);
  const patch = num("patch_size", 14);
  const image = num("image_size", 336);
  const channels = num("num_channels", 3);
  const projIn = num("projector_input_dim", 4096);
  const projOut = num("projector_output_dim", 4096);
  const visionOut = num("vision_output_dim", 4096);
  const patches = Math.floor(image / patch) ** 2;
  const encoder =
    h * channels * patch * patch + // patch_embedding.linear (no bias)
    h + // class_embedding
    (patches + 1) * h + // positional_embedding_vlm
    4 * h + // layernorm_pre/post weight + bias
    layers * (4 * (h * h + h) + (inter * h + inter) + (h * inter + h) + 4 * h);
  const adapter = projIn * inter + projOut * projOut; // vision_adapter.mlp.fc1, fc2 (no bias)
  const projector = textHiddenSize * visionOut; // multi_modal_projector.linear_1 (no bias)
  return encoder + adapter + projector;
}

export interface WeightsBreakdown {
  /** Parameters held by one rank, by part. */
  embedParams: number;
  lmHeadParams: number;
  attentionParams: number;
  normParams: number;
  routerParams: number;
  routedExpertParams: number;
  sharedExpertParams: number;
  denseMlpParams: number;
  visionParams: number;
  totalParams: number;
  bytes: number;
}

/**
 * Weights one rank holds (§1.7): attention heads split by tp (KV heads replicated when tp > kv
 * heads), routed experts split E/ep × (I / (tp/ep)) with the width padded to 128, shared expert and
 * dense MLP split along their width, vocab-parallel embed and lm_head (vocab padded to 64 and split),
 * router and norms replicated, the vision tower replicated on every rank.
 */
export function weightsPerRank(cfg: Llama4Config, tp: number, ep: number, visionParams: number, bytesPerParam = 2): WeightsBreakdown {
  validateParallel(cfg, tp, ep);
  const H = cfg.hiddenSize;
  const hd = cfg.headDim;
  const qHeads = cfg.numHeads / tp;
  const kvHeads = kvHeadsPerRank(cfg, tp);
  const vocabPerRank = Math.ceil(Math.ceil(cfg.vocabSize / VOCAB_PADDING) * VOCAB_PADDING / tp);
  const moeTp = tp / ep;
  const expertWidth = Math.ceil(cfg.intermediateSize / moeTp / MOE_WIDTH_PADDING) * MOE_WIDTH_PADDING;
  const expertsPerRank = cfg.numExperts / ep;
  const sharedWidth = Math.ceil(cfg.intermediateSize / tp);
  const denseWidth = Math.ceil(cfg.intermediateSizeMlp / tp);

  let attention = 0;
  let norms = H; // final norm
  let router = 0;
  let routed = 0;
  let shared = 0;
  let dense = 0;
  for (const layer of cfg.layers) {
    attention += H * (qHeads + 2 * kvHeads) * hd + qHeads * hd * H; // qkv_proj + o_proj
    norms += 2 * H;
    if (layer.moe) {
      router += cfg.numExperts * H;
      routed += expertsPerRank * 3 * H * expertWidth; // w13 [E/ep, 2·I', H] + w2 [E/ep, H, I']
      shared += 3 * H * sharedWidth;
    } else {
      dense += 3 * H * denseWidth;
    }
  }
  const embed = vocabPerRank * H;
  const lmHead = cfg.tieWordEmbeddings ? 0 : vocabPerRank * H;
  const total = embed + lmHead + attention + norms + router + routed + shared + dense + visionParams;
  return {
    embedParams: embed,
    lmHeadParams: lmHead,
    attentionParams: attention,
    normParams: norms,
    routerParams: router,
    routedExpertParams: routed,
    sharedExpertParams: shared,
    denseMlpParams: dense,
    visionParams,
    totalParams: total,
    bytes: total * bytesPerParam,
  };
}

function kvHeadsPerRank(cfg: Llama4Config, tp: number): number {
  // QKVParallelLinear: KV heads are split when tp ≤ kv heads, replicated (one per rank) above.
  return tp <= cfg.numKvHeads ? cfg.numKvHeads / tp : 1;
}

function validateParallel(cfg: Llama4Config, tp: number, ep: number): void {
  if (!Number.isInteger(tp) || tp < 1) throw new PlanError(`--tp must be a positive integer, got ${tp}`);
  if (!Number.isInteger(ep) || ep < 1) throw new PlanError(`--ep must be a positive integer, got ${ep}`);
  if (cfg.numHeads % tp !== 0) throw new PlanError(`--tp ${tp} does not divide the ${cfg.numHeads} attention heads`);
  if (cfg.numKvHeads % tp !== 0 && tp % cfg.numKvHeads !== 0) {
    throw new PlanError(`--tp ${tp} neither divides nor is a multiple of the ${cfg.numKvHeads} KV heads`);
  }
  if (tp % ep !== 0) throw new PlanError(`--ep ${ep} must divide --tp ${tp}`);
  if (cfg.numExperts % ep !== 0) throw new PlanError(`--ep ${ep} does not divide the ${cfg.numExperts} experts`);
}

// ---------------------------------------------------------------------------------------------
// The plan

export interface PlanInput {
  config: Llama4Config;
  /** Vision tower parameters, replicated on every rank (see visionParamCount); 0 = none. */
  visionParams?: number;
  tp: number;
  /** Expert-parallel size (divides tp); default 1. */
  ep?: number;
  gpu: GpuSpec;
  /** Default: SGLang's rule from GPU memory, tp, chunked prefill and graph batch size. */
  memFractionStatic?: number;
  /** Tokens per prefill chunk; default from GPU memory (8192 on H100/H200); ≤ 0 disables. */
  chunkedPrefillSize?: number;
  /** Token budget of one prefill batch; default 16384. */
  maxPrefillTokens?: number;
  /** Default: SGLang's rule, lowered so context-sized buffers stay ≤ 1/8 of B and (hybrid) the
   *  SWA pool holds one window per running request. */
  maxRunningRequests?: number;
  /** Largest decode batch captured in a CUDA graph; default from GPU memory and tp (512 at tp ≥ 4
   *  on H100/H200), never above max_running_requests; 0 disables CUDA graphs. */
  cudaGraphMaxBs?: number;
  /** Tokens per KV page; default 1 (SGLang's fa3 default). */
  pageSize?: number;
  /** Tokens one request may hold. Default: the config's max_position_embeddings, lowered to the
   *  largest that fits (the plan says so). */
  contextLength?: number;
  /** Hybrid SWA/full KV cache (SGLang's default for Llama 4); default true. */
  hybrid?: boolean;
  /** SWA-layer pool tokens ÷ full-layer pool tokens, in (0, 1]; 'auto' picks the largest ratio
   *  ≤ 0.8 with which the context length fits. Default 0.8. */
  swaFullTokensRatio?: number | "auto";
  kvCacheDtype?: "bf16" | "fp8_e4m3";
  /** Bytes per weight parameter (2 = bf16). */
  weightBytesPerParam?: number;
}

export interface MemoryPlan {
  fits: boolean;
  /** One line naming the limit, when !fits. */
  error?: string;
  notes: string[];

  gpu: GpuSpec;
  tp: number;
  ep: number;
  hybrid: boolean;
  pageSize: number;
  kvCacheDtype: "bf16" | "fp8_e4m3";

  /** Context length planned for (requested, or the default after clamping). */
  contextLength: number;
  contextLengthSource: "flag" | "config" | "clamped";
  /** Largest context one request can use with these settings (≤ max_position_embeddings). */
  maxContextLength: number;
  /** The same without the model's max_position_embeddings cap. */
  memoryMaxContextLength: number;

  memFractionStatic: number;
  swaFullTokensRatio: number;
  swaFullTokensRatioSource: "default" | "flag" | "auto";
  chunkedPrefillSize: number;
  maxPrefillTokens: number;
  maxRunningRequests: number;
  cudaGraphMaxBs: number;

  // Memory per GPU, bytes
  gpuMemoryBytes: number;
  runtimeOverheadBytes: number;
  preBytes: number;
  staticBytes: number;
  weightsBytesPerGpu: number;
  weights: WeightsBreakdown;
  /** B = f·pre − weights. */
  kvBudgetBytes: number;
  reqToTokenBytes: number;
  graphBufferBytes: number;
  fullPoolBytes: number;
  swaPoolBytes: number;
  /** Left unallocated inside B (rounding, and reserve not needed by the final request count). */
  unusedBytes: number;
  /** (1−f)·pre: what is left for activations, logits, graph pools. */
  reserveBytes: number;
  /** Our estimate of the peak of activations + logits + attention workspace + graph pools. */
  activationBytes: number;

  kvBytesPerTokenPerLayer: number;
  /** KV bytes per token per GPU over the global (full-attention) layers. */
  kvBytesPerTokenGlobal: number;
  /** KV bytes per token per GPU over the chunked-local layers. */
  kvBytesPerTokenLocal: number;
  globalLayers: number;
  localLayers: number;
  attentionWindow: number;
  fullPoolTokens: number;
  swaPoolTokens: number;
  /** SWA tokens one running request may hold between evictions: window + eviction interval + page. */
  swaTokensPerRequest: number;
  /** SWA tokens for prefill chunks in flight (two with the overlap scheduler) + a page. */
  swaTokensInFlight: number;
}

/** Everything that does not depend on the context length, ratio or request count. */
interface Setup {
  input: PlanInput;
  cfg: Llama4Config;
  tp: number;
  ep: number;
  page: number;
  kvDtype: "bf16" | "fp8_e4m3";
  hybrid: boolean;
  window: number;
  globalLayers: number;
  localLayers: number;
  kvLayer: number;
  /** Bytes per full-pool slot: KV of the layers it serves + allocator free list (+ full→SWA map). */
  cellFull: number;
  /** Bytes per SWA-pool slot: KV of the local layers + allocator free list. */
  cellSwa: number;
  chunk: number;
  maxPrefill: number;
  graphBsSetting: number;
  f: number;
  gpuBytes: number;
  overhead: number;
  pre: number;
  staticBytes: number;
  weights: WeightsBreakdown;
  B: number;
  /** (1−f)·pre: left outside the static pools for activations, logits and graph pools. */
  slack: number;
}

function setup(input: PlanInput): Setup {
  const cfg = input.config;
  const tp = input.tp;
  const ep = input.ep ?? 1;
  validateParallel(cfg, tp, ep);
  const page = input.pageSize ?? 1;
  if (!Number.isInteger(page) || page < 1) throw new PlanError(`--page-size must be a positive integer, got ${page}`);
  const kvDtype = input.kvCacheDtype ?? "bf16";
  const kvBytes = kvDtype === "bf16" ? 2 : 1;
  const memMiB = input.gpu.memoryMiB;

  const localLayers = cfg.layers.filter((l) => l.chunkSize > 0).length;
  const globalLayers = cfg.numLayers - localLayers;
  const window = Math.max(0, ...cfg.layers.map((l) => l.chunkSize));
  // The hybrid pool needs both kinds of layer; a model with only one kind gets the plain pool.
  const hybrid = (input.hybrid ?? true) && localLayers > 0 && globalLayers > 0;
  if (hybrid && window % page !== 0) throw new PlanError(`--page-size ${page} must divide the attention chunk ${window}`);

  // §2.5 step 4: B = kv_heads_per_rank × (head_dim + v_head_dim) × dtype bytes, per token and layer.
  const kvLayer = kvHeadsPerRank(cfg, tp) * 2 * cfg.headDim * kvBytes;
  // Allocator state lives on the GPU too: an int64 free list per pool slot, and for the hybrid
  // pool the int64 full→SWA index map (§2.3, SWATokenToKVPoolAllocator).
  const cellFull = hybrid ? kvLayer * globalLayers + 8 + 8 : kvLayer * cfg.numLayers + 8;
  const cellSwa = hybrid ? kvLayer * localLayers + 8 : 0;

  const chunk = input.chunkedPrefillSize ?? defaultChunkedPrefillSize(memMiB);
  if (!Number.isInteger(chunk)) throw new PlanError(`--chunked-prefill-size must be an integer, got ${chunk}`);
  const maxPrefill = input.maxPrefillTokens ?? DEFAULT_MAX_PREFILL_TOKENS;
  if (!Number.isInteger(maxPrefill) || maxPrefill < 1) throw new PlanError(`--max-prefill-tokens must be a positive integer, got ${maxPrefill}`);
  const graphBsSetting = input.cudaGraphMaxBs ?? defaultCudaGraphMaxBs(memMiB, tp);
  if (!Number.isInteger(graphBsSetting) || graphBsSetting < 0) throw new PlanError(`--cuda-graph-max-bs must be a non-negative integer, got ${graphBsSetting}`);

  // §2.6: the default fraction comes from the settings (graph bs before any lowering, as SGLang).
  const f = input.memFractionStatic ?? defaultMemFractionStatic(memMiB, tp, chunk, graphBsSetting, maxPrefill);
  if (input.memFractionStatic === undefined && !(f > 0)) {
    throw new PlanError(`SGLang's default --mem-fraction-static is ${f} for a ${fmtInt(memMiB)} MiB GPU (its reserve exceeds the card); pass --mem-fraction-static`);
  }
  if (!(f > 0 && f < 1)) throw new PlanError(`--mem-fraction-static must be in (0, 1), got ${f}`);

  const gpuBytes = Math.floor(memMiB * MiB);
  // §2.5 step 1: `pre` is the free memory after the CUDA context and torch.distributed init.
  const overhead = DRIVER_RESERVED_BYTES + CUDA_CONTEXT_BYTES + (tp > 1 ? NCCL_BYTES : 0) + (ep > 1 ? (ep - 1) * NCCL_ALLTOALL_PER_PEER_BYTES : 0);
  const pre = gpuBytes - overhead;
  // §2.5 step 3: weights + everything sized at start-up must fit in f·pre.
  const staticBytes = Math.floor(f * pre);
  const weights = weightsPerRank(cfg, tp, ep, input.visionParams ?? 0, input.weightBytesPerParam ?? 2);
  const B = staticBytes - weights.bytes;
  return {
    input, cfg, tp, ep, page, kvDtype, hybrid, window, globalLayers, localLayers, kvLayer, cellFull, cellSwa,
    chunk, maxPrefill, graphBsSetting, f, gpuBytes, overhead, pre, staticBytes, weights, B, slack: pre - staticBytes,
  };
}

interface Pools {
  full: number;
  swa: number;
  fullBytes: number;
  swaBytes: number;
}

/** §2.5 step 6: full = floor(avail / cell), swa = floor(full · r), both page-aligned; each pool
 *  also allocates one page of padding (slot 0 is a dummy), counted here. */
function pools(s: Setup, avail: number, r: number): Pools {
  const P = s.page;
  const fixed = P * s.cellFull + (s.hybrid ? P * s.cellSwa : 0);
  const cell = s.cellFull + (s.hybrid ? r * s.cellSwa : 0);
  let full = Math.floor((avail - fixed) / cell);
  full = Math.max(0, Math.floor(full / P) * P);
  const swa = s.hybrid ? Math.floor(Math.floor(full * r) / P) * P : 0;
  return { full, swa, fullBytes: (full + P) * s.cellFull, swaBytes: s.hybrid ? (swa + P) * s.cellSwa : 0 };
}

/** int32 req_to_token table: [max_running_requests + 1, context_len + 4] (§2.7, ReqToTokenPool). */
function reqToTokenBytes(R: number, L: number): number {
  return (R + 1) * (L + 4) * 4;
}

/** Decode CUDA-graph buffers per captured batch slot, sized by the context (§2.7, fa3):
 *  page_table [bs, ⌈L/page⌉] int32, local_block_table [bs·⌈L/chunk⌉, ⌈chunk/page⌉] int32, and for
 *  the hybrid pool the page table translated to SWA slots (same shape as page_table); plus small
 *  per-row vectors (seq lens, positions, cache locations). */
function graphBytesPerSlot(s: Setup, L: number): number {
  const pages = Math.ceil(L / s.page);
  const local = s.localLayers > 0 ? Math.ceil(L / s.window) * Math.ceil(s.window / s.page) : 0;
  return 4 * (pages * (s.hybrid ? 2 : 1) + local) + 64;
}

/** The most running requests whose slot tables 32-bit indices address at context L. */
function maxRowsForIndex(L: number): number {
  return Math.floor(SLOT_TABLE_MAX_ENTRIES / L) - 1;
}

function contextBuffers(s: Setup, R: number, L: number): { table: number; graph: number } {
  const bs = Math.min(s.graphBsSetting, R);
  return { table: reqToTokenBytes(R, L), graph: bs * graphBytesPerSlot(s, L) };
}

/** SWA slots one running request can hold (§2.4): the window, plus what accumulates between
 *  evictions (every 128 steps), plus a page for the page-aligned bound, plus the overlap
 *  scheduler's look-ahead token. */
function swaPerRequest(s: Setup): number {
  return s.window + SWA_EVICTION_INTERVAL + s.page + 1;
}

/** SWA slots for prefill chunks in flight: the chunk being computed and, with the overlap
 *  scheduler, the one before it (eviction lags one chunk, §2.4); without chunked prefill the whole
 *  prompt is one chunk. */
function swaInFlight(s: Setup, L: number): number {
  return s.chunk > 0 ? 2 * Math.min(s.chunk, L) + s.page : L + s.page;
}

/** SGLang's default max_running_requests (§10.2 / §2.7): min(clamp(full/L·512, 2048, 4096), full/2). */
function sglangMaxRunningRequests(fullTokens: number, L: number): number {
  const r = Math.min(Math.max(Math.floor((fullTokens / L) * 512), 2048), 4096);
  return Math.max(1, Math.min(r, Math.floor(fullTokens / 2)));
}

/** Peak of what lives outside B, per GPU; it must fit in (1−f)·pre:
 *  - prefill activations for one prefill batch (max(max_prefill_tokens, chunk) tokens, or the whole
 *    prompt without chunked prefill): residual, norm output, qkv, attention output, router logits,
 *    expert gate/up/act/down, shared expert, all bf16, fp32 router/norm temporaries; + all-to-all
 *    send/recv copies with ep > 1;
 *  - logits for every running request: local vocab shard + gathered full vocab + sampling probs, fp32;
 *  - attention workspace: split-KV partials for the decode batch and the prefill page tables;
 *  - CUDA-graph private pools: SGLang's 2 MiB per batch size (§2.6 graph_reserve). */
function activationBytes(s: Setup, R: number, L: number): number {
  const cfg = s.cfg;
  const H = cfg.hiddenSize;
  const hd = cfg.headDim;
  const q = (cfg.numHeads / s.tp) * hd;
  const kv = kvHeadsPerRank(cfg, s.tp) * hd;
  const moeTp = s.tp / s.ep;
  const widths = [Math.ceil(cfg.intermediateSize / moeTp), Math.ceil(cfg.intermediateSize / s.tp)];
  if (cfg.layers.some((l) => !l.moe)) widths.push(Math.ceil(cfg.intermediateSizeMlp / s.tp));
  const width = Math.max(...widths);
  let perToken = 2 * (8 * H + 3 * (q + 2 * kv) + 6 * width) + 4 * (cfg.numExperts + H);
  if (s.ep > 1) perToken += 2 * 2 * H;
  const tokens = s.chunk > 0 ? Math.max(s.maxPrefill, Math.min(s.chunk, L)) : Math.max(s.maxPrefill, L);
  const prefill = tokens * perToken;
  const vocabShard = Math.ceil(cfg.vocabSize / s.tp);
  const logits = R * (vocabShard + 2 * cfg.vocabSize) * 4;
  const splits = 64;
  const attention = R * (cfg.numHeads / s.tp) * splits * (hd + 2) * 4 + 2 * 4 * Math.ceil(L / s.page);
  const graphs = 2 * MiB * Math.min(s.graphBsSetting, R);
  return prefill + logits + attention + graphs;
}

interface Eval {
  ok: boolean;
  /** What failed: 'weights', 'context', 'swa', 'activations'. */
  failure?: "weights" | "context" | "swa" | "activations" | "index";
  R: number;
  bs: number;
  table: number;
  graph: number;
  pools: Pools;
  activations: number;
}

/**
 * Plans one (context length, ratio) pair. With --max-running-requests given, the context-sized
 * buffers are sized for it and the pools get the rest. Otherwise R starts from SGLang's default
 * and is lowered: pass 1 reserves min(B/8, buffers for Rup) for the context-sized buffers, where
 * Rup is SGLang's R capped (hybrid) by what the SWA pool could hold at a window each; R is then the
 * most that fits that reserve and the pass-1 SWA pool. Feasibility is decided on pass 1, which keeps
 * it monotone in L; pass 2 sizes the pools from the buffers the chosen R really needs, so the pools
 * only grow.
 */
function evaluate(s: Setup, L: number, r: number): Eval {
  const explicitR = s.input.maxRunningRequests;
  const none: Eval = { ok: false, failure: "weights", R: 0, bs: 0, table: 0, graph: 0, pools: { full: 0, swa: 0, fullBytes: 0, swaBytes: 0 }, activations: 0 };
  if (s.B <= 0) return none;
  const S = swaPerRequest(s);
  const X = swaInFlight(s, L);

  let R: number;
  let p1: Pools;
  if (explicitR !== undefined) {
    R = explicitR;
    const b = contextBuffers(s, R, L);
    p1 = pools(s, s.B - b.table - b.graph, r);
  } else {
    const { Rup, reserve } = contextReserve(s, L, r);
    p1 = pools(s, s.B - reserve, r);
    // Largest R ≤ Rup whose buffers fit the reserve (buffers grow with R).
    let lo = 0;
    let hi = Rup;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      const b = contextBuffers(s, mid, L);
      if (b.table + b.graph <= reserve) lo = mid;
      else hi = mid - 1;
    }
    R = Math.min(lo, maxRowsForIndex(L));
    if (s.hybrid) R = Math.min(R, Math.floor((p1.swa - X) / S));
  }
  const fail = (failure: Eval["failure"]): Eval => ({ ...none, failure, R: Math.max(R, 0), pools: p1 });
  if (R > maxRowsForIndex(L)) return fail("index");
  if (p1.full < L + s.page) return fail("context");
  if (R < 1) return fail(s.hybrid ? "swa" : "context");
  if (s.hybrid && p1.swa < R * S + X) return fail("swa");

  const b = contextBuffers(s, R, L);
  const p2 = pools(s, s.B - b.table - b.graph, r);
  const activations = activationBytes(s, R, L);
  const res: Eval = { ok: true, R, bs: Math.min(s.graphBsSetting, R), table: b.table, graph: b.graph, pools: p2, activations };
  if (activations > s.slack) return { ...res, ok: false, failure: "activations" };
  return res;
}

/**
 * Pass 1's reserve for the context-sized buffers (see evaluate) and the most requests it is sized
 * for: SGLang's default R, for the hybrid pool no more than the SWA pool could hold at a window
 * each even with no buffers at all, and the reserve at most B/8. Each bound grows with L (or does
 * not depend on it), so the pools of pass 1 shrink as L grows and feasibility stays monotone.
 */
function contextReserve(s: Setup, L: number, r: number): { Rsg: number; Rup: number; reserve: number } {
  if (s.input.maxRunningRequests !== undefined) {
    const R = s.input.maxRunningRequests;
    const b = contextBuffers(s, R, L);
    return { Rsg: R, Rup: R, reserve: b.table + b.graph };
  }
  const p0 = pools(s, s.B, r);
  const Rsg = sglangMaxRunningRequests(Math.max(p0.full, 1), L);
  let Rup = Rsg;
  if (s.hybrid) Rup = Math.min(Rup, Math.max(0, Math.floor((p0.swa - swaInFlight(s, L)) / swaPerRequest(s))));
  const b = contextBuffers(s, Rup, L);
  return { Rsg, Rup, reserve: Math.min(Math.floor(s.B * CONTEXT_BUFFER_SHARE), b.table + b.graph) };
}

/** 'auto': the largest ratio ≤ 0.8, on a 1e-4 grid, with which L fits (null if none does).
 *  A smaller ratio moves memory from the SWA pool to the full pool: the full pool holds L for every
 *  ratio up to some r*, found by bisection; L fits iff the SWA pool at r* still holds a window for
 *  at least one request (and the rest of evaluate's checks pass). */
function autoRatio(s: Setup, L: number): number | null {
  if (!s.hybrid) return DEFAULT_SWA_FULL_TOKENS_RATIO;
  const steps = Math.round(DEFAULT_SWA_FULL_TOKENS_RATIO / RATIO_STEP);
  const ratio = (k: number): number => Number((k * RATIO_STEP).toFixed(4));
  const holdsL = (k: number): boolean => evaluate(s, L, ratio(k)).failure !== "context";
  if (!holdsL(1)) return null;
  let lo = 1;
  let hi = steps;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (holdsL(mid)) lo = mid;
    else hi = mid - 1;
  }
  return evaluate(s, L, ratio(lo)).ok ? ratio(lo) : null;
}

function fitsWith(s: Setup, L: number, ratio: number | "auto"): boolean {
  if (ratio === "auto") return autoRatio(s, L) !== null;
  return evaluate(s, L, ratio).ok;
}

/** Largest L ≥ 1 with fits(L), by bisection (fits is monotone in L, see evaluate); 0 if none. */
function largestFitting(s: Setup, ratio: number | "auto"): number {
  if (!fitsWith(s, 1, ratio)) return 0;
  let lo = 1;
  let hi = Math.max(2, Math.floor(s.B / s.cellFull) + 1); // the full pool can never exceed B / cell
  if (fitsWith(s, hi, ratio)) return hi;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (fitsWith(s, mid, ratio)) lo = mid;
    else hi = mid;
  }
  return lo;
}

const fmtInt = (n: number): string => Math.round(n).toLocaleString("en-US");
export function fmtGiB(bytes: number): string {
  return `${(bytes / GiB).toFixed(2)} GiB`;
}

/** Builds the plan. Invalid settings throw PlanError; settings that do not fit give fits = false
 *  and a one-line error naming the largest context length that fits. */
export function planMemory(input: PlanInput): MemoryPlan {
  const s = setup(input);
  const cfg = s.cfg;
  const notes: string[] = [];
  const ratioIn = input.swaFullTokensRatio ?? DEFAULT_SWA_FULL_TOKENS_RATIO;
  if (ratioIn !== "auto" && !(ratioIn > 0 && ratioIn <= 1)) {
    throw new PlanError(`--swa-full-tokens-ratio must be in (0, 1] or 'auto', got ${ratioIn}`);
  }
  if (input.maxRunningRequests !== undefined && (!Number.isInteger(input.maxRunningRequests) || input.maxRunningRequests < 1)) {
    throw new PlanError(`--max-running-requests must be a positive integer, got ${input.maxRunningRequests}`);
  }
  if (input.contextLength !== undefined && (!Number.isInteger(input.contextLength) || input.contextLength < 1)) {
    throw new PlanError(`--context-length must be a positive integer, got ${input.contextLength}`);
  }
  if ((input.hybrid ?? true) && !s.hybrid) notes.push("the model has no chunked-local layers (or no global ones): the hybrid SWA pool is off");

  const memMax = largestFitting(s, s.hybrid ? ratioIn : DEFAULT_SWA_FULL_TOKENS_RATIO);
  const maxCtx = Math.min(memMax, cfg.maxPositionEmbeddings);

  let L: number;
  let source: MemoryPlan["contextLengthSource"];
  let error: string | undefined;
  if (input.contextLength !== undefined) {
    L = input.contextLength;
    source = "flag";
    if (L > cfg.maxPositionEmbeddings) {
      error = `--context-length ${L} exceeds the model's max_position_embeddings ${cfg.maxPositionEmbeddings}`;
    }
  } else if (cfg.maxPositionEmbeddings <= maxCtx) {
    L = cfg.maxPositionEmbeddings;
    source = "config";
  } else {
    L = Math.max(maxCtx, 1);
    source = "clamped";
    if (maxCtx > 0) notes.push(`the model's max_position_embeddings ${fmtInt(cfg.maxPositionEmbeddings)} does not fit; context length lowered to ${fmtInt(maxCtx)}, the largest that fits`);
  }

  // The ratio used for the plan.
  let r: number;
  let ratioSource: MemoryPlan["swaFullTokensRatioSource"];
  if (!s.hybrid) {
    r = input.swaFullTokensRatio === "auto" || input.swaFullTokensRatio === undefined ? DEFAULT_SWA_FULL_TOKENS_RATIO : input.swaFullTokensRatio;
    ratioSource = input.swaFullTokensRatio === undefined ? "default" : "flag";
  } else if (ratioIn === "auto") {
    r = autoRatio(s, L) ?? DEFAULT_SWA_FULL_TOKENS_RATIO;
    ratioSource = "auto";
  } else {
    r = ratioIn;
    ratioSource = input.swaFullTokensRatio === undefined ? "default" : "flag";
  }

  const e = evaluate(s, L, r);
  if (!error && !e.ok) error = explain(s, e, L, r, ratioIn, maxCtx, memMax, input);

  if (e.ok && s.hybrid && ratioIn !== "auto" && memMax < cfg.maxPositionEmbeddings) {
    const autoMax = Math.min(largestFitting(s, "auto"), cfg.maxPositionEmbeddings);
    if (autoMax > maxCtx) notes.push(`--swa-full-tokens-ratio auto reaches ${fmtInt(autoMax)} tokens (ratio ${autoRatio(s, autoMax)?.toFixed(4)})`);
  }
  if (e.ok && input.maxRunningRequests === undefined) {
    const { Rsg } = contextReserve(s, L, r);
    if (e.R < Rsg) {
      const why =
        e.R === maxRowsForIndex(L)
          ? `the slot tables stay within ${fmtInt(SLOT_TABLE_MAX_ENTRIES)} entries (32-bit indices)`
          : s.hybrid
            ? "the SWA pool holds a window for each and the req_to_token table and graph buffers stay within 1/8 of the KV budget"
            : "the req_to_token table and graph buffers stay within 1/8 of the KV budget";
      notes.push(`max_running_requests ${fmtInt(e.R)}, lowered from SGLang's default ${fmtInt(Rsg)} so that ${why}`);
    }
  }

  const buffersUsed = e.table + e.graph;
  return {
    fits: e.ok && !error,
    error,
    notes,
    gpu: input.gpu,
    tp: s.tp,
    ep: s.ep,
    hybrid: s.hybrid,
    pageSize: s.page,
    kvCacheDtype: s.kvDtype,
    contextLength: L,
    contextLengthSource: source,
    maxContextLength: maxCtx,
    memoryMaxContextLength: memMax,
    memFractionStatic: s.f,
    swaFullTokensRatio: r,
    swaFullTokensRatioSource: ratioSource,
    chunkedPrefillSize: s.chunk,
    maxPrefillTokens: s.maxPrefill,
    maxRunningRequests: e.R,
    cudaGraphMaxBs: e.bs,
    gpuMemoryBytes: s.gpuBytes,
    runtimeOverheadBytes: s.overhead,
    preBytes: s.pre,
    staticBytes: s.staticBytes,
    weightsBytesPerGpu: s.weights.bytes,
    weights: s.weights,
    kvBudgetBytes: s.B,
    reqToTokenBytes: e.table,
    graphBufferBytes: e.graph,
    fullPoolBytes: e.pools.fullBytes,
    swaPoolBytes: e.pools.swaBytes,
    unusedBytes: Math.max(0, s.B - buffersUsed - e.pools.fullBytes - e.pools.swaBytes),
    reserveBytes: s.slack,
    activationBytes: e.activations,
    kvBytesPerTokenPerLayer: s.kvLayer,
    kvBytesPerTokenGlobal: s.kvLayer * s.globalLayers,
    kvBytesPerTokenLocal: s.kvLayer * s.localLayers,
    globalLayers: s.globalLayers,
    localLayers: s.localLayers,
    attentionWindow: s.window,
    fullPoolTokens: e.pools.full,
    swaPoolTokens: e.pools.swa,
    swaTokensPerRequest: s.hybrid ? swaPerRequest(s) : 0,
    swaTokensInFlight: s.hybrid ? swaInFlight(s, L) : 0,
  };
}

function explain(s: Setup, e: Eval, L: number, r: number, ratioIn: number | "auto", maxCtx: number, memMax: number, input: PlanInput): string {
  const where = `${s.tp}×${input.gpu.name}`;
  if (e.failure === "weights") {
    if (s.weights.bytes >= s.pre) {
      return `the weights need ${fmtGiB(s.weights.bytes)} per GPU, more than the ${fmtGiB(s.pre)} free on each ${input.gpu.name} at tp ${s.tp}; use more or larger GPUs`;
    }
    return `the weights need ${fmtGiB(s.weights.bytes)} per GPU but mem_fraction_static ${s.f} leaves ${fmtGiB(s.staticBytes)} of the ${fmtGiB(s.pre)} free on each ${input.gpu.name} (tp ${s.tp}); raise --mem-fraction-static above ${Math.ceil((s.weights.bytes / s.pre) * 1000) / 1000} or use more GPUs`;
  }
  if (e.failure === "index") {
    return `--max-running-requests ${e.R} at --context-length ${L} needs ${fmtInt((e.R + 1) * L)} slot-table entries, more than the ${fmtInt(SLOT_TABLE_MAX_ENTRIES)} that 32-bit indices address; at this context at most ${fmtInt(maxRowsForIndex(L))} running requests`;
  }
  if (e.failure === "activations") {
    return `activations need about ${fmtGiB(e.activations)} per GPU but mem_fraction_static ${s.f} leaves only ${fmtGiB(s.slack)} outside the static pools; lower --mem-fraction-static, --chunked-prefill-size or --max-running-requests`;
  }
  const settings = [
    `${where}`,
    `tp ${s.tp}`,
    s.hybrid ? `hybrid SWA cache, --swa-full-tokens-ratio ${ratioIn === "auto" ? "auto" : r}` : "no hybrid SWA cache",
    `mem_fraction_static ${s.f}`,
  ];
  if (input.maxRunningRequests !== undefined) settings.push(`--max-running-requests ${input.maxRunningRequests}`);
  let msg = `--context-length ${L} does not fit: the largest value that fits with these settings (${settings.join(", ")}) is ${maxCtx > 0 ? maxCtx : "none"}`;
  if (memMax < 1) msg = `nothing fits with these settings (${settings.join(", ")}): the KV pools cannot hold one request`;
  if (s.hybrid && ratioIn !== "auto") {
    const ra = autoRatio(s, L);
    if (ra !== null) msg += `; it fits with --swa-full-tokens-ratio ${ra.toFixed(4)} (or auto)`;
    else {
      const autoMax = Math.min(largestFitting(s, "auto"), s.cfg.maxPositionEmbeddings);
      if (autoMax > maxCtx) msg += `; --swa-full-tokens-ratio auto reaches ${autoMax}`;
    }
  } else if (!s.hybrid && s.localLayers > 0 && s.globalLayers > 0 && (input.hybrid ?? true) === false) {
    const hyb = setup({ ...input, hybrid: true });
    const hm = Math.min(largestFitting(hyb, "auto"), s.cfg.maxPositionEmbeddings);
    if (hm > maxCtx) msg += `; with the hybrid SWA cache (no --disable-hybrid-swa-memory) and --swa-full-tokens-ratio auto up to ${hm}`;
  }
  return msg;
}
