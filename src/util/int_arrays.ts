// Per-token work of a step's host side without per-element JavaScript: copies through
// TypedArray.set/fill and range checks through Math.min/max, all native builtins. Why: a step's
// metadata is built once per step, so V8 runs those loops in its interpreter for the first
// dozen steps — a 2048-token prefill spent ~1.2 ms building slot tables and attention metadata
// with the GPU idle (bench/prefill_order.ts on an H100: 1.0–1.6 ms from the embedding to the
// first attention enqueued in a process's first prefills, 0.27 ms once warm).

let rampBuf = new Int32Array(0);

/** The positions from, from + 1, …, to − 1 as a view of a shared array (copy it, never write it). */
export function ramp(from: number, to: number): Int32Array {
  if (to > rampBuf.length) {
    rampBuf = new Int32Array(Math.max(to, 2 * rampBuf.length, 4096));
    for (let i = 0; i < rampBuf.length; i++) rampBuf[i] = i;
  }
  return rampBuf.subarray(from, to);
}

const CHUNK = 16384; // elements per Math.min/max call: far below any engine's argument limit

/** Whether every element lies in [lo, hi): true for an empty array. */
export function allInRange(a: Int32Array, lo: number, hi: number): boolean {
  for (let i = 0; i < a.length; i += CHUNK) {
    const c = a.subarray(i, Math.min(a.length, i + CHUNK)) as unknown as number[];
    if (Math.min.apply(null, c) < lo || Math.max.apply(null, c) >= hi) return false;
  }
  return true;
}

/** The index of the first element outside [lo, hi), or −1 (for error messages: a plain loop). */
export function firstOutOfRange(a: Int32Array, lo: number, hi: number): number {
  for (let i = 0; i < a.length; i++) if (!(a[i] >= lo && a[i] < hi)) return i;
  return -1;
}
