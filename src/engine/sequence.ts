// Sequences on a contiguous KV cache (sequence b owns slots [b·capacity, (b+1)·capacity)):
// the simplest driver of the model, used by `tsglang generate`, `bench-one-batch` and the
// golden-reference tests. The server's scheduler drives the same model through pooled,
// shared KV instead.

import { ramp } from "../util/int_arrays.js";
import type { PendingPicks, SampleRow, SeqSpan, StepBatch } from "../runtime/backend.js";
import type { ForwardModel, ModelSample, PendingModelSample } from "../model/llama4.js";

export class ContiguousBatch {
  private readonly lens: number[];
  private readonly slots: Int32Array[];

  constructor(
    private readonly model: ForwardModel,
    readonly batchSize: number,
    readonly capacity: number,
  ) {
    this.lens = new Array(batchSize).fill(0);
    this.slots = Array.from({ length: batchSize }, (_, b) => Int32Array.from({ length: capacity }, (_, i) => b * capacity + i));
    model.allocKv({ full: batchSize * capacity, swa: batchSize * capacity, rows: batchSize, context: capacity });
  }

  length(b = 0): number {
    return this.lens[b];
  }

  /**
   * Appends tokens[b] to sequence b (all in one forward; an empty list skips that sequence) and
   * returns logits for the last `logitsFor` tokens of each sequence that took part, in order, as
   * one [rows, vocab] array.
   */
  append(tokens: readonly (readonly number[])[], logitsFor = 1): Float32Array {
    const batch = this.batchFor(tokens, logitsFor);
    const logits = this.model.forward(batch);
    tokens.forEach((t, b) => (this.lens[b] += t.length));
    return logits;
  }

  /**
   * append() with greedy sampling: the argmax token after each taking-part sequence's last token,
   * chosen on the device where the model can (forwardArgmax: no logits download).
   */
  appendGreedy(tokens: readonly (readonly number[])[]): Int32Array {
    const batch = this.batchFor(tokens, 1);
    let ids: Int32Array;
    if (this.model.forwardArgmax) ids = this.model.forwardArgmax(batch);
    else {
      const logits = this.model.forward(batch);
      const vocab = logits.length / batch.logitRows.length;
      ids = Int32Array.from(batch.logitRows, (_, r) => {
        let best = 0;
        for (let i = 1; i < vocab; i++) if (logits[r * vocab + i] > logits[r * vocab + best]) best = i;
        return best;
      });
    }
    tokens.forEach((t, b) => (this.lens[b] += t.length));
    return ids;
  }

  /**
   * append() with sampling: each taking-part sequence's next token drawn with its row of `rows`
   * (ForwardModel.forwardSample: on the device where the model can).
   */
  appendSample(tokens: readonly (readonly number[])[], rows: SampleRow[]): ModelSample {
    if (!this.model.forwardSample) throw new Error("appendSample: this model has no forwardSample");
    const out = this.model.forwardSample(this.batchFor(tokens, 1), rows);
    tokens.forEach((t, b) => (this.lens[b] += t.length));
    return out;
  }

  /**
   * A pipelined greedy decode step (ForwardModel.queueArgmax): one token for every sequence,
   * queued without waiting for the step. Its input ids are `input`, or, given the previous queued
   * step's picks, those picks (taken on the device).
   */
  queueGreedy(input: readonly number[] | PendingPicks): PendingPicks {
    const queue = this.model.queueArgmax?.bind(this.model);
    if (!queue) throw new Error("queueGreedy: this model has no pipelined greedy steps");
    return this.queueStep(input, queue);
  }

  /**
   * queueGreedy for sampled steps (ForwardModel.queueSample): each sequence's next token drawn on
   * the device with its row of `rows`; input ids `input`, or the previous queued step's picks.
   */
  queueSample(input: readonly number[] | PendingPicks, rows: SampleRow[]): PendingModelSample {
    const queue = this.model.queueSample?.bind(this.model);
    if (!queue) throw new Error("queueSample: this model has no pipelined sampled steps");
    return this.queueStep(input, (batch, after) => queue(batch, rows, after));
  }

  /** One decode token for every sequence through `queue`, its ids `input` or the picks of the step queued before. */
  private queueStep<P>(input: readonly number[] | PendingPicks, queue: (batch: StepBatch, after: PendingPicks | null) => P): P {
    const after = Array.isArray(input) ? null : (input as PendingPicks);
    const batch = this.batchFor(after ? this.lens.map(() => [0]) : (input as readonly number[]).map((id) => [id]), 1);
    const out = queue(batch, after);
    for (let b = 0; b < this.batchSize; b++) this.lens[b]++;
    return out;
  }

  private batchFor(tokens: readonly (readonly number[])[], logitsFor: number): StepBatch {
    if (tokens.length !== this.batchSize) throw new Error(`expected ${this.batchSize} token lists, got ${tokens.length}`);
    const total = tokens.reduce((a, t) => a + t.length, 0);
    if (total === 0) throw new Error("append needs at least one token");
    const ids = new Int32Array(total);
    const positions = new Int32Array(total);
    const seqs: SeqSpan[] = [];
    const logitRows: number[] = [];
    let row = 0;
    tokens.forEach((t, b) => {
      if (t.length === 0) return; // this sequence sits this step out
      const start = this.lens[b];
      if (start + t.length > this.capacity) {
        throw new Error(`sequence of ${start + t.length} tokens exceeds the KV capacity ${this.capacity}`);
      }
      ids.set(t, row);
      positions.set(ramp(start, start + t.length), row);
      // Sequence b is slot-table row b; the step carries its new positions' slots.
      const slots = this.slots[b].subarray(start, start + t.length);
      seqs.push({ qStart: row, qLen: t.length, kvLen: start + t.length, row: b, slotsFrom: start, fullSlots: slots, swaSlots: slots });
      for (let i = Math.max(0, t.length - logitsFor); i < t.length; i++) logitRows.push(row + i);
      row += t.length;
    });
    return { ids, positions, seqs, logitRows: Int32Array.from(logitRows) };
  }
}

/** One sequence: a ContiguousBatch of one. */
export class SingleSequence {
  private readonly batch: ContiguousBatch;

  constructor(model: ForwardModel, capacity: number) {
    this.batch = new ContiguousBatch(model, 1, capacity);
  }

  get length(): number {
    return this.batch.length(0);
  }

  append(ids: readonly number[], logitsFor = 1): Float32Array {
    return this.batch.append([ids], logitsFor);
  }
}
