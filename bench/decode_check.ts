// Decode-path timings at Scout's widths next to their bandwidth floors: the GEMV kernels vs
// cuBLASLt for few rows, the device-side MoE vs the host-sorted path, and fa3 decode attention —
// the pieces of a decode step, to read `tsglang bench-one-batch` against.
// Usage: node dist/bench/decode_check.js   (writes $OUT/decode_check.json when OUT is set)

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { AttentionParams, AttentionSpec, StepBatch } from "../src/runtime/backend.js";
import { CudaBackend } from "../src/runtime/cuda/backend.js";
import { newSlotsOnly } from "../src/runtime/slot_tables.js";
import { decodeStepBytes } from "../src/cli/bench-one-batch.js";
import { ContiguousBatch } from "../src/engine/sequence.js";
import { loadModel } from "../src/model/loader.js";

const GIB = 2 ** 30;
const rows: { what: string; ms: number; gbs: number; ofCopy: number }[] = [];
let copyBw = 0;

function report(what: string, ms: number, bytes: number): void {
  const gbs = bytes / ms / 1e6;
  const ofCopy = (bytes / (ms / 1000)) / copyBw;
  rows.push({ what, ms, gbs, ofCopy });
  console.log(`${what.padEnd(52)} ${ms.toFixed(4).padStart(9)} ms  ${gbs.toFixed(0).padStart(5)} GB/s  ${(100 * ofCopy).toFixed(0).padStart(3)}% of copy`);
}

function section(name: string, body: () => void): void {
  try {
    body();
  } catch (e) {
    console.log(`${name}: FAILED: ${(e as Error).stack ?? e}`);
    process.exitCode = 1;
  }
}

const d = 5120, f = 8192, e = 16, vocab = 202048;
for (const mode of ["new", "old"] as const) {
  // "old": cuBLASLt for every linear and the host-sorted MoE (the first backend's paths).
  const be = new CudaBackend({ precision: "bf16", memoryBytes: 16 * GIB, stepBytes: 2 * GIB, gemvMaxTokens: mode === "new" ? 8 : 0, moeDeviceMaxTokens: mode === "new" ? 64 : 0, attention: "fa3" });
  if (mode === "new") {
    copyBw = be.copyBandwidth().bytesPerS;
    console.log(`device: ${be.info.name}, copy ${(copyBw / 1e9).toFixed(0)} GB/s (read + write)`);
  }
  const act = (n: number, width: number, seed: number) => be.randomWeight([n, width], 1, seed);
  section(`gemv ${mode}`, () => {
    for (const [name, out, inDim] of [["lm_head", vocab, d], ["q_proj", d, d], ["k_proj", 1024, d], ["shared gate_up", 2 * f, d], ["shared down", d, f]] as const) {
      const w = be.randomWeight([out, inDim], 0.02, 11);
      for (const n of [1, 8, 64]) {
        const x = act(n, inDim, 12 + n);
        const ms = be.time(() => {
          be.beginStep();
          be.linear(x, w, { outF32: name === "lm_head" });
        }, 20, 3);
        report(`${mode} linear ${name} ${n}×${inDim}→${out}`, ms, out * inDim * 2);
        be.free(x);
      }
      be.free(w);
    }
  });
  section(`moe ${mode}`, () => {
    const wts = {
      router: be.randomWeight([e, d], 0.02, 21),
      gateUp: be.randomWeight([e, 2 * f, d], 0.02, 22),
      down: be.randomWeight([e, d, f], 0.02, 23),
      sharedGateUp: be.randomWeight([2 * f, d], 0.02, 24),
      sharedDown: be.randomWeight([d, f], 0.02, 25),
      numExperts: e,
    };
    for (const n of [1, 8, 16, 32, 64]) {
      const x = act(n, d, 30 + n);
      const ms = be.time(() => {
        be.beginStep();
        be.moe(x, wts);
      }, 10, 2);
      const touched = e * (1 - Math.pow(1 - 1 / e, n)); // expected distinct experts, as decodeStepBytes
      report(`${mode} moe ${n} tokens (≈${touched.toFixed(1)} experts + shared)`, ms, (1 + touched) * 3 * f * d * 2);
      be.free(x);
    }
    for (const w of Object.values(wts)) if (typeof w !== "number") be.free(w);
  });
  if (mode === "new") {
    section("attention decode", () => {
      const hq = 40, hkv = 8, dim = 128, len = 1056;
      const invFreq = new Float32Array(dim / 2).map((_, i) => Math.fround(1 / Math.pow(500000, (2 * i) / dim)));
      const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq, floorScale: 8192, attnScale: 0.1 };
      const spec: AttentionSpec = { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: 8192, pool: "full" };
      for (const seqs of [1, 64]) {
        be.allocKv(params, [spec], { full: seqs * len, swa: 0, rows: seqs, context: len });
        const slots = Int32Array.from({ length: seqs * len }, (_, i) => i);
        const batch: StepBatch = {
          ids: new Int32Array(seqs),
          positions: Int32Array.from({ length: seqs }, () => len - 1),
          seqs: Array.from({ length: seqs }, (_, s) => ({ qStart: s, qLen: 1, kvLen: len, row: s, slotsFrom: 0, fullSlots: slots.subarray(s * len, (s + 1) * len), swaSlots: slots.subarray(s * len, (s + 1) * len) })),
          logitRows: new Int32Array(0),
        };
        const q = act(seqs, hq * dim, 41), k = act(seqs, hkv * dim, 42), v = act(seqs, hkv * dim, 43);
        be.beginStep();
        be.attention(0, spec, q, k, v, batch); // fills the slot tables; the timed steps add one slot each
        const step = newSlotsOnly(batch);
        const ms = be.time(() => {
          be.beginStep();
          be.attention(0, spec, q, k, v, step);
        }, 20, 3);
        report(`attention decode (${be.attentionKernel}) ${seqs} seqs × kv ${len}`, ms, seqs * len * hkv * dim * 2 * 2);
        for (const t of [q, k, v]) be.free(t);
      }
    });
  }
  be.destroy();
}
// Whole decode steps of the 4-layer Scout model (dummy weights, 1024-token prompts): wall time
// per step (host work and the logits download included) next to the replayed graph's device time.
async function modelSteps(bs: number, attention: "fa3" | "cuda"): Promise<void> {
  const be = new CudaBackend({ attention });
  try {
    const { model, config } = await loadModel("bench/configs/scout-4layer", be, { loadFormat: "dummy" });
    const inputLen = 1024, steps = 12;
    const seqs = new ContiguousBatch(model, bs, inputLen + 2 * steps + 1);
    const group = Math.max(1, Math.floor(8192 / inputLen));
    for (let g = 0; g < bs; g += group) {
      seqs.append(Array.from({ length: bs }, (_, b) => (b >= g && b < g + group ? Array.from({ length: inputLen }, (_, i) => (b * 7919 + i * 104729) % config.vocabSize) : [])));
    }
    const wall: number[] = [], gpu: number[] = [];
    for (let s = 0; s < steps; s++) {
      be.synchronize();
      const t = performance.now();
      seqs.append(Array.from({ length: bs }, (_, b) => [(s * 31 + b * 7 + 1) % config.vocabSize]));
      wall.push(performance.now() - t);
      gpu.push(be.lastReplayMs() ?? NaN);
    }
    const greedy: number[] = [];
    for (let s = 0; s < steps; s++) {
      be.synchronize();
      const t = performance.now();
      seqs.appendGreedy(Array.from({ length: bs }, (_, b) => [(s * 17 + b * 3 + 2) % config.vocabSize]));
      greedy.push(performance.now() - t);
    }
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1];
    const bytes = decodeStepBytes(config, bs, inputLen + steps, 2);
    const total = bytes.weights + bytes.kv;
    report(`model step bs${bs} ${attention}: graph replay (device)`, med(gpu), total);
    report(`model step bs${bs} ${attention}: wall, logits to the host`, med(wall), total);
    report(`model step bs${bs} ${attention}: wall, greedy on the device`, med(greedy), total);
    console.log(`  graphs: ${JSON.stringify(be.graphStats)}`);
  } finally {
    be.destroy();
  }
}
for (const [bs, attention] of [[1, "fa3"], [1, "cuda"], [64, "fa3"]] as const) {
  try {
    await modelSteps(bs, attention);
  } catch (e) {
    console.log(`model bs${bs} ${attention}: FAILED: ${(e as Error).stack ?? e}`);
    process.exitCode = 1;
  }
}
if (process.env.OUT) writeFileSync(join(process.env.OUT, "decode_check.json"), JSON.stringify({ copyBandwidth: copyBw, rows }, null, 2));
