// The op interface the model is written against. `cpu` (TypeScript, fp32, the numerical
// reference) and `cuda` (addon + kernels, bf16) implement it. Ops are coarse enough to map onto
// one fused kernel each, and all batch metadata arrives as plain host arrays in a StepBatch so a
// backend can upload it once per step (or bake it into a CUDA graph's input buffers).

import type { DType } from "./dtype.js";

/** A tensor as read from a checkpoint: raw little-endian bytes. */
export interface HostTensor {
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/** An activation or weight living on a backend. Only the backend looks inside. */
export interface Tensor {
  readonly shape: readonly number[];
}

/** Per-layer attention behaviour, taken from the config's layer schedule. */
export interface AttentionSpec {
  rope: boolean;
  qkNorm: boolean;
  temperatureTuning: boolean;
  /** Chunk size of chunked-local attention (absolute chunk boundaries), 0 = global. */
  chunkSize: number;
  /** Which KV pool the layer reads and writes ("swa" pools may hold only the current chunk). */
  pool: "full" | "swa";
}

/**
 * One sequence's part of a step: `qLen` new tokens at positions [kvLen - qLen, kvLen).
 *
 * Each running sequence owns a row of the backends' slot tables (SlotTables; on a GPU they live
 * in device memory, like SGLang's req_to_token): position p's KV sits at slot table[row][p].
 * A step carries only what the row gains: the slots of positions [slotsFrom, kvLen), so a
 * decode step sends one slot per pool and sequence however long the context (a 1M-token
 * sequence's whole slot list crossing to each rank every step cost ~20 ms). A row's length is
 * set to slotsFrom before the append, so a new occupant starts at 0 and a step applied twice
 * gives the same table.
 */
export interface SeqSpan {
  /** First row of this sequence's tokens in the step's token list. */
  qStart: number;
  qLen: number;
  /** Tokens in the sequence after this step (cached prefix + new tokens). */
  kvLen: number;
  /** The sequence's slot-table row, in [0, KvPoolSizes.rows). */
  row: number;
  /** First position whose slots this step carries (≤ kvLen − qLen: every new token's slot is carried or already held). */
  slotsFrom: number;
  /** Full-pool slots of positions [slotsFrom, kvLen). */
  fullSlots: Int32Array;
  /** SWA-pool slots of positions [slotsFrom, kvLen); -1 for a position whose SWA KV is gone (outside the live chunk). */
  swaSlots: Int32Array;
}

/** Everything one forward step needs besides the weights and the KV pools. */
export interface StepBatch {
  ids: Int32Array;
  positions: Int32Array;
  seqs: SeqSpan[];
  /** Rows whose final hidden state goes through lm_head. */
  logitRows: Int32Array;
}

/**
 * Greedy picks queued on a device (Backend.queueGreedy). wait() returns them once the step that
 * made them has run: only that step, so work queued after it keeps the device busy meanwhile.
 */
export interface PendingPicks {
  readonly rows: number;
  wait(): Int32Array;
}

/** Draws queued on a device (Backend.queueSample): wait() the ids, sampled() the ids with their logprobs. */
export interface PendingSample extends PendingPicks {
  sampled(): SampledRows;
}

export interface KvPoolSizes {
  /** Slots in the pool used by global layers (and by every layer when there is no SWA pool). */
  full: number;
  /** Slots in the pool used by chunked-local layers when the hybrid cache is on. */
  swa: number;
  /** Slot-table rows: sequences that can run at once (SeqSpan.row). */
  rows: number;
  /** Positions per slot-table row: the longest sequence. */
  context: number;
}

/** Backend.copyBandwidth's measurement: bytes/s (read + write counted) over a copy of `bytes` (source + destination). */
export interface CopyBandwidth {
  bytesPerS: number;
  bytes: number;
}

/**
 * The copy the bandwidth bound is measured with, source and destination together: 8 GiB. A copy
 * pays a fixed ~9 µs besides its bytes (4 × H200, 2026-11-27: 3.73 TB/s at 256 MiB, 4.01 at
 * 1 GiB, 4.24 at 8 GiB), so smaller copies understate the streaming rate and the bound.
 */
export const COPY_BANDWIDTH_BYTES = 8 * 2 ** 30;

/** Sampling and logprobs stay on the host for the CPU backend; GPU backends may override. */
export interface Backend {
  readonly name: string;
  /** Bytes per stored weight/KV element (bf16 on GPUs: 2; the CPU backend keeps fp32: 4). */
  readonly elementBytes?: number;

  /** Uploads a weight. `transpose` swaps the last two dims ([.., in, out] → [.., out, in]). */
  weight(t: HostTensor, opts?: { transpose?: boolean }): Tensor;
  free(t: Tensor): void;

  /**
   * Rows of `table` for `ids`. Under vocabulary parallelism the table holds rows
   * [vocabStart, vocabStart + rows) and other ids give zero rows (the all-reduce fills them).
   */
  embedding(table: Tensor, ids: Int32Array, vocabStart?: number): Tensor;
  /** RMSNorm(x) ⊙ w, computed in fp32. */
  rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor;
  /** residual += x (in place), then returns RMSNorm(residual) ⊙ w. */
  addRmsNorm(residual: Tensor, x: Tensor, w: Tensor, eps: number): Tensor;
  add(residual: Tensor, x: Tensor): void;
  /** y = x · wᵀ with x [n, in] and w [out, in]. */
  linear(x: Tensor, w: Tensor, opts?: LinearOptions): Tensor;
  /** linear() of one input by each weight (q, k, v), where a backend can do them in one pass. */
  linearMany?(x: Tensor, ws: Tensor[]): Tensor[];
  /**
   * A [Σ counts, in] weight as views of its consecutive row blocks, for linearMany: the loader
   * stores q, k and v side by side where a backend has this, so they can run as one GEMM.
   */
  splitRows?(w: Tensor, counts: number[]): Tensor[];
  /** SiLU(gate) ⊙ up for the concatenated [n, 2F] input (gate first). */
  siluMul(gateUp: Tensor): Tensor;

  /**
   * q [n, Hq·D], k/v [n, Hkv·D]: applies RoPE (interleaved pairs), qk-norm and temperature
   * tuning per the spec, writes k/v into the layer's pool at the step's slots, and returns
   * attention output [n, Hq·D] over the allowed keys of each query.
   */
  attention(layer: number, spec: AttentionSpec, q: Tensor, k: Tensor, v: Tensor, batch: StepBatch): Tensor;

  /**
   * Llama 4 MoE with top-1 sigmoid routing applied to the expert input, plus the shared expert.
   * experts.gateUp [E, 2F, d] and experts.down [E, d, F] in [out, in] layout.
   */
  moe(x: Tensor, w: MoeWeights, opts?: ReducedOutput): Tensor;

  /** Allocates (or reallocates) the KV pools for every layer and fixes the attention constants. */
  allocKv(params: AttentionParams, layers: AttentionSpec[], sizes: KvPoolSizes): void;
  /**
   * Random weights for `--load-format dummy`: normal(0, std) deterministically from `seed`
   * (`std` 0 with `fill` gives a constant, e.g. 1 for norm weights). Generated where the
   * weights live, so benchmark models never pass through the host.
   */
  randomWeight?(shape: number[], std: number, seed: number, fill?: number): Tensor;
  /** Memory left for KV pools once the weights are loaded; absent where memory is the host's. */
  kvMemoryBytes?(): number;
  /** Device bytes allocKv takes for the slot tables of `rows` × `context` in `pools` pools (counted before the pools are sized). */
  slotTableBytes?(rows: number, context: number, pools: number): number;
  /** Waits for queued device work (timing); a no-op on the CPU. */
  synchronize?(): void;
  /** Device time of the last decode-graph replay in ms (waits for it), or null before any (benchmarks: host overhead = step time − this). */
  lastReplayMs?(): number | null;
  /**
   * Plans (and runs once, on scratch rows) the GEMMs of these weights for every row count up to
   * each spec's maxRows, so that serving meets no first-use planning or kernel loads. Between
   * steps only: it starts a step. Returns the GEMMs run and the distinct weight shapes.
   */
  prepareGemms?(specs: GemmWarmup[]): { gemms: number; shapes: number };
  /** GEMM planning met so far on this backend's thread (benchmarks: was a timed run planning?). */
  gemmStats?(): GemmStats;
  /**
   * Measured copy bandwidth (read + write counted) for the benchmarks' bandwidth bound: bytesPerS
   * over one copy of `bytes` in all (COPY_BANDWIDTH_BYTES by default), or of as much as is free —
   * `bytes` says what was copied.
   */
  copyBandwidth?(bytes?: number): CopyBandwidth;

  /** Tensor parallelism: sums x over all ranks, in place. */
  allReduce?(x: Tensor): void;
  /** Tensor parallelism: allReduce(x), then addRmsNorm(residual, x, w, eps), fused where the backend can (x is left unspecified). */
  allReduceAddRmsNorm?(residual: Tensor, x: Tensor, w: Tensor, eps: number): Tensor;
  /** Tensor parallelism: [rows, cols] on each rank → [rows, cols·ranks], rank-major columns. */
  allGatherColumns?(x: Tensor): Tensor;

  /** Copies a tensor to the host as fp32. */
  toHost(x: Tensor): Float32Array;

  /**
   * A decode step (every sequence one new token, logits for every row in order) through a
   * captured CUDA graph: `run` is the forward up to this rank's logits; the backend pads the batch
   * to a captured size, captures `run` on first use of that size (per `key`, the model) and
   * replays it after. Returns this rank's logits of the batch's rows, left on the device, or null
   * when the step does not qualify (the caller then runs it directly). Under tensor parallelism
   * every rank calls it in step. With `idsFrom` (picks of this backend's queueGreedy or
   * queueSample, one per row of the batch, in order) the rows' input ids are those picks, copied
   * on the device: batch.ids is not read.
   */
  decodeGraphLogits?(key: object, batch: StepBatch, run: (batch: StepBatch) => Tensor, idsFrom?: PendingPicks): Tensor | null;
  /**
   * Greedy sampling left queued (pipelined decoding): each row's argmax, lowest index among equal
   * maxima, as device work that later work may use without waiting (decodeGraphLogits' idsFrom).
   * With `split` the vocabulary is split over the ranks (x holds this rank's columns from
   * vocabulary id `split.vocabStart`; every rank calls it in step and all end with the same ids).
   */
  queueGreedy?(x: Tensor, split?: { vocabStart: number }): PendingPicks;
  /**
   * Sampling on the device, left queued: for each logit row of x (the whole vocabulary; under
   * tensor parallelism gathered), a token drawn with `u` from the filtered softmax(x /
   * temperature) (see SampleRow), its logprob under log_softmax(x), and the top-`topN` [id,
   * logprob] pairs where asked (PendingSample.sampled()); the logits never leave the device. With
   * `shared` (tensor parallelism; every rank calls it in step) the rank with `rows` draws and the
   * others, passing null, receive its draws on the device, so every rank holds the ids a
   * following step may take (decodeGraphLogits' idsFrom).
   */
  queueSample?(x: Tensor, rows: SampleRow[] | null, shared: boolean): PendingSample;
  /** Rows of x (e.g. the last token of each sequence). */
  gatherRows(x: Tensor, rows: Int32Array): Tensor;
  /** Device memory figures in bytes (budget, weights, step high-water marks), where there is a device. */
  stats?(): Record<string, number>;
}

/**
 * One row's sampling request for Backend.queueSample. Greedy (temperature ≤ 0 or topK 1): the
 * argmax, lowest index among equal maxima. Otherwise, over w = exp((x − max) / temperature): keep
 * the topK largest logits (≤ 0: all), the smallest top-p nucleus of those (mass over the top-k
 * set; ties at a threshold kept together), and tokens with w ≥ minP (minP × the max
 * probability); then the kept token, in index order, where the running sum of w first exceeds
 * u · Σ kept w. `u` in [0, 1) comes from the request's seeded Rng (results reproducible per seed).
 * All of this on the logits after `edits` (sampling.ts LogitEdits), where given.
 */
export interface SampleRow {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  u: number;
  /** Top logprobs wanted (0 = none, at most 20). */
  topN: number;
  /** Penalties and masks: the draw (and greedy) use the edited logits, logprobs the raw ones. */
  edits?: LogitEdits | null;
}

export interface SampledRows {
  ids: Int32Array;
  /** The chosen token's log_softmax(logits) (temperature 1, no filtering). */
  logprobs: Float32Array;
  /** Per row (when any row asked): its topN [id, logprob] pairs, best first, lowest id first among ties. */
  top?: [number, number][][];
}

/**
 * A row's penalties and masks as a list of per-token edits, so the host and the device apply
 * the same thing (sample.cu's logit_edit_rows; built by sampling.ts logitEdits): for each listed id,
 *   v' = (repeat ? (v > 0 ? v / repetition : v · repetition) : v) − sub, or −∞ when masked.
 * repeat marks ids of the prompt or output (HF's repetition penalty); sub is OpenAI's
 * frequency · count + presence over the output minus the request's logit_bias; masked ids are
 * stop tokens before min_new_tokens.
 */
export interface LogitEdits {
  ids: Int32Array;
  flags: Uint8Array; // EDIT_REPEAT | EDIT_MASK
  sub: Float32Array;
  repetition: number;
}
export const EDIT_REPEAT = 1;
export const EDIT_MASK = 2;

/** Top logprobs Backend.queueSample can return per row. */
export const SAMPLE_MAX_TOP = 20;

/** Counts of GEMM planning: plans made, algorithm choices timed on the device, choices for an exact row count. */
export interface GemmStats {
  plans: number;
  timed: number;
  exact: number;
}

/** One weight whose GEMMs Backend.prepareGemms plans. */
export interface GemmWarmup {
  /** [out, in], or [experts, out, in] (every expert's slice has the first one's shape). */
  weight: Tensor;
  /** The most rows (tokens) a forward passes it. */
  maxRows: number;
  /** fp32 output (the logits of a lone rank). */
  outF32?: boolean;
}

/**
 * Tensor parallelism: the output is this rank's partial sum of a row-parallel projection, and the
 * backend's next collective is allReduceAddRmsNorm of it — so a backend may start sending it to
 * the other ranks while it is produced (the CUDA backend's pushed all-reduce at batch 1).
 */
export interface ReducedOutput {
  allReduceNext?: boolean;
}

export interface LinearOptions extends ReducedOutput {
  /** fp32 output (logits) in bf16 mode. */
  outF32?: boolean;
}

export interface MoeWeights {
  router: Tensor;
  gateUp: Tensor;
  down: Tensor;
  sharedGateUp: Tensor;
  sharedDown: Tensor;
  /** Routed experts in the router (all ranks). */
  numExperts: number;
  /** Global id of the first expert in gateUp/down (expert parallelism holds a slice); default 0. */
  expertStart?: number;
}

/** Everything the attention op needs from the model config besides the layer spec. */
export interface AttentionParams {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  eps: number;
  invFreq: Float32Array;
  floorScale: number;
  attnScale: number;
}
