// One sequence on a contiguous KV cache (slot = position): the simplest driver of the model,
// used by `tsglang generate` and the golden-reference tests. The server's scheduler drives the
// same model through pooled, shared KV instead.

import type { SeqSpan, StepBatch } from "../runtime/backend.js";
import type { Llama4Model } from "../model/llama4.js";

export class SingleSequence {
  private len = 0;
  private readonly slots: Int32Array;

  constructor(
    private readonly model: Llama4Model,
    readonly capacity: number,
  ) {
    this.slots = Int32Array.from({ length: capacity }, (_, i) => i);
    model.allocKv({ full: capacity, swa: capacity });
  }

  get length(): number {
    return this.len;
  }

  /**
   * Appends tokens and returns logits for the last `logitsFor` of them (all of them when
   * equal to ids.length) as one [rows, vocab] array.
   */
  append(ids: readonly number[], logitsFor = 1): Float32Array {
    if (ids.length === 0) throw new Error("append needs at least one token");
    if (this.len + ids.length > this.capacity) {
      throw new Error(`sequence of ${this.len + ids.length} tokens exceeds the KV capacity ${this.capacity}`);
    }
    const n = ids.length;
    const seq: SeqSpan = { qStart: 0, qLen: n, kvLen: this.len + n, fullSlots: this.slots, swaSlots: this.slots };
    const rows = Math.min(logitsFor, n);
    const batch: StepBatch = {
      ids: Int32Array.from(ids),
      positions: Int32Array.from({ length: n }, (_, i) => this.len + i),
      seqs: [seq],
      logitRows: Int32Array.from({ length: rows }, (_, i) => n - rows + i),
    };
    const logits = this.model.forward(batch);
    this.len += n;
    return logits;
  }
}
