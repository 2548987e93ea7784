// A slow, obviously correct reference for tensor selections, for checking the loader's strided
// reads: it gathers the selected elements one by one by their multi-index.

/** Ranges [start, length) per dim, concatenated in order; dims not listed are kept whole. */
export type RefSelection = Record<number, [number, number][]>;

/** The row-major bytes of selection `sel` of a tensor with `shape` and `elem` bytes per element. */
export function selectRef(data: Uint8Array, shape: number[], elem: number, sel: RefSelection = {}): Uint8Array {
  const keep = shape.map((d, i) => (sel[i] ?? [[0, d]]).flatMap(([s, n]) => Array.from({ length: n }, (_, j) => s + j)));
  const count = keep.reduce((a, k) => a * k.length, 1);
  const out = new Uint8Array(count * elem);
  const idx = keep.map(() => 0);
  for (let o = 0; o < count; o++) {
    let flat = 0;
    for (let d = 0; d < shape.length; d++) flat = flat * shape[d]! + keep[d]![idx[d]!]!;
    out.set(data.subarray(flat * elem, (flat + 1) * elem), o * elem);
    for (let d = shape.length - 1; d >= 0 && ++idx[d]! === keep[d]!.length; d--) idx[d] = 0; // odometer
  }
  return out;
}
