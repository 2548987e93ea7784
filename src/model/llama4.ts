// The Llama 4 text model (llama4-spec.md §1.7), written once against the backend op interface:
//   x = Embed(ids)
//   for each layer: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x))   (FFN = MoE or dense SwiGLU)
//   logits = lm_head(RMSNorm(x))
// Per-layer differences (RoPE/NoPE, chunked/global, qk-norm, temperature tuning, MoE/dense)
// come from the config's layer schedule, never from layer indices written here.

import type { AttentionParams, AttentionSpec, Backend, KvPoolSizes, PendingPicks, SampleRow, StepBatch, Tensor } from "../runtime/backend.js";
import { applyEdits, logSoftmax, sampleTokenWith, topEntries } from "../engine/sampling.js";
import { type Llama4Config, ropeInvFreq } from "./config.js";
import type { ModelWeights } from "./weights.js";
import { NO_SHARD, type Shard, type ShardDims, shardDims } from "./shard.js";

/** What the scheduler and the batch drivers need from a model (one rank, or all ranks behind rank 0). */
export interface ForwardModel {
  readonly cfg: Llama4Config;
  /** The backend of this rank (rank 0 under tensor parallelism): timing and bandwidth probes. */
  readonly backend: Backend;
  readonly attention: AttentionSpec[];
  allocKv(sizes: KvPoolSizes): void;
  forward(batch: StepBatch): Float32Array;
  /**
   * Greedy decoding: each logit row's argmax (lowest index among equal maxima), chosen on the
   * device where the backend can (no logits download). Optional: callers fall back to forward().
   */
  forwardArgmax?(batch: StepBatch): Int32Array;
  /**
   * Pipelined greedy decoding (SGLang's overlap schedule): queues the step and its argmax and
   * returns at once, so the caller prepares the next step while the device runs this one. With
   * `after` (the previous queued step's picks, one per row of this batch, in order) the rows'
   * input ids are those picks, taken on the device: batch.ids is not read.
   */
  queueArgmax?(batch: StepBatch, after: PendingPicks | null): PendingPicks;
  /**
   * queueArgmax for sampled steps (no logit edits): each row drawn on the device with its
   * SampleRow; the handle's sampled() has the ids, logprobs and top logprobs. Absent (or, on a
   * Llama4Model, throwing) where the backend does not draw on the device.
   */
  queueSample?(batch: StepBatch, rows: SampleRow[], after: PendingPicks | null): PendingModelSample;
  /**
   * Sampling: one token per logit row drawn with the row's `u` (Backend.queueSample), its logprob
   * under the model's distribution and the top-`topN` logprobs, on the device where the backend
   * can (no logits download). Optional: callers fall back to forward() and host sampling.
   */
  forwardSample?(batch: StepBatch, rows: SampleRow[]): ModelSample;
  /**
   * The GEMM warm-up of a model whose ranks live on other threads (tensor parallelism; a lone
   * Llama4Model is warmed by engine/warmup.ts directly): every rank plans its shards' GEMMs.
   */
  warmupGemms?(limits: { maxTokens: number; maxLogitRows: number }): { gemms: number; shapes: number } | null;
  /** Bytes per element of stored KV, and device memory left for KV pools (none on the host). */
  readonly kvElementBytes: number;
  kvMemoryBytes(): number | undefined;
}

/** queueSample's handle: wait() the ids, sampled() the whole answer. */
export interface PendingModelSample extends PendingPicks {
  sampled(): ModelSample;
}

/** forwardSample's answer: fp32 logprobs from a device, float64 from the host fallback. */
export interface ModelSample {
  ids: Int32Array;
  logprobs: Float32Array | Float64Array;
  top?: [number, number][][];
}

export class Llama4Model implements ForwardModel {
  readonly attention: AttentionSpec[];
  readonly attentionParams: AttentionParams;
  readonly shard: Shard;
  readonly dims: ShardDims;

  constructor(
    readonly cfg: Llama4Config,
    readonly weights: ModelWeights,
    readonly backend: Backend,
    opts: { hybridKv?: boolean; shard?: Shard } = {},
  ) {
    this.shard = opts.shard ?? NO_SHARD;
    this.dims = shardDims(cfg, this.shard);
    if (this.shard.tp > 1 && !(backend.allReduce && backend.allGatherColumns)) {
      throw new Error(`the ${backend.name} backend has no collectives for --tp ${this.shard.tp}`);
    }
    // With the hybrid cache, chunked-local layers keep their KV in the smaller SWA pool.
    this.attention = cfg.layers.map((l) => ({
      rope: l.rope,
      qkNorm: l.qkNorm,
      temperatureTuning: l.temperatureTuning,
      chunkSize: l.chunkSize,
      pool: opts.hybridKv && l.chunkSize > 0 ? "swa" : "full",
    }));
    this.attentionParams = {
      numHeads: this.dims.heads,
      numKvHeads: this.dims.kvHeads,
      headDim: cfg.headDim,
      eps: cfg.rmsNormEps,
      invFreq: ropeInvFreq(cfg),
      floorScale: cfg.floorScale,
      attnScale: cfg.attnScale,
    };
  }

  allocKv(sizes: KvPoolSizes): void {
    this.backend.allocKv(this.attentionParams, this.attention, sizes);
  }

  get kvElementBytes(): number {
    return this.backend.elementBytes ?? 2;
  }

  kvMemoryBytes(): number | undefined {
    return this.backend.kvMemoryBytes?.();
  }

  /** Runs one step and returns fp32 logits [batch.logitRows.length, vocab]. */
  forward(batch: StepBatch): Float32Array {
    return this.backend.toHost(this.gatheredLogits(batch, null));
  }

  /**
   * The step's logits for the whole vocabulary on this rank's device, [logitRows, vocab] (input
   * ids as in logitsAfter): under tensor parallelism every rank replays its graph (NCCL
   * all-reduces inside) and the ranks' vocabulary columns are all-gathered (lm_head is split by
   * vocabulary) — every rank calls it in step.
   */
  private gatheredLogits(batch: StepBatch, after: PendingPicks | null): Tensor {
    const logits = this.logitsAfter(batch, after);
    return this.shard.tp > 1 ? this.backend.allGatherColumns!(logits) : logits;
  }

  /** queueArgmax waited for: on a device, each rank's (max, id) pairs cross the ranks, not logits. */
  forwardArgmax(batch: StepBatch): Int32Array {
    if (this.backend.queueGreedy) return this.queueArgmax(batch, null).wait();
    const logits = this.forward(batch);
    const vocab = this.cfg.vocabSize;
    const ids = new Int32Array(batch.logitRows.length);
    for (let r = 0; r < ids.length; r++) {
      let best = 0;
      for (let i = 1; i < vocab; i++) if (logits[r * vocab + i] > logits[r * vocab + best]) best = i;
      ids[r] = best;
    }
    return ids;
  }

  queueArgmax(batch: StepBatch, after: PendingPicks | null): PendingPicks {
    const be = this.backend;
    if (!be.queueGreedy) throw new Error(`queueArgmax: the ${be.name} backend cannot queue greedy picks`);
    return be.queueGreedy(this.logitsAfter(batch, after), this.shard.tp > 1 ? { vocabStart: this.dims.vocabStart } : undefined);
  }

  /**
   * The sampling counterpart of queueArgmax (Backend.queueSample): the step's gathered logits are
   * drawn from on the device with `rows`; under tensor parallelism rank 0 passes the rows and the
   * other ranks null (they receive rank 0's draws, so every rank has the next step's ids).
   */
  queueSample(batch: StepBatch, rows: SampleRow[] | null, after: PendingPicks | null): PendingModelSample {
    const be = this.backend;
    if (!this.samplesOnDevice) {
      // The host sampler (one rank): drawn at once.
      if (!rows || this.shard.tp > 1) throw new Error(`queueSample: the ${be.name} backend draws on the host, on one rank only`);
      const drawn = this.forwardSample(after ? { ...batch, ids: after.wait() } : batch, rows);
      return { rows: rows.length, wait: () => drawn.ids, sampled: () => drawn };
    }
    return be.queueSample!(this.gatheredLogits(batch, after), rows, this.shard.tp > 1);
  }

  /**
   * This rank's logits for a step whose input ids are `after`'s picks (or batch.ids): a graph step
   * copies the picks on the device (a first capture checks stand-in ids, zeros); a direct step
   * needs them on the host.
   */
  private logitsAfter(batch: StepBatch, after: PendingPicks | null): Tensor {
    if (after && after.rows !== batch.ids.length) throw new Error(`${after.rows} picks for a step of ${batch.ids.length} rows`);
    const run = (b: StepBatch) => this.logits(b);
    const graphStep = after ? { ...batch, ids: new Int32Array(after.rows) } : batch;
    return this.backend.decodeGraphLogits?.(this, graphStep, run, after ?? undefined) ?? run(after ? { ...batch, ids: after.wait() } : batch);
  }

  /**
   * On a device: queueSample waited for (the logits stay there; only ids and logprobs come back;
   * under tensor parallelism every rank calls it in step). Elsewhere (the CPU backend): forward()
   * and the host sampler with the same `u` — sampleTokenWith, exactly what the scheduler's host
   * path picks with that draw (sorted order there, index order on the device: the same
   * distribution, not the same token for a given u).
   */
  forwardSample(batch: StepBatch, rows: SampleRow[]): ModelSample {
    if (rows.length !== batch.logitRows.length) throw new Error(`forwardSample: ${rows.length} sampling rows for ${batch.logitRows.length} logit rows`);
    if (this.samplesOnDevice) return this.queueSample(batch, rows, null).sampled();
    const logits = this.forward(batch);
    const vocab = this.cfg.vocabSize;
    const ids = new Int32Array(rows.length);
    const logprobs = new Float64Array(rows.length);
    const top: [number, number][][] | undefined = rows.some((r) => r.topN > 0) ? [] : undefined;
    rows.forEach((r, i) => {
      const row = logits.subarray(i * vocab, (i + 1) * vocab);
      let drawFrom = row;
      if (r.edits) applyEdits((drawFrom = new Float32Array(row)), r.edits);
      ids[i] = sampleTokenWith(drawFrom, r, r.u);
      const lp = logSoftmax(row);
      logprobs[i] = lp[ids[i]];
      top?.push(r.topN > 0 ? topEntries(lp, r.topN) : []);
    });
    return top ? { ids, logprobs, top } : { ids, logprobs };
  }

  /** Draws happen on the device (Backend.queueSample; under tensor parallelism from the gathered logits). */
  get samplesOnDevice(): boolean {
    return !!this.backend.queueSample && (this.shard.tp === 1 || !!this.backend.allGatherColumns);
  }

  /** One step on the backend, up to this rank's logits [logitRows, vocab] (fp32 on one rank). */
  logits(batch: StepBatch): Tensor {
    const be = this.backend;
    const w = this.weights;
    const eps = this.cfg.rmsNormEps;
    const tp = this.shard.tp > 1;
    // residual += delta, then the next norm; under tensor parallelism delta is each rank's partial
    // sum of a row-parallel projection, all-reduced first (in the same launch where the backend can).
    const addNorm = (residual: Tensor, delta: Tensor, norm: Tensor): Tensor => {
      if (!tp) return be.addRmsNorm(residual, delta, norm, eps);
      if (be.allReduceAddRmsNorm) return be.allReduceAddRmsNorm(residual, delta, norm, eps);
      be.allReduce!(delta);
      return be.addRmsNorm(residual, delta, norm, eps);
    };
    // The row-parallel projections' outputs go straight to addNorm's all-reduce: a backend may
    // send them to the other ranks as they are produced.
    const reduced = { allReduceNext: tp && !!be.allReduceAddRmsNorm };
    const x = be.embedding(w.embed, batch.ids, this.dims.vocabStart);
    if (tp) be.allReduce!(x);
    let h = be.rmsNorm(x, w.layers[0].inputNorm, eps);
    for (let i = 0; i < this.cfg.numLayers; i++) {
      const lw = w.layers[i];
      const [q, k, v] = be.linearMany ? be.linearMany(h, [lw.q, lw.k, lw.v]) : [be.linear(h, lw.q), be.linear(h, lw.k), be.linear(h, lw.v)];
      const attn = be.linear(be.attention(i, this.attention[i], q, k, v, batch), lw.o, reduced); // row-parallel under tp
      h = addNorm(x, attn, lw.postAttnNorm);
      const ffn = this.cfg.layers[i].moe
        ? be.moe(h, {
            router: lw.router!,
            gateUp: lw.expertsGateUp!,
            down: lw.expertsDown!,
            sharedGateUp: lw.sharedGateUp!,
            sharedDown: lw.sharedDown!,
            numExperts: this.cfg.numExperts,
            expertStart: this.dims.expertStart,
          }, reduced)
        : be.linear(be.siluMul(be.linear(h, lw.mlpGateUp!)), lw.mlpDown!, reduced);
      const nextNorm = i + 1 < this.cfg.numLayers ? w.layers[i + 1].inputNorm : w.norm;
      h = addNorm(x, ffn, nextNorm); // down projections are row-parallel (or experts are spread)
    }
    const last: Tensor = be.gatherRows(h, batch.logitRows);
    // fp32 logits straight from the GEMM's accumulators: no bf16 rounding of logprobs, and no
    // host-side widening (the all-gather of tensor parallelism keeps the storage type).
    return be.linear(last, w.lmHead, { outF32: !tp });
  }
}
