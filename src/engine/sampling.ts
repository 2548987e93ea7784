// Sampling on host logits: penalties, temperature, top-k, top-p, min-p, seeded draws, and
// log-probabilities. Temperature 0 (or top_k 1) is greedy with the lowest index winning ties,
// so greedy output is a pure function of the logits. A sampled token takes exactly one uniform draw
// from the request's Rng (sampleTokenWith takes it as an argument); the device sampler
// (native/kernels/sample.cu) takes the same draw and the same filters, but walks the kept tokens in
// index order rather than by logit, so a given draw may pick a different (equally distributed) token.

import { EDIT_MASK, EDIT_REPEAT, type LogitEdits } from "../runtime/backend.js";
import { Rng } from "../util/rng.js";

export { Rng, EDIT_MASK, EDIT_REPEAT, type LogitEdits };

export interface SamplingParams {
  temperature: number;
  topP: number;
  topK: number; // -1 or 0 = off
  minP: number;
  frequencyPenalty: number;
  presencePenalty: number;
  repetitionPenalty: number;
  /** OpenAI's logit_bias: [token id, bias] pairs added to the logits before sampling. */
  logitBias?: readonly (readonly [number, number])[];
  seed?: number;
}

export const GREEDY: SamplingParams = {
  temperature: 0,
  topP: 1,
  topK: -1,
  minP: 0,
  frequencyPenalty: 0,
  presencePenalty: 0,
  repetitionPenalty: 1,
};

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** log_softmax in float64. */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** The k largest entries as [id, value] pairs, largest first (ties: lower id first). */
export function topEntries(values: ArrayLike<number>, k: number): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (out.length === k && v <= out[k - 1][1]) continue;
    let j = out.length < k ? out.length : k - 1;
    if (out.length < k) out.push([i, v]);
    else out[j] = [i, v];
    while (j > 0 && out[j - 1][1] < out[j][1]) {
      [out[j - 1], out[j]] = [out[j], out[j - 1]];
      j--;
    }
  }
  return out;
}

/** The edits a request's next token needs, or null when there are none. */
export function logitEdits(p: SamplingParams, promptIds: readonly number[], outputIds: readonly number[], maskIds: readonly number[] = []): LogitEdits | null {
  const entry = new Map<number, { flags: number; sub: number }>();
  const at = (id: number) => {
    let e = entry.get(id);
    if (!e) entry.set(id, (e = { flags: 0, sub: 0 }));
    return e;
  };
  if (p.repetitionPenalty !== 1) {
    for (const id of promptIds) at(id).flags |= EDIT_REPEAT;
    for (const id of outputIds) at(id).flags |= EDIT_REPEAT;
  }
  if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
    const counts = new Map<number, number>();
    for (const id of outputIds) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, c] of counts) at(id).sub = p.frequencyPenalty * c + p.presencePenalty;
  }
  for (const [id, bias] of p.logitBias ?? []) at(id).sub -= bias;
  for (const id of maskIds) at(id).flags |= EDIT_MASK;
  if (entry.size === 0) return null;
  const ids = new Int32Array(entry.size);
  const flags = new Uint8Array(entry.size);
  const sub = new Float32Array(entry.size);
  let i = 0;
  for (const [id, e] of entry) {
    ids[i] = id;
    flags[i] = e.flags;
    sub[i++] = e.sub;
  }
  return { ids, flags, sub, repetition: p.repetitionPenalty };
}

/** Applies edits in place (ids outside the row are ignored, as on the device). */
export function applyEdits(logits: Float32Array, e: LogitEdits): void {
  for (let i = 0; i < e.ids.length; i++) {
    const id = e.ids[i];
    if (id < 0 || id >= logits.length) continue;
    let v = logits[id];
    if (e.flags[i] & EDIT_REPEAT) v = v > 0 ? v / e.repetition : v * e.repetition;
    // fp32 like the device, so both pick from the same numbers
    logits[id] = e.flags[i] & EDIT_MASK ? -Infinity : Math.fround(v - e.sub[i]);
  }
}

/** True when sampleToken is the argmax and draws nothing from the Rng. */
export function isGreedy(p: Pick<SamplingParams, "temperature" | "topK">): boolean {
  return p.temperature <= 0 || p.topK === 1;
}

/** Picks the next token from (already penalised) logits. */
export function sampleToken(logits: Float32Array, p: SamplingParams, rng: Rng): number {
  if (isGreedy(p)) return argmax(logits);
  return sampleTokenWith(logits, p, rng.next());
}

/**
 * sampleToken with its one uniform draw `u` in [0, 1) given (greedy parameters ignore it):
 * sampleToken(l, p, rng) === sampleTokenWith(l, p, rng.next()) for non-greedy p.
 */
export function sampleTokenWith(logits: Float32Array, p: Pick<SamplingParams, "temperature" | "topK" | "topP" | "minP">, u: number): number {
  if (isGreedy(p)) return argmax(logits);
  const k = p.topK > 0 ? Math.min(p.topK, logits.length) : logits.length;
  // Candidates sorted by logit; for full-vocab sampling sort only what top-p can reach.
  const cand = k < logits.length ? topEntries(logits, k) : sortedEntries(logits);
  const maxLogit = cand[0][1];
  const probs = cand.map(([, v]) => Math.exp((v - maxLogit) / p.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  let keep = probs.length;
  if (p.minP > 0) {
    const floor = p.minP * (probs[0] / total);
    keep = probs.findIndex((q) => q / total < floor);
    if (keep < 1) keep = keep === 0 ? 1 : probs.length;
  }
  if (p.topP < 1) {
    let cum = 0;
    for (let i = 0; i < keep; i++) {
      cum += probs[i] / total;
      if (cum >= p.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  total = 0;
  for (let i = 0; i < keep; i++) total += probs[i];
  let r = u * total;
  for (let i = 0; i < keep; i++) {
    r -= probs[i];
    if (r < 0) return cand[i][0];
  }
  return cand[keep - 1][0];
}

function sortedEntries(values: Float32Array): [number, number][] {
  const idx = Array.from(values, (v, i) => [i, v] as [number, number]);
  idx.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  return idx;
}
