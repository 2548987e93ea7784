// Per-token work of a step's host side without per-element JavaScript: copies through
// TypedArray.set/fill/indexOf, native builtins. Why: a step's metadata is built once per step, so
// V8 runs such loops in its interpreter for the first dozen steps — a 2048-token prefill spent
// ~1.2 ms building slot tables and attention metadata with the GPU idle (bench/prefill_order.ts
// on an H100: 1.0–1.6 ms from the embedding to the first attention enqueued in a process's first
// prefills, 0.27 ms once warm). Not Math.min/max.apply over long arrays for range checks: that
// spreads every element as an argument and cost batch-64 decode ~2.5 ms a step (64 sequences ×
// 1K-token windows), ten times the warm loop.

let rampBuf = new Int32Array(0);

/** The positions from, from + 1, …, to − 1 as a view of a shared array (copy it, never write it). */
export function ramp(from: number, to: number): Int32Array {
  if (to > rampBuf.length) {
    rampBuf = new Int32Array(Math.max(to, 2 * rampBuf.length, 4096));
    for (let i = 0; i < rampBuf.length; i++) rampBuf[i] = i;
  }
  return rampBuf.subarray(from, to);
}
