// Sampling on the device (sample.cu, CudaBackend.sampleRows) against a float64 host
// re-computation of the same filtered distribution in the same (index) token order: greedy
// corners, random logits over many u values, logprobs and top-N against log_softmax, top-p /
// min-p / tie corners, and the time of a batch-64 step against downloading its logits. Skipped
// without a CUDA device, like backend.test.ts.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import type { SampleRow } from "../backend.js";
import { GREEDY, Rng, applyEdits, argmax, logSoftmax, logitEdits, topEntries } from "../../engine/sampling.js";
import { CudaBackend } from "./backend.js";
import { probeCuda } from "./native.js";
import { randn } from "./check.js";

const probe = probeCuda();
const skip = probe.ok ? false : `no CUDA device (${probe.reason.split("\n")[0].replace(/; tried:$/, "")})`;
const MIB = 2 ** 20;
const VOCAB = 202048; // Llama 4
const U_TOL = 1e-5; // a neighbour is allowed only when u is this close to a cumulative boundary

type Params = Omit<SampleRow, "u" | "topN">;

/** The device's u: fp32, below 1. */
const devU = (u: number) => Math.min(Math.max(Math.fround(u), 0), 0.99999994);

/** The float64 reference of sample.cu's distribution: kept ids (index order) and their cumulative mass. */
class Reference {
  readonly ids: number[] = [];
  readonly cum: number[] = [];
  readonly total: number;
  /** A top-p or min-p decision within rounding of its boundary: the device may decide either way. */
  readonly ambiguous: boolean;

  constructor(x: Float32Array, order: Int32Array, p: Params) {
    const n = x.length;
    const mx = x[order[0]];
    const w = (j: number) => Math.exp((x[j] - mx) / p.temperature);
    const vk = p.topK > 0 && p.topK < n ? x[order[p.topK - 1]] : -Infinity;
    let vp = -Infinity;
    let ambiguous = false;
    if (p.topP < 1) {
      let zk = 0;
      for (let i = 0; i < n && x[order[i]] >= vk; i++) zk += w(order[i]);
      const target = p.topP * zk;
      let cum = 0;
      for (let i = 0; i < n && x[order[i]] >= vk; ) {
        const v = x[order[i]];
        const before = cum;
        while (i < n && x[order[i]] === v) cum += w(order[i++]);
        if (cum >= target) {
          vp = v;
          ambiguous = target - before < 1e-5 * zk || cum - target < 1e-5 * zk;
          break;
        }
      }
    }
    const thr = Math.max(vk, vp);
    let total = 0;
    for (let j = 0; j < n; j++) {
      const wj = w(j);
      if (p.minP > 0 && Math.abs(wj - p.minP) < 1e-6) ambiguous = true;
      if (x[j] >= thr && wj >= p.minP) {
        total += wj;
        this.ids.push(j);
        this.cum.push(total);
      }
    }
    this.total = total;
    this.ambiguous = ambiguous;
  }

  /** The ids the device may pick for u: the exact one, and a neighbour when u is at a boundary. */
  allowed(u: number): number[] {
    const r = u * this.total;
    let lo = 0;
    let hi = this.cum.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cum[mid] > r) hi = mid;
      else lo = mid + 1;
    }
    const out = [this.ids[lo]];
    if (lo > 0 && Math.abs(u - this.cum[lo - 1] / this.total) < U_TOL) out.push(this.ids[lo - 1]);
    if (lo + 1 < this.ids.length && Math.abs(this.cum[lo] / this.total - u) < U_TOL) out.push(this.ids[lo + 1]);
    return out;
  }
}

function descending(x: Float32Array): Int32Array {
  const order = Int32Array.from(x, (_, i) => i);
  order.sort((a, b) => x[b] - x[a] || a - b);
  return order;
}

describe("cuda sampling (sample.cu)", { skip }, () => {
  const rng = new Rng(97);
  let gpu: CudaBackend | undefined;
  const g = () => (gpu ??= new CudaBackend({ precision: "f32", memoryBytes: 1536 * MIB, stepBytes: 768 * MIB, poison: true }));
  after(() => gpu?.destroy());

  /** sampleRows of `rows` logit rows (each a full row of `x`, repeated per sampling row by `rowOf`). */
  function sample(x: Float32Array[], rows: SampleRow[], rowOf: (i: number) => number, dtype: "f32" | "bf16" = "f32") {
    const cols = x[0].length;
    const all = new Float32Array(rows.length * cols);
    rows.forEach((_, i) => all.set(x[rowOf(i)], i * cols));
    g().beginStep();
    return g().sampleRows(g().upload(all, [rows.length, cols], dtype), rows);
  }

  test("greedy: temperature 0, top_k 1 and a tiny temperature give the argmax (lowest index among ties)", () => {
    const rows = [randn(rng, VOCAB, 3), randn(rng, VOCAB, 3), randn(rng, 5000, 2)];
    rows[1][77] = rows[1][argmax(rows[1])]; // a tie for the max: lowest index wins for greedy rows
    for (const x of rows) {
      const want = argmax(x);
      const tied = x.filter((v) => v === x[want]).length > 1;
      const params: SampleRow[] = [
        { temperature: 0, topP: 1, topK: -1, minP: 0, u: 0.7, topN: 0 },
        { temperature: 1, topP: 0.9, topK: 1, minP: 0, u: 0.3, topN: 0 },
        ...(tied ? [] : [0.01, 0.5, 0.999].map((u) => ({ temperature: 1e-4, topP: 1, topK: -1, minP: 0, u, topN: 0 }))),
      ];
      const got = sample([x], params, () => 0);
      params.forEach((p, i) => assert.equal(got.ids[i], want, `row of ${x.length}, params ${JSON.stringify(p)}`));
    }
  });

  test("random logits, many u: the pick equals the float64 reference of the filtered distribution (index order)", () => {
    const paramSets: Params[] = [
      { temperature: 0.6, topP: 0.9, topK: -1, minP: 0 }, // the chat defaults
      { temperature: 1, topP: 1, topK: -1, minP: 0 }, // the full distribution
      { temperature: 1, topP: 1, topK: 50, minP: 0 },
      { temperature: 0.8, topP: 0.5, topK: 200, minP: 0.05 },
      { temperature: 1.3, topP: 1, topK: -1, minP: 0.1 },
      { temperature: 0.7, topP: 0.95, topK: 20, minP: 0 },
    ];
    const xs = [randn(rng, VOCAB, 2.5), randn(rng, VOCAB, 1), randn(rng, 3000, 4)]; // bf16-rounded: ties
    let checked = 0;
    let skipped = 0;
    for (const x of xs) {
      const order = descending(x);
      for (const p of paramSets) {
        const ref = new Reference(x, order, p);
        if (ref.ambiguous) {
          skipped++;
          continue;
        }
        const us = Array.from({ length: 64 }, (_, i) => (i === 0 ? 0 : i === 63 ? 1 - 2 ** -30 : rng.next()));
        const rows = us.map((u) => ({ ...p, u, topN: 0 }));
        const got = sample([x], rows, () => 0);
        us.forEach((u, i) => {
          const ok = ref.allowed(devU(u));
          assert.ok(ok.includes(got.ids[i]), `${x.length} cols, ${JSON.stringify(p)}, u ${u}: got ${got.ids[i]}, want ${ok} (${ref.ids.length} kept)`);
          checked++;
        });
      }
    }
    assert.ok(skipped <= 2, `${skipped} parameter sets at a rounding boundary`);
    assert.ok(checked >= 64 * 15);
  });

  test("logprob of the pick and top-N against log_softmax (fp32, 1e-4); bf16 logits too", () => {
    const xs = [randn(rng, VOCAB, 3), randn(rng, 1000, 1)];
    xs[0][5] = xs[0][9] = xs[0][argmax(xs[0])]; // ties at the top: lowest ids first
    for (const dtype of ["f32", "bf16"] as const) {
      for (const x of xs) {
        const lp = logSoftmax(x);
        const topNs = [0, 1, 5, 20];
        const rows = topNs.map((topN, i) => ({ temperature: 0.6, topP: 0.9, topK: -1, minP: 0, u: 0.1 + 0.2 * i, topN }));
        const got = sample([x], rows, () => 0, dtype);
        assert.ok(got.top, "top pairs come back");
        topNs.forEach((topN, i) => {
          assert.ok(Math.abs(got.logprobs[i] - lp[got.ids[i]]) < 1e-4, `logprob ${got.logprobs[i]} vs ${lp[got.ids[i]]}`);
          const want = topN > 0 ? topEntries(lp, topN) : [];
          assert.equal(got.top![i].length, topN);
          want.forEach(([id, v], k) => {
            assert.equal(got.top![i][k][0], id, `${dtype} top-${topN} entry ${k}`);
            assert.ok(Math.abs(got.top![i][k][1] - v) < 1e-4, `${dtype} top-${topN} entry ${k}: ${got.top![i][k][1]} vs ${v}`);
          });
        });
      }
    }
  });

  test("penalties and masks (logit edits): the draw and greedy follow the edited logits, logprobs stay raw", () => {
    const x = randn(rng, VOCAB, 3);
    const top = descending(x);
    const p = { ...GREEDY, repetitionPenalty: 1.3, frequencyPenalty: 0.4, presencePenalty: 0.2 };
    // the three best tokens as prompt / output / stop ids, plus ids outside the vocabulary
    const edits = logitEdits(p, [top[0], 5], [top[1], top[1], VOCAB + 3], [top[2]])!;
    const edited = new Float32Array(x);
    applyEdits(edited, edits);
    const lp = logSoftmax(x);
    const params: Params[] = [
      { temperature: 0, topP: 1, topK: -1, minP: 0 },
      { temperature: 0.7, topP: 0.9, topK: -1, minP: 0 },
      { temperature: 1, topP: 1, topK: 40, minP: 0.02 },
    ];
    const us = [0.05, 0.4, 0.77, 0.93];
    const rows: SampleRow[] = [];
    for (const q of params) for (const u of us) rows.push({ ...q, u, topN: 5, edits });
    // an unedited row in the same batch keeps the raw logits
    rows.push({ temperature: 0, topP: 1, topK: -1, minP: 0, u: 0, topN: 0 });
    const got = sample([x], rows, () => 0);
    const order = descending(edited);
    rows.forEach((r, i) => {
      if (!r.edits) return assert.equal(got.ids[i], top[0], "the unedited row");
      const allowed = r.temperature === 0 ? [argmax(edited)] : new Reference(edited, order, r).allowed(devU(r.u));
      assert.ok(allowed.includes(got.ids[i]), `row ${i} ${JSON.stringify({ ...r, edits: undefined })}: got ${got.ids[i]}, want ${allowed}`);
      assert.notEqual(got.ids[i], top[2], "a masked id is never drawn");
      assert.ok(Math.abs(got.logprobs[i] - lp[got.ids[i]]) < 1e-4, "the logprob is of the raw logits");
      assert.deepEqual(got.top![i].map(([id]) => id), topEntries(lp, 5).map(([id]) => id), "top logprobs are of the raw logits");
    });
  });

  test("corners: top_p 1, all mass on one token, ties at the top-k / top-p / min-p thresholds", () => {
    const n = 4096;
    // All mass on one token: whatever u, top_p, top_k.
    const one = new Float32Array(n);
    one[1234] = 1000;
    const us = [0, 0.25, 0.5, 0.999999];
    for (const p of [{ topP: 0.9, topK: -1 }, { topP: 1, topK: -1 }, { topP: 0.1, topK: 3 }]) {
      const got = sample([one], us.map((u) => ({ temperature: 0.6, minP: 0, u, topN: 0, ...p })), () => 0);
      us.forEach((_, i) => assert.equal(got.ids[i], 1234, JSON.stringify(p)));
    }
    // Four equal maxima (ids 10, 20, 30, 40) well above the rest: top_k 2, top_p 0.3 and min_p 1
    // keep all four (ties together), each with a quarter of the draw.
    const tie = new Float32Array(n).fill(-5);
    for (const id of [10, 20, 30, 40]) tie[id] = 20;
    const quarters = [0.1, 0.35, 0.6, 0.85];
    for (const p of [{ topK: 2, topP: 1, minP: 0 }, { topK: -1, topP: 0.3, minP: 0 }, { topK: -1, topP: 1, minP: 1 }]) {
      const got = sample([tie], quarters.map((u) => ({ temperature: 1, topN: 0, u, ...p })), () => 0);
      assert.deepEqual([...got.ids], [10, 20, 30, 40], JSON.stringify(p));
    }
    // top_p 1 with two tokens: the draw splits at their mass.
    const two = new Float32Array(n).fill(-1e4);
    two[7] = Math.log(0.25);
    two[3000] = Math.log(0.75);
    const got = sample([two], [0.2, 0.3, 0.9].map((u) => ({ temperature: 1, topP: 1, topK: -1, minP: 0, u, topN: 0 })), () => 0);
    assert.deepEqual([...got.ids], [7, 3000, 3000]);
    // min_p 0.5 at T 1: tokens with p ≥ p_max / 2; top_p 0.7 then keeps only the larger one.
    const mp = new Float32Array(n).fill(-1e4);
    mp[100] = 0;
    mp[200] = Math.log(0.6);
    mp[300] = Math.log(0.4);
    const a = sample([mp], [0.5, 0.99].map((u) => ({ temperature: 1, topP: 1, topK: -1, minP: 0.5, u, topN: 0 })), () => 0);
    assert.deepEqual([...a.ids], [100, 200]); // 300 is below the floor; 100 has 1/1.6 of the mass
    const b = sample([mp], [0.5, 0.99].map((u) => ({ temperature: 1, topP: 0.4, topK: -1, minP: 0, u, topN: 0 })), () => 0);
    assert.deepEqual([...b.ids], [100, 100]); // the nucleus is the max alone (1/2 ≥ 0.4)
    // top_p 0.6 takes the next token in too (1/2 < 0.6 ≤ 0.8): u splits 1 : 0.6
    const c = sample([mp], [0.5, 0.99].map((u) => ({ temperature: 1, topP: 0.6, topK: -1, minP: 0, u, topN: 0 })), () => 0);
    assert.deepEqual([...c.ids], [100, 200]);
  });

  test("timing: sampleRows at batch 64 against downloading the logits", () => {
    const rows = 64;
    const base = randn(rng, VOCAB, 3);
    const params = Array.from({ length: rows }, () => ({ temperature: 0.6, topP: 0.9, topK: -1, minP: 0, u: rng.next(), topN: 0 }));
    const all = new Float32Array(rows * VOCAB);
    for (let r = 0; r < rows; r++) all.set(base, r * VOCAB);
    g().beginStep();
    const x = g().upload(all, [rows, VOCAB], "f32");
    const wall = (fn: () => void, reps = 10) => {
      fn();
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) fn();
      return (performance.now() - t0) / reps;
    };
    const sampleMs = wall(() => g().sampleRows(x, params));
    const withTopMs = wall(() => g().sampleRows(x, params.map((p) => ({ ...p, topN: 5 }))));
    const kernelMs = g().time(() => g().sampleRows(x, params)); // device events around launch + small download
    const downloadMs = wall(() => g().toHost(x));
    console.log(
      `sampleRows batch ${rows} × ${VOCAB} (T 0.6, top_p 0.9): ${sampleMs.toFixed(3)} ms wall (${kernelMs.toFixed(3)} ms device), ` +
        `with top-5 logprobs ${withTopMs.toFixed(3)} ms; the logits download alone ${downloadMs.toFixed(3)} ms (before any host sampling)`,
    );
  });
});
