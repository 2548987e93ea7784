// GPU numbers for the CUDA backend, run by bench/gpu_check.sh after the tests. Each line gives
// the measured time next to the floor it is judged against (bytes / bandwidth or FLOPs / peak),
// so the gap is visible: these are the first, correctness-first kernels.
// Usage: node dist/bench/gpu_check.js   (writes $OUT/bench.json when OUT is set)

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { AttentionParams, AttentionSpec, HostTensor, StepBatch } from "../src/runtime/backend.js";
import { newSlotsOnly } from "../src/runtime/slot_tables.js";
import { CudaBackend } from "../src/runtime/cuda/backend.js";
import { float32ToBf16 } from "../src/runtime/dtype.js";
import { SingleSequence } from "../src/engine/sequence.js";
import { loadModel } from "../src/model/loader.js";
import { fixturePath } from "../src/util/repo.js";

const MIB = 2 ** 20;
const rows: { what: string; ms: number; note: string }[] = [];
function report(what: string, ms: number, note: string): void {
  rows.push({ what, ms, note });
  console.log(`${what.padEnd(44)} ${ms.toFixed(4).padStart(10)} ms  ${note}`);
}

/** Uniform values in (-scale, scale), never all zero (zeros can time faster than real data). */
function rand(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = 0x12345678;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

function bf16Host(data: Float32Array, shape: number[]): HostTensor {
  return { dtype: "BF16", shape, data: new Uint8Array(float32ToBf16(data).buffer) };
}

const gbs = (bytes: number, ms: number) => `${(bytes / ms / 1e6).toFixed(0)} GB/s`;
const tflops = (flop: number, ms: number) => `${(flop / ms / 1e9).toFixed(1)} TFLOP/s`;

const be = new CudaBackend({ precision: "bf16", memoryBytes: 6144 * MIB, stepBytes: 2048 * MIB });
console.log(`device: ${be.info.name} (sm_${be.info.ccMajor}${be.info.ccMinor}, ${be.info.smCount} SMs), cuBLASLt ${be.blasLt.version} from ${be.blasLt.path}`);

/** Runs one section; a failure is printed and the next section still runs. */
async function section(name: string, body: () => void | Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    failures++;
    console.log(`${name}: FAILED: ${(e as Error).stack ?? e}`);
  }
}
let failures = 0;

// ---- memory-bound element-wise ----
await section("element-wise", () => {
  const { bytesPerS: bw, bytes } = be.copyBandwidth();
  report(`copy device→device, 2 × ${bytes / 2 ** 21} MiB`, (bytes / bw) * 1000, `${(bw / 1e9).toFixed(0)} GB/s (the bandwidth floor below)`);
  const n = 2 ** 26;
  const r = be.upload(new Float32Array(n).fill(0.25), [n / 4096, 4096], "f32", { persistent: true });
  const x = be.upload(new Float32Array(n).fill(0.5), [n / 4096, 4096], "bf16", { persistent: true });
  const ms = be.time(() => be.add(r, x));
  report(`add fp32 += bf16, ${n / MIB}M elements`, ms, gbs(n * 10, ms));
  const rn = be.upload(rand(4096 * 5120), [4096, 5120], "f32", { persistent: true });
  const xn = be.upload(rand(4096 * 5120), [4096, 5120], "bf16", { persistent: true });
  const w = be.weight(bf16Host(rand(5120), [5120]));
  const ms2 = be.time(() => {
    be.beginStep();
    be.addRmsNorm(rn, xn, w, 1e-5);
  });
  report("addRmsNorm 4096×5120", ms2, gbs(4096 * 5120 * (4 + 4 + 2 + 2), ms2));
  for (const t of [r, x, rn, xn, w]) be.free(t);
});

// ---- GEMM (cuBLASLt), a Scout-sized projection 5120 → 8192 ----
await section("gemm", () => {
  const inDim = 5120, out = 8192;
  const w = be.weight(bf16Host(rand(out * inDim, 0.02), [out, inDim]));
  for (const n of [1, 16, 128, 1024, 4096]) {
    const x = be.upload(rand(n * inDim), [n, inDim], "bf16", { persistent: true });
    const ms = be.time(() => {
      be.beginStep();
      be.linear(x, w);
    });
    report(`linear ${n}×${inDim}→${out} (bf16)`, ms, `${tflops(2 * n * inDim * out, ms)}, weights ${gbs(out * inDim * 2, ms)}`);
    be.free(x);
  }
  be.free(w);
});

// ---- attention (the simple reference kernel): Llama 4 heads 40/8 × 128 ----
await section("attention", () => {
  const hq = 40, hkv = 8, dim = 128;
  const invFreq = new Float32Array(dim / 2).map((_, i) => Math.fround(1 / Math.pow(500000, (2 * i) / dim)));
  const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq, floorScale: 8192, attnScale: 0.1 };
  const spec: AttentionSpec = { rope: false, qkNorm: false, temperatureTuning: true, chunkSize: 0, pool: "full" };
  const seqs = 16, len = 1024, single = 4096;
  be.allocKv(params, [spec], { full: seqs * len + single + 64, swa: 0, rows: seqs, context: single + 1 });
  const slots = Int32Array.from({ length: seqs * len + single + 64 }, (_, i) => i);
  const batchOf = (spans: { start: number; q: number; kv: number }[]): StepBatch => {
    const n = spans.reduce((a, s) => a + s.q, 0);
    const positions: number[] = [];
    let row = 0;
    const out: StepBatch = { ids: new Int32Array(n), positions: new Int32Array(n), seqs: [], logitRows: new Int32Array(0) };
    for (const [i, s] of spans.entries()) {
      const own = slots.subarray(s.start, s.start + s.kv);
      out.seqs.push({ qStart: row, qLen: s.q, kvLen: s.kv, row: i, slotsFrom: 0, fullSlots: own, swaSlots: own });
      for (let i = 0; i < s.q; i++) positions.push(s.kv - s.q + i);
      row += s.q;
    }
    out.positions.set(positions);
    return out;
  };
  const run = (b: StepBatch) => {
    const n = b.ids.length;
    const q = be.upload(rand(n * hq * dim), [n, hq * dim], "bf16", { persistent: true });
    const k = be.upload(rand(n * hkv * dim), [n, hkv * dim], "bf16", { persistent: true });
    const v = be.upload(rand(n * hkv * dim), [n, hkv * dim], "bf16", { persistent: true });
    be.beginStep();
    be.attention(0, spec, q, k, v, b); // fills the slot tables; the timed steps add the new tokens' slots
    const step = newSlotsOnly(b);
    const ms = be.time(() => {
      be.beginStep();
      be.attention(0, spec, q, k, v, step);
    }, 5, 1);
    for (const t of [q, k, v]) be.free(t);
    return ms;
  };
  const pre = batchOf([{ start: 0, q: single, kv: single }]);
  let ms = run(pre);
  report(`attention prefill 1×${single} (global, causal)`, ms, tflops(4 * hq * dim * (single * single) / 2, ms));
  const many = batchOf(Array.from({ length: seqs }, (_, i) => ({ start: single + i * len, q: len, kv: len })));
  ms = run(many);
  report(`attention prefill ${seqs}×${len}`, ms, tflops(4 * hq * dim * seqs * (len * len) / 2, ms));
  const dec1 = batchOf([{ start: 0, q: 1, kv: single }]);
  ms = run(dec1);
  report(`attention decode 1 seq, kv ${single}`, ms, `KV ${gbs(single * hkv * dim * 2 * 2, ms)}`);
  const decN = batchOf(Array.from({ length: seqs }, (_, i) => ({ start: single + i * len, q: 1, kv: len })));
  ms = run(decN);
  report(`attention decode ${seqs} seqs, kv ${len}`, ms, `KV ${gbs(seqs * len * hkv * dim * 2 * 2, ms)}`);
});

// ---- MoE layer (Scout's d and E, a narrow F to keep the upload short) ----
await section("moe", () => {
  const d = 5120, f = 1024, e = 16;
  const wts = {
    router: be.weight(bf16Host(rand(e * d, 0.05), [e, d])),
    gateUp: be.weight(bf16Host(rand(e * d * 2 * f, 0.02), [e, d, 2 * f]), { transpose: true }),
    down: be.weight(bf16Host(rand(e * f * d, 0.02), [e, f, d]), { transpose: true }),
    sharedGateUp: be.weight(bf16Host(rand(2 * f * d, 0.02), [2 * f, d])),
    sharedDown: be.weight(bf16Host(rand(d * f, 0.02), [d, f])),
    numExperts: e,
  };
  const weightBytes = (e + 1) * 3 * f * d * 2;
  for (const n of [1, 64, 1024]) {
    const x = be.upload(rand(n * d), [n, d], "bf16", { persistent: true });
    const ms = be.time(() => {
      be.beginStep();
      be.moe(x, wts);
    }, 10, 2);
    const touched = Math.min(e, n) * 3 * f * d * 2 + 3 * f * d * 2;
    report(`moe ${n} tokens, E=${e}, d=${d}, F=${f}`, ms, `weights touched ${gbs(touched, ms)} (all: ${(weightBytes / 2 ** 30).toFixed(2)} GiB)`);
    be.free(x);
  }
});
be.destroy();

// ---- whole tiny models: per-step host + launch overhead ----
for (const name of ["scout-tiny", "maverick-tiny"]) await section(name, async () => {
  const gpu = new CudaBackend({ precision: "bf16", memoryBytes: 256 * MIB, stepBytes: 64 * MIB });
  const { model, config } = await loadModel(fixturePath(name), gpu);
  const seq = new SingleSequence(model, 128);
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 7 + 3) % config.vocabSize);
  seq.append(prompt);
  const steps = 48;
  let tok = 5;
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) {
    const logits = seq.append([tok]);
    tok = logits.indexOf(Math.max(...logits));
  }
  const ms = (performance.now() - t0) / steps;
  report(`${name} decode step (${config.numLayers} layers)`, ms, "wall clock incl. logits download: launch-bound");
  gpu.destroy();
});

if (process.env.OUT) writeFileSync(join(process.env.OUT, "bench.json"), JSON.stringify({ device: be.info, rows }, null, 2));
if (failures > 0) process.exitCode = 1;
