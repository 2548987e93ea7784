// The CUDA backend against the CPU backend (every op, random inputs, NaN-poisoned outputs) and
// against transformers' float64 goldens through the whole model. Without a CUDA device (CI) the
// GPU tests are skipped with the reason; the addon's clear-error path is checked everywhere.
//
// Two precisions: "f32" reproduces the CPU backend to float rounding, so it checks every
// kernel's indexing and masking exactly; "bf16" is the serving mode and gets bf16 tolerances.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { CpuBackend, CpuTensor } from "../cpu.js";
import type { AttentionParams, AttentionSpec, SeqSpan, StepBatch } from "../backend.js";
import { Rng, argmax, logSoftmax } from "../../engine/sampling.js";
import { SingleSequence } from "../../engine/sequence.js";
import { readGolden } from "../../model/golden.js";
import { loadModel } from "../../model/loader.js";
import { fixturePath, packageRoot } from "../../util/repo.js";
import { CudaBackend, type Precision, createCudaBackendChoice, cudaDeviceCount } from "./backend.js";
import { probeCuda } from "./native.js";
import { close, host, randn, relErr } from "./check.js";

const probe = probeCuda();
const skip = probe.ok ? false : `no CUDA device (${probe.reason.split("\n")[0].replace(/; tried:$/, "")})`;

test("the native layer loads or says clearly why not", () => {
  if (probe.ok) {
    console.log(`# CUDA device: ${probe.info.name}, sm_${probe.info.ccMajor}${probe.info.ccMinor}, ${probe.info.smCount} SMs, ${(probe.info.totalBytes / 2 ** 30).toFixed(1)} GiB, driver ${probe.info.driverVersion}`);
  } else {
    assert.match(probe.reason, /^tsglang/);
    console.log(`# ${skip}`);
  }
});

// ---- helpers ----

const MIB = 2 ** 20;





const TOL: Record<Precision, number> = { bf16: 1.5e-2, f32: 2e-5 };

function makeBackend(precision: Precision): CudaBackend {
  return new CudaBackend({ precision, memoryBytes: 1024 * MIB, stepBytes: 256 * MIB, poison: true });
}

// ---- ops ----

for (const precision of ["f32", "bf16"] as const) {
  describe(`cuda ops vs cpu (${precision})`, { skip }, () => {
    const rng = new Rng(1234);
    const cpu = new CpuBackend();
    let gpu: CudaBackend;
    const tol = TOL[precision];
    const g = () => (gpu ??= makeBackend(precision));
    after(() => gpu?.destroy());

    test("embedding", () => {
      const table = randn(rng, 50 * 96);
      const ids = Int32Array.from([3, 0, 49, 7, 7, 21, 13, 1, 48, 2, 30, 5, 9]);
      const want = cpu.embedding(cpu.weight(host(table, [50, 96])), ids).data;
      const got = g().toHost(g().embedding(g().weight(host(table, [50, 96])), ids));
      close(got, want, 1e-7, "embedding");
      assert.throws(() => g().embedding(g().weight(host(table, [50, 96])), Int32Array.from([50])), /outside the vocabulary/);
      // A vocabulary slice (tensor parallelism): rows [100, 150).
      const slice = Int32Array.from(ids, (id) => id + 100);
      close(g().toHost(g().embedding(g().weight(host(table, [50, 96])), slice, 100)), cpu.embedding(cpu.weight(host(table, [50, 96])), slice, 100).data, 1e-7, "embedding slice");
    });

    test("randomWeight: deterministic normal(0, std), constant fill", () => {
      const n = 100001;
      const a = g().toHost(g().randomWeight([n], 0.02, 7));
      const b = g().toHost(g().randomWeight([n], 0.02, 7));
      const c = g().toHost(g().randomWeight([n], 0.02, 8));
      assert.deepEqual(a, b);
      assert.notDeepEqual(a, c);
      let mean = 0;
      for (const v of a) mean += v / n;
      let variance = 0;
      for (const v of a) variance += (v - mean) ** 2 / n;
      assert.ok(Math.abs(mean) < 0.001 && Math.abs(Math.sqrt(variance) - 0.02) < 0.0005, `mean ${mean}, std ${Math.sqrt(variance)}`);
      assert.ok(g().toHost(g().randomWeight([3, 5], 0, 1, 1)).every((v) => v === 1));
    });

    test("rmsNorm, addRmsNorm and add (fp32 residual, d not a multiple of 32)", () => {
      const n = 7, d = 200;
      const x = randn(rng, n * d, 3);
      const r = randn(rng, n * d);
      const w = randn(rng, d);
      g().beginStep();
      const wc = cpu.weight(host(w, [d])), wg = g().weight(host(w, [d]));
      close(g().toHost(g().rmsNorm(g().upload(x, [n, d]), wg, 1e-5)), cpu.rmsNorm(new CpuTensor([n, d], x.slice()), wc, 1e-5).data, tol, "rmsNorm");

      const rc = new CpuTensor([n, d], r.slice());
      const rg = g().upload(r, [n, d]);
      const xg = g().upload(x, [n, d], precision);
      const outC = cpu.addRmsNorm(rc, new CpuTensor([n, d], x.slice()), wc, 1e-5);
      const outG = g().addRmsNorm(rg, xg, wg, 1e-5);
      close(g().toHost(outG), outC.data, tol, "addRmsNorm output");
      close(g().toHost(rg), rc.data, 1e-6, "addRmsNorm residual");

      cpu.add(rc, new CpuTensor([n, d], x.slice()));
      g().add(rg, xg);
      close(g().toHost(rg), rc.data, 1e-6, "add");
    });

    test("linear: [out, in] and transposed-stored weights, odd sizes, fp32 output", () => {
      for (const [n, inDim, out] of [[1, 64, 40], [5, 72, 40], [33, 256, 384], [130, 128, 4]]) {
        g().beginStep();
        const x = randn(rng, n * inDim);
        const w = randn(rng, out * inDim, 0.1);
        const want = cpu.linear(new CpuTensor([n, inDim], x), cpu.weight(host(w, [out, inDim]))).data;
        const xg = g().upload(x, [n, inDim], precision);
        close(g().toHost(g().linear(xg, g().weight(host(w, [out, inDim])))), want, tol, `linear ${n}×${inDim}→${out}`);
        close(g().toHost(g().linear(xg, g().weight(host(w, [out, inDim])), { outF32: true })), want, tol, `linear fp32 out ${n}×${inDim}→${out}`);
        // The same weight stored [in, out] (as the fused expert tensors are) and loaded with transpose.
        const wt = new Float32Array(out * inDim);
        for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) wt[i * out + o] = w[o * inDim + i];
        close(g().toHost(g().linear(xg, g().weight(host(wt, [inDim, out]), { transpose: true }))), want, tol, `linear transposed ${n}×${inDim}→${out}`);
      }
      console.log(`# ${precision}: ${g().stats().fallbackGemms} GEMMs fell back to the simple kernel`);
    });

    test("prepareGemms plans every row bucket once; linears after it match and repeat exactly", () => {
      const inDim = 96, out = 136, e = 3;
      g().beginStep();
      const w = randn(rng, out * inDim, 0.1);
      const experts = randn(rng, e * out * inDim, 0.1);
      const wg = g().weight(host(w, [out, inDim]));
      const eg = g().weight(host(experts, [e, out, inDim]));
      const fallbacks = g().stats().fallbackGemms;
      // wg and expert 0 share one shape (one set of plans); fp32 output is another in bf16 mode
      // (in f32 mode every output is fp32: the same plans).
      const r = g().prepareGemms([
        { weight: wg, maxRows: 300 },
        { weight: eg, maxRows: 40 },
        { weight: wg, maxRows: 10, outF32: true },
      ]);
      assert.equal(r.shapes, precision === "bf16" ? 2 : 1);
      assert.ok(r.gemms >= 300 / 32, `${r.gemms} GEMMs planned`);
      for (const n of [1, 5, 17, 100, 130, 257, 300]) {
        g().beginStep();
        const x = randn(rng, n * inDim);
        const want = cpu.linear(new CpuTensor([n, inDim], x), cpu.weight(host(w, [out, inDim]))).data;
        const xg = g().upload(x, [n, inDim], precision);
        const a = g().toHost(g().linear(xg, wg));
        close(a, want, tol, `linear ${n} rows after prepareGemms`);
        assert.deepEqual(g().toHost(g().linear(xg, wg)), a, `linear ${n} rows: the same algorithm twice`);
        close(g().toHost(g().linear(xg, wg, { outF32: true })), want, tol, `fp32 linear ${n} rows after prepareGemms`);
      }
      assert.equal(g().stats().fallbackGemms, fallbacks, "no GEMM fell back");
    });

    test("the fallback GEMM kernel", () => {
      const fb = new CudaBackend({ precision, memoryBytes: 128 * MIB, stepBytes: 32 * MIB, poison: true, fallbackGemm: true });
      try {
        const n = 19, inDim = 80, out = 45;
        const x = randn(rng, n * inDim);
        const w = randn(rng, out * inDim, 0.1);
        const want = cpu.linear(new CpuTensor([n, inDim], x), cpu.weight(host(w, [out, inDim]))).data;
        close(fb.toHost(fb.linear(fb.upload(x, [n, inDim], precision), fb.weight(host(w, [out, inDim])))), want, tol, "fallback gemm");
      } finally {
        fb.destroy();
      }
    });

    test("siluMul and gatherRows", () => {
      g().beginStep();
      const n = 9, f = 70;
      const gu = randn(rng, n * 2 * f, 2);
      const want = cpu.siluMul(new CpuTensor([n, 2 * f], gu)).data;
      const got = g().siluMul(g().upload(gu, [n, 2 * f], precision));
      close(g().toHost(got), want, tol, "siluMul");
      const rows = Int32Array.from([8, 0, 3, 3]);
      close(g().toHost(g().gatherRows(got, rows)), cpu.gatherRows(new CpuTensor([n, f], want), rows).data, tol, "gatherRows");
      assert.throws(() => g().gatherRows(got, Int32Array.from([9])), /outside/);
    });

    for (const dim of [16, 32, 64, 128]) {
      test(`attention, head_dim ${dim}: RoPE/qk-norm/chunked, NoPE/temperature/global, SWA pool; prefill, decode, chunk crossings`, () => {
        const hq = 8, hkv = 2, chunk = 8, fullSlots = 96, swaSlots = 48;
        const invFreq = new Float32Array(dim / 2).map((_, i) => Math.fround(1 / Math.pow(10000, (2 * i) / dim)));
        const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq, floorScale: 4, attnScale: 0.3 };
        const layers: AttentionSpec[] = [
          { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: chunk, pool: "full" },
          { rope: false, qkNorm: false, temperatureTuning: true, chunkSize: 0, pool: "full" },
          { rope: true, qkNorm: false, temperatureTuning: false, chunkSize: chunk, pool: "swa" },
        ];
        cpu.allocKv(params, layers, { full: fullSlots, swa: swaSlots, rows: 2, context: 48 });
        g().allocKv(params, layers, { full: fullSlots, swa: swaSlots, rows: 2, context: 48 });
        // Two sequences with scattered slots; the SWA pool holds only each sequence's live chunk.
        const perm = Int32Array.from({ length: fullSlots }, (_, i) => i);
        for (let i = fullSlots - 1; i > 0; i--) {
          const j = Math.floor(rng.next() * (i + 1));
          [perm[i], perm[j]] = [perm[j], perm[i]];
        }
        const seqFull = [perm.subarray(0, 48), perm.subarray(48, 96)];
        const swaBase = [0, 24];
        const lens = [0, 0];
        const steps = [[20, 7], [1, 1], [5, 0], [1, 11], [3, 1]]; // new tokens per sequence per step
        for (const [si, step] of steps.entries()) {
          const seqs: SeqSpan[] = [];
          const positions: number[] = [];
          let row = 0;
          for (let s = 0; s < 2; s++) {
            const q = step[s];
            if (q === 0) continue;
            const kvLen = lens[s] + q;
            // SWA slots: a ring of `chunk`·3 per sequence, valid only from the current chunk's start.
            const swa = new Int32Array(kvLen).fill(-1);
            const liveFrom = lens[s] - (lens[s] % chunk);
            for (let u = liveFrom; u < kvLen; u++) swa[u] = swaBase[s] + (u % (3 * chunk));
            // Sequence s is table row s; a step carries its new positions' slots only.
            seqs.push({ qStart: row, qLen: q, kvLen, row: s, slotsFrom: lens[s], fullSlots: seqFull[s].subarray(lens[s], kvLen), swaSlots: swa.subarray(lens[s], kvLen) });
            for (let i = 0; i < q; i++) positions.push(lens[s] + i);
            row += q;
            lens[s] = kvLen;
          }
          const n = row;
          const batch: StepBatch = { ids: new Int32Array(n), positions: Int32Array.from(positions), seqs, logitRows: new Int32Array(0) };
          g().beginStep();
          const qd = randn(rng, n * hq * dim), kd = randn(rng, n * hkv * dim), vd = randn(rng, n * hkv * dim);
          for (const [li, spec] of layers.entries()) {
            const want = cpu.attention(li, spec, new CpuTensor([n, hq * dim], qd), new CpuTensor([n, hkv * dim], kd), new CpuTensor([n, hkv * dim], vd), batch).data;
            const got = g().attention(li, spec, g().upload(qd, [n, hq * dim], precision), g().upload(kd, [n, hkv * dim], precision), g().upload(vd, [n, hkv * dim], precision), batch);
            close(g().toHost(got), want, tol, `step ${si} layer ${li}`);
          }
        }
      });
    }

    test("q, k, v stored side by side (splitRows): one GEMM at prefill sizes, its column blocks through attention", () => {
      const hq = 4, hkv = 2, dim = 64, inDim = 96, n = 40; // 40 rows: past the GEMV kernels, one GEMM
      const counts = [hq * dim, hkv * dim, hkv * dim];
      const ws = counts.map((c) => randn(rng, c * inDim, 0.1));
      const stacked = new Float32Array(ws.reduce((a, w) => a + w.length, 0));
      ws.reduce((at, w) => (stacked.set(w, at), at + w.length), 0);
      const views = g().splitRows(g().weight(host(stacked, [stacked.length / inDim, inDim])), counts);
      assert.deepEqual(views.map((v) => v.shape), counts.map((c) => [c, inDim]));
      const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq: new Float32Array(dim / 2).map((_, i) => Math.fround(1 / Math.pow(10000, (2 * i) / dim))), floorScale: 4, attnScale: 0.3 };
      const spec: AttentionSpec = { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: 16, pool: "full" };
      g().allocKv(params, [spec, spec], { full: 2 * n, swa: 0, rows: 2, context: n });
      g().beginStep();
      const x = randn(rng, n * inDim);
      const xg = g().upload(x, [n, inDim], precision);
      const [q, k, v] = g().linearMany(xg, views);
      const host3 = [q, k, v].map((t) => g().toHost(t));
      for (const [i, got] of host3.entries()) {
        const want = cpu.linear(new CpuTensor([n, inDim], x.slice()), cpu.weight(host(ws[i], [counts[i], inDim]))).data;
        close(got, want, tol, `linearMany over splitRows views, part ${i}`);
        close(g().toHost(g().linear(xg, views[i])), want, tol, `linear by one view, part ${i}`);
      }
      assert.throws(() => g().rmsNorm(q, g().weight(host(new Float32Array(hq * dim).fill(1), [hq * dim])), 1e-5), /column block/);
      // The same rows, once as column blocks of the one output and once as separate tensors (two
      // layers, two KV pools): the same attention, bit for bit.
      const batch: StepBatch = { ids: new Int32Array(n), positions: Int32Array.from({ length: n }, (_, i) => i), seqs: [{ qStart: 0, qLen: n, kvLen: n, row: 0, slotsFrom: 0, fullSlots: Int32Array.from({ length: n }, (_, i) => i), swaSlots: new Int32Array(n).fill(-1) }], logitRows: new Int32Array(0) };
      const packed = g().toHost(g().attention(0, spec, q, k, v, batch));
      const [qs, ks, vs] = host3.map((h, i) => g().upload(h, [n, counts[i]], precision));
      const separate = g().toHost(g().attention(1, spec, qs, ks, vs, batch));
      assert.deepEqual(packed, separate);
    });

    test("per-layer activation regions are recycled, and a recycled tensor is an error", () => {
      const be = new CudaBackend({ precision, memoryBytes: 64 * MIB, stepBytes: 8 * MIB, poison: true });
      try {
        const n = 64, hq = 8, hkv = 2, dim = 64;
        const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq: new Float32Array(dim / 2).fill(0.01), floorScale: 8, attnScale: 0.1 };
        const spec: AttentionSpec = { rope: true, qkNorm: false, temperatureTuning: false, chunkSize: 0, pool: "full" };
        be.allocKv(params, [spec], { full: n, swa: 0, rows: 1, context: n });
        const slots = Int32Array.from({ length: n }, (_, i) => i);
        const batch: StepBatch = { ids: new Int32Array(n), positions: slots, seqs: [{ qStart: 0, qLen: n, kvLen: n, row: 0, slotsFrom: 0, fullSlots: slots, swaSlots: slots }], logitRows: new Int32Array(0) };
        const q = randn(rng, n * hq * dim), kv = randn(rng, n * hkv * dim);
        be.beginStep();
        const layer = () => be.attention(0, spec, be.upload(q, [n, hq * dim], precision), be.upload(kv, [n, hkv * dim], precision), be.upload(kv, [n, hkv * dim], precision), batch);
        const outs = [layer()];
        const first = be.toHost(outs[0]);
        // 100 layers' activations (~10× the step arena) in one step: only two layers are live.
        for (let i = 1; i <= 100; i++) {
          outs.push(layer());
          close(be.toHost(outs[i]), first, 1e-6, `layer ${i}`);
          close(be.toHost(outs[i - 1]), first, 1e-6, `layer ${i - 1} after layer ${i}`);
          if (i >= 2) assert.throws(() => be.toHost(outs[i - 2]), /recycled/);
        }
      } finally {
        be.destroy();
      }
    });

    test("attention rejects a missing KV slot instead of reading it", () => {
      const params: AttentionParams = { numHeads: 2, numKvHeads: 1, headDim: 16, eps: 1e-5, invFreq: new Float32Array(8).fill(0.1), floorScale: 8, attnScale: 0.1 };
      const global: AttentionSpec = { rope: true, qkNorm: false, temperatureTuning: false, chunkSize: 0, pool: "full" };
      const local: AttentionSpec = { ...global, chunkSize: 4, pool: "swa" };
      const step = (spec: AttentionSpec, kvLen: number, full: number[], swa: number[]) => () => {
        g().beginStep();
        const q = g().upload(randn(rng, 32), [1, 32], precision);
        const kv = g().upload(randn(rng, 16), [1, 16], precision);
        const seq = { qStart: 0, qLen: 1, kvLen, row: 0, slotsFrom: 0, fullSlots: Int32Array.from(full), swaSlots: Int32Array.from(swa) };
        g().attention(spec === global ? 0 : 1, spec, q, kv, kv, { ids: new Int32Array(1), positions: Int32Array.from([kvLen - 1]), seqs: [seq], logitRows: new Int32Array(0) });
      };
      g().allocKv(params, [global, local], { full: 8, swa: 8, rows: 1, context: 8 });
      // A full slot is never gone, and every slot must lie inside its pool.
      assert.throws(step(global, 3, [0, -1, 2], [0, 1, 2]), /full slot -1 for position 1 is outside the pool of 8/);
      assert.throws(step(global, 3, [0, 1, 9], [0, 1, 2]), /full slot 9 for position 2/);
      // SWA KV may be gone before the live chunk ([4, 6) here), not inside it.
      assert.doesNotThrow(step(local, 6, [0, 1, 2, 3, 4, 5], [-1, -1, -1, -1, 4, 5]));
      assert.throws(step(local, 6, [0, 1, 2, 3, 4, 5], [-1, -1, -1, -1, -1, 5]), /KV for position 4 is gone/);
    });

    test("device count, backend choice and copy bandwidth", async () => {
      assert.ok(cudaDeviceCount() >= 1);
      await assert.rejects(createCudaBackendChoice("cpu"), /needs --device cpu/); // fa3 and auto: attention.test.ts
      const { bytesPerS: bw, bytes } = g().copyBandwidth(256 * MIB);
      assert.ok(bw > 1e9 && Number.isFinite(bw), `copy bandwidth ${bw}`);
      assert.ok(bytes > 0 && bytes <= 256 * MIB, `copied ${bytes} bytes`);
      console.log(`# ${precision}: device-to-device copy ${(bw / 1e9).toFixed(0)} GB/s (read + write)`);
    });

    // 3 and 5 rows: decode, routed inside the gate_up kernel (1 row: the golden decode tests);
    // 37 rows: the device MoE kernels. More rows: the host-sorted path (one cuBLASLt GEMM per
    // expert). The last case routes by construction (expert j's rows carry a large x[j], router
    // row j picks it up): uneven experts of 70, 150, 1 and 290 rows; empty experts between full
    // ones (the host path splits the experts with rows over two streams, one SiLU-mul per range);
    // and one expert alone with rows (the side stream's half is empty), on all experts and on a
    // rank holding experts 1–2.
    const moeCases: [boolean, boolean, number, number, number, number[]?][] = [
      [false, false, 3, 64, 48], [false, true, 3, 64, 48], [false, false, 5, 64, 48], [false, true, 5, 64, 48],
      [true, false, 37, 64, 48], [false, false, 37, 64, 48], [true, true, 37, 64, 48],
      [true, false, 300, 64, 48], [false, false, 300, 192, 64], [false, true, 700, 192, 64],
      [false, false, 511, 192, 64, [70, 150, 1, 290]],
      [false, false, 511, 192, 64, [100, 0, 0, 411]], [false, true, 511, 192, 64, [100, 0, 0, 411]],
      [false, false, 300, 192, 64, [0, 300, 0, 0]], [false, true, 300, 192, 64, [0, 0, 300, 0]],
    ];
    for (const [transpose, slice, n, d, f, counts] of moeCases) {
      test(`moe: top-1 sigmoid on the input + shared expert (${n} rows${counts ? ` routed ${counts.join("/")}` : ""}, d ${d}, F ${f}, ${transpose ? "[E, in, out] checkpoint layout" : "[E, out, in]"}${slice ? ", experts 1–2 of 4 on this rank" : ""})`, () => {
        const e = 4;
        g().beginStep();
        const x = randn(rng, n * d);
        const router = randn(rng, e * d, 0.5); // wide logit gaps: few near-ties between backends
        if (counts) {
          assert.equal(counts.reduce((a, b) => a + b), n);
          const expertOf = counts.flatMap((c, j) => Array(c).fill(j) as number[]);
          for (let r = 0; r < n; r++) x[r * d + expertOf[(r * 7919) % n]] += 16; // interleaved, not sorted
          for (let j = 0; j < e; j++) router[j * d + j] += 4;
        }
        const gateUp = randn(rng, e * 2 * f * d, 0.15); // [E, 2F, d]
        const down = randn(rng, e * d * f, 0.15); // [E, d, F]
        const sGateUp = randn(rng, 2 * f * d, 0.15);
        const sDown = randn(rng, d * f, 0.15);
        const swap = (a: Float32Array, b: number, r: number, c: number) => {
          const o = new Float32Array(a.length);
          for (let k = 0; k < b; k++) for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) o[k * r * c + j * r + i] = a[k * r * c + i * c + j];
          return o;
        };
        // Expert parallelism: this rank holds experts [1, 3) of the router's 4.
        const [first, local] = slice ? [1, 2] : [0, e];
        const part = (a: Float32Array, per: number) => a.slice(first * per, (first + local) * per);
        const gu = part(gateUp, 2 * f * d), dn = part(down, d * f);
        const load = (be: CpuBackend | CudaBackend) => ({
          router: be.weight(host(router, [e, d])),
          gateUp: transpose ? be.weight(host(swap(gu, local, 2 * f, d), [local, d, 2 * f]), { transpose: true }) : be.weight(host(gu, [local, 2 * f, d])),
          down: transpose ? be.weight(host(swap(dn, local, d, f), [local, f, d]), { transpose: true }) : be.weight(host(dn, [local, d, f])),
          sharedGateUp: be.weight(host(sGateUp, [2 * f, d])),
          sharedDown: be.weight(host(sDown, [d, f])),
          numExperts: e,
          expertStart: first,
        });
        const wc = load(cpu);
        const want = cpu.moe(new CpuTensor([n, d], x), wc).data;
        const got = g().toHost(g().moe(g().upload(x, [n, d], precision), load(g())));
        // Rows whose top-2 router logits nearly tie may route differently under bf16; skip those.
        const logits = cpu.linear(new CpuTensor([n, d], x), wc.router).data;
        const keep: number[] = [];
        for (let r = 0; r < n; r++) {
          const l = Array.from(logits.subarray(r * e, (r + 1) * e)).sort((a, b) => b - a);
          if (precision === "f32" || l[0] - l[1] > 0.05) keep.push(r);
        }
        const pick = (a: Float32Array) => Float32Array.from(keep.flatMap((r) => Array.from(a.subarray(r * d, (r + 1) * d))));
        assert.ok(keep.length > n / 2, `only ${keep.length} of ${n} rows have a clear routing`);
        relErr(got, want, "moe (all rows written)");
        close(pick(got), pick(want), tol, `moe (${keep.length}/${n} rows)`);
        if (n >= 300) {
          // The host path leaves its combine to the next add + RMSNorm (one fused launch): the
          // same bits as the combine run first, for the normed rows, the residual and the output.
          const resid = randn(rng, n * d), normW = randn(rng, d, 0.5);
          const wg = load(g()), norm = g().weight(host(normW, [d]));
          const xin = g().upload(x, [n, d], precision);
          const res1 = g().upload(resid, [n, d]), res2 = g().upload(resid, [n, d]);
          const fusedMoe = g().moe(xin, wg);
          const fused = g().toHost(g().addRmsNorm(res1, fusedMoe, norm, 1e-5));
          const plainMoe = g().moe(xin, wg);
          const plainDelta = g().toHost(plainMoe); // runs its combine
          const plain = g().toHost(g().addRmsNorm(res2, plainMoe, norm, 1e-5));
          assert.deepEqual(fused, plain, "normed rows");
          assert.deepEqual(g().toHost(res1), g().toHost(res2), "residual");
          assert.deepEqual(g().toHost(fusedMoe), plainDelta, "the MoE output itself");
        }
      });
    }
  });
}

// ---- whole model vs transformers float64 ----

interface Drift {
  worstAll: number; // max over positions of max_v |Δ logprob|
  median: number; // median over positions of the same
  worstLikely: number; // over tokens the reference gives logprob > -10
  perPosition: number[];
  /** Positions whose reference top-2 margin exceeds 0.05, and where our argmax differs (with the margin). */
  greedyChecked: { margin: number }[];
  greedyMismatches: { margin: number; text: string }[];
}

function compare(logits: Float32Array, refRows: Float64Array, vocab: number, positions: number, promptLen: number, greedy: number[], margins: number[]): Drift {
  const per: number[] = [];
  let worstLikely = 0;
  const greedyChecked: { margin: number }[] = [];
  const greedyMismatches: { margin: number; text: string }[] = [];
  for (let t = 0; t < positions; t++) {
    const lp = logSoftmax(logits.subarray(t * vocab, (t + 1) * vocab));
    let w = 0;
    for (let i = 0; i < vocab; i++) {
      if (!Number.isFinite(lp[i])) assert.fail(`position ${t}: logprob ${i} is ${lp[i]}`);
      const dlt = Math.abs(lp[i] - refRows[t * vocab + i]);
      w = Math.max(w, dlt);
      if (refRows[t * vocab + i] > -10) worstLikely = Math.max(worstLikely, dlt);
    }
    per.push(w);
    const k = t - (promptLen - 1); // position t predicts greedy token k
    if (k >= 0 && k < greedy.length && margins[k] > 0.05) {
      greedyChecked.push({ margin: margins[k] });
      const got = argmax(logits.subarray(t * vocab, (t + 1) * vocab));
      if (got !== greedy[k]) greedyMismatches.push({ margin: margins[k], text: `token ${k}: ${got} ≠ ${greedy[k]} (margin ${margins[k].toFixed(3)})` });
    }
  }
  const sorted = [...per].sort((a, b) => a - b);
  return { worstAll: sorted[sorted.length - 1], median: sorted[sorted.length >> 1], worstLikely, perPosition: per, greedyChecked, greedyMismatches };
}

/**
 * f32 must match the reference like the CPU backend does (2e-2 asked, ~1e-4 expected) with
 * every clear greedy token. bf16 cannot reach 2e-2 on these fixtures, and neither can
 * transformers: its own bf16 forward of the same weights drifts from the float64 reference by a
 * median 0.25 / 0.32 / 0.067 (max 4.8 / 8.2 / 0.35) on scout-tiny / maverick-tiny / the trained
 * demo model (tools/bf16_drift.py, bench/results/bf16-drift-h100-2026-11-27.json), and flips 1 of
 * the 36 clear greedy tokens (margin > 0.5) of maverick-tiny. So bf16 is held, per fixture, to no
 * more clear-token flips than transformers' bf16, median drift < 0.5, and — the accuracy claim —
 * a median drift over the fixture's positions no larger than transformers' bf16 drift.
 */
const GOLDEN = {
  f32: { maxLogprob: 2e-2, minMargin: 0.05, maxMedian: 2e-2 },
  bf16: { maxLogprob: Infinity, minMargin: 0.5, maxMedian: 0.5 },
} as const;

/** transformers' own bf16 drift from the float64 references, per fixture (tools/bf16_drift.py on an H100). */
const TRANSFORMERS_BF16 = JSON.parse(readFileSync(join(packageRoot(), "bench", "results", "bf16-drift-h100-2026-11-27.json"), "utf8")).fixtures as Record<
  string,
  { bf16: { median: number; prompts: { "greedy_margin_0.5": string }[] } }
>;

for (const precision of ["f32", "bf16"] as const) {
  for (const name of ["scout-tiny", "maverick-tiny", "demo-golden"]) {
    describe(`golden ${name} through cuda (${precision})`, { skip }, () => {
      const limits = GOLDEN[precision];
      const dir = fixturePath(name);
      const golden = readGolden(dir);
      let gpu: CudaBackend | undefined;
      let loaded: Awaited<ReturnType<typeof loadModel>> | undefined;
      const model = async () => {
        gpu ??= new CudaBackend({ precision, memoryBytes: 512 * MIB, stepBytes: 128 * MIB, poison: true });
        loaded ??= await loadModel(golden.modelDir, gpu);
        return loaded;
      };
      after(() => gpu?.destroy());
      const forwardDrift: number[] = []; // per-position drift of the whole-sequence forwards
      const flips = { forward: [] as string[], decode: [] as string[] }; // bf16: clear greedy tokens we got wrong

      const check = (label: string, d: Drift) => {
        const clear = d.greedyChecked.filter((g) => g.margin > limits.minMargin).length;
        const bad = d.greedyMismatches.filter((g) => g.margin > limits.minMargin).map((g) => g.text);
        console.log(
          `# ${name} ${precision} ${label}: max|Δlogprob| ${d.worstAll.toExponential(2)} (median ${d.median.toExponential(2)}, likely tokens ${d.worstLikely.toExponential(2)}); ` +
            `greedy identical ${clear - bad.length}/${clear} (margin > ${limits.minMargin})` +
            (limits.minMargin !== 0.05 ? `, ${d.greedyChecked.length - d.greedyMismatches.length}/${d.greedyChecked.length} (margin > 0.05)` : ""),
        );
        // f32: every clear token. bf16: transformers' own bf16 flips clear tokens too (1 of 36 on
        // maverick-tiny), so flips are counted per fixture and held to its count (test below).
        if (precision === "f32") assert.deepEqual(bad, [], `${label}: greedy tokens differ where the reference is clear`);
        else flips[label.endsWith("forward") ? "forward" : "decode"].push(...bad.map((b) => `${label} ${b}`));
        assert.ok(d.worstAll < limits.maxLogprob, `${label}: max |Δ logprob| ${d.worstAll}`);
        assert.ok(d.median < limits.maxMedian, `${label}: median |Δ logprob| ${d.median}`);
      };

      golden.prompts.forEach((p, pi) => {
        const ids = [...p.prompt_ids, ...p.greedy_ids];
        test(`prompt ${pi}: whole-sequence forward`, async () => {
          const { model: m, config } = await model();
          const seq = new SingleSequence(m, ids.length);
          const logits = seq.append(ids, ids.length);
          const d = compare(logits, p.logprobs, config.vocabSize, ids.length, p.prompt_ids.length, p.greedy_ids, p.greedy_top2_margins);
          forwardDrift.push(...d.perPosition);
          check(`prompt ${pi} forward`, d);
        });
        test(`prompt ${pi}: prefill of the prompt, then token-by-token decode`, async () => {
          const { model: m, config } = await model();
          const vocab = config.vocabSize;
          const seq = new SingleSequence(m, ids.length);
          const all = new Float32Array(ids.length * vocab);
          all.set(seq.append(p.prompt_ids, p.prompt_ids.length), 0);
          // Feed the reference tokens so every position is compared even after a divergence.
          for (let t = p.prompt_ids.length; t < ids.length; t++) all.set(seq.append([ids[t]]), t * vocab);
          check(`prompt ${pi} decode`, compare(all, p.logprobs, vocab, ids.length, p.prompt_ids.length, p.greedy_ids, p.greedy_top2_margins));
        });
      });
      if (precision === "bf16") {
        test("median drift no larger than transformers' own bf16 forward", () => {
          assert.equal(forwardDrift.length, golden.prompts.reduce((a, p) => a + p.positions, 0), "every forward test ran");
          const ours = [...forwardDrift].sort((a, b) => a - b)[forwardDrift.length >> 1];
          const theirs = TRANSFORMERS_BF16[name].bf16.median;
          console.log(`# ${name} bf16: median |Δlogprob| ours ${ours.toExponential(2)}, transformers bf16 ${theirs.toExponential(2)} (ratio ${(ours / theirs).toFixed(2)})`);
          assert.ok(ours <= theirs, `median drift ${ours} exceeds transformers' bf16 ${theirs}`);
        });
        test("clear greedy tokens flipped no more often than by transformers' own bf16 forward", () => {
          const theirs = TRANSFORMERS_BF16[name].bf16.prompts.reduce((a, p) => {
            const [same, all] = p["greedy_margin_0.5"].split("/").map(Number);
            return a + all - same;
          }, 0);
          console.log(`# ${name} bf16: clear tokens (margin > 0.5) flipped: ours ${JSON.stringify(flips)}, transformers bf16 ${theirs}`);
          for (const ours of [flips.forward, flips.decode]) assert.ok(ours.length <= theirs, `flips ${ours} exceed transformers' bf16 count ${theirs}`);
        });
      }
    });
  }
}
