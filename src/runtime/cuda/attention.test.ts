// The fa3 attention kernels (attention_fa.cu, attention.ts) against the CPU backend on random
// inputs, NaN-poisoned step arenas and KV pools: head_dim 16/32/64/128, GQA groups of 1, 4 and
// 5, causal and chunked-local masks crossing key tiles, row tiles and chunk boundaries,
// prefill over a cached prefix, decode with and without split-KV (and empty splits), shuffled
// slots, the SWA pool; and the fallback to the reference kernel. The tile planning is checked
// everywhere; the kernels only where there is a CUDA device (skipped visibly otherwise).

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import type { AttentionParams, AttentionSpec, SeqSpan, StepBatch } from "../backend.js";
import { CpuBackend, CpuTensor } from "../cpu.js";
import { Rng } from "../../util/rng.js";
import { type FaContext, FlashAttention, decodeRowsPerTile, decodeSplits, faSmemBytes, faUnsupported, planTiles } from "./attention.js";
import { CudaBackend, createCudaBackendChoice } from "./backend.js";
import { probeCuda } from "./native.js";
import { close, randn } from "./check.js";

const probe = probeCuda();
const skip = probe.ok ? false : `no CUDA device (${probe.reason.split("\n")[0]})`;
const MIB = 2 ** 20;
const TOL = 1.5e-2; // bf16 storage, as for the reference kernel's bf16 tests

// ---- planning (no GPU) ----

test("fa3 tile planning: prefill tiles of 128 rows longest first, decode tiles of ⌊64/G⌋ rows", () => {
  const seqs = [
    { qStart: 0, qLen: 300, kvLen: 500, slotBase: 0 },
    { qStart: 300, qLen: 5, kvLen: 5, slotBase: 500 },
  ];
  const p = planTiles(seqs, 40, 8);
  assert.equal(p.kind, "prefill");
  assert.equal(p.count, 4);
  // [rowStart, rows, pos0, slotBase], sorted by last position, descending
  assert.deepEqual(Array.from(p.host), [256, 44, 456, 0, 128, 128, 328, 0, 0, 128, 200, 0, 300, 5, 0, 500]);
  const d = planTiles([{ qStart: 0, qLen: 1, kvLen: 9000, slotBase: 0 }, { qStart: 1, qLen: 12, kvLen: 40, slotBase: 9000 }], 40, 8);
  assert.equal(d.kind, "decode");
  assert.deepEqual(Array.from(d.host), [0, 1, 8999, 0, 1, 12, 28, 9000]);
  assert.equal(planTiles([{ qStart: 0, qLen: 13, kvLen: 40, slotBase: 0 }], 40, 8).kind, "prefill"); // 13 > ⌊64/5⌋
  assert.equal(decodeRowsPerTile(40, 8), 12);
  assert.equal(decodeRowsPerTile(8, 8), 64);
  assert.equal(decodeRowsPerTile(128, 1), 0);
  assert.equal(planTiles([{ qStart: 0, qLen: 1, kvLen: 4, slotBase: 0 }], 128, 1).kind, "prefill");
  assert.equal(decodeSplits(132, 8, 128), 64); // batch 1, 8 KV heads, 8k keys: capped
  assert.equal(decodeSplits(132, 256, 128), 2); // 3 wanted, rounded down to a power of two
  assert.equal(decodeSplits(132, 2, 1000), 64); // a tp-4 rank's 2 KV heads at 64K keys: ≤ 64 splits
  assert.equal(decodeSplits(132, 2, 3125), 64); // ... at 200K keys: 97 splits of ≥ 32 tiles, rounded down
  assert.equal(decodeSplits(132, 2, 15625), 256); // ... at 1M keys: 2 blocks per SM
  assert.equal(decodeSplits(132, 8, 3), 1); // short contexts are not split
  assert.equal(faUnsupported(128, 40, 8), null);
  assert.match(faUnsupported(96, 40, 8) ?? "", /head_dim 96/);
  assert.equal(faSmemBytes("prefill", 128), 96 * 1024);
  assert.equal(faSmemBytes("decode", 128), 112 * 1024);
});

// ---- kernels ----




test("decode split counts are kept per chunk size: a chunked layer's key range is not a global layer's (the CUDA-graph key)", () => {
  // A host-only FlashAttention: launches are dry, uploads and scratch are never read.
  const ctx = {
    kernels: { dry: true, fn: () => 0n, launch: () => {} },
    native: { setMaxDynamicShared: () => {} },
    smCount: 132,
    uploadInts: () => 0n,
    scratch: () => 0n,
  } as unknown as FaContext;
  const fa = new FlashAttention(ctx);
  const meta = {};
  const kvLen = 200_000; // one decode row: 3125 key tiles globally, 200000 % 8192 = 3392 keys (53 tiles) in its chunk
  const args = { q: 0n, kPool: 0n, vPool: 0n, slotTable: 0n, out: 0n, rows: 1, hq: 40, hkv: 8, dim: 128 };
  fa.run(meta, [{ qStart: 0, qLen: 1, kvLen, slotBase: 0 }], { ...args, chunk: 0 });
  fa.run(meta, [{ qStart: 0, qLen: 1, kvLen, slotBase: 0 }], { ...args, chunk: 8192 });
  assert.equal(fa.splitsOf(meta, 0), decodeSplits(132, 8, 3125));
  assert.equal(fa.splitsOf(meta, 8192), decodeSplits(132, 8, 53));
  assert.ok(fa.splitsOf(meta, 0) > fa.splitsOf(meta, 8192), `${fa.splitsOf(meta, 0)} vs ${fa.splitsOf(meta, 8192)}`);
  assert.equal(fa.splitsOf(meta, 64), 1, "a chunk size never run: 1");
});

function shuffled(rng: Rng, n: number): Int32Array {
  const perm = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  return perm;
}

interface Scenario {
  hq: number;
  hkv: number;
  dim: number;
  layers: AttentionSpec[];
  fullSlots: number;
  swaSlots: number;
  /** Slot lists per sequence (full pool). */
  seqSlots: Int32Array[];
  /** SWA ring per sequence: [base, size]; slots valid from the live chunk of `chunk`. */
  swa?: { base: number[]; ring: number; chunk: number };
  /** New tokens per sequence per step. */
  steps: number[][];
  /** Kernel expected per step ("decode" or "prefill" of the fa3 path). */
  expect?: string[];
}

/** Runs the steps on the CPU and on an fa3 CUDA backend, comparing every layer's output. */
function runScenario(rng: Rng, gpu: CudaBackend, sc: Scenario, what: string): void {
  const cpu = new CpuBackend();
  const { hq, hkv, dim } = sc;
  const invFreq = new Float32Array(dim / 2).map((_, i) => Math.fround(1 / Math.pow(10000, (2 * i) / dim)));
  const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq, floorScale: 4, attnScale: 0.3 };
  const sizes = { full: sc.fullSlots, swa: sc.swaSlots, rows: sc.seqSlots.length, context: Math.max(...sc.seqSlots.map((l) => l.length)) };
  cpu.allocKv(params, sc.layers, sizes);
  gpu.allocKv(params, sc.layers, sizes);
  const lens = sc.seqSlots.map(() => 0);
  for (const [si, step] of sc.steps.entries()) {
    const seqs: SeqSpan[] = [];
    const positions: number[] = [];
    let row = 0;
    for (let s = 0; s < step.length; s++) {
      const q = step[s];
      if (q === 0) continue;
      const kvLen = lens[s] + q;
      const swa = new Int32Array(kvLen).fill(-1);
      if (sc.swa) {
        const liveFrom = lens[s] - (lens[s] % sc.swa.chunk);
        for (let u = liveFrom; u < kvLen; u++) swa[u] = sc.swa.base[s] + (u % sc.swa.ring);
      }
      // Sequence s is table row s; a step carries its new positions' slots only.
      seqs.push({ qStart: row, qLen: q, kvLen, row: s, slotsFrom: lens[s], fullSlots: sc.seqSlots[s].subarray(lens[s], kvLen), swaSlots: swa.subarray(lens[s], kvLen) });
      for (let i = 0; i < q; i++) positions.push(lens[s] + i);
      row += q;
      lens[s] = kvLen;
    }
    const n = row;
    const batch: StepBatch = { ids: new Int32Array(n), positions: Int32Array.from(positions), seqs, logitRows: new Int32Array(0) };
    gpu.beginStep();
    const qd = randn(rng, n * hq * dim), kd = randn(rng, n * hkv * dim), vd = randn(rng, n * hkv * dim);
    for (const [li, spec] of sc.layers.entries()) {
      const want = cpu.attention(li, spec, new CpuTensor([n, hq * dim], qd), new CpuTensor([n, hkv * dim], kd), new CpuTensor([n, hkv * dim], vd), batch).data;
      const got = gpu.attention(li, spec, gpu.upload(qd, [n, hq * dim], "bf16"), gpu.upload(kd, [n, hkv * dim], "bf16"), gpu.upload(vd, [n, hkv * dim], "bf16"), batch);
      assert.equal(gpu.attentionKernel, "fa3", `${what} step ${si}: the fa3 kernels ran`);
      close(gpu.toHost(got), want, TOL, `${what} step ${si} layer ${li} (${sc.expect?.[si] ?? ""})`);
    }
  }
}

describe("fa3 attention kernels vs cpu (bf16)", { skip }, () => {
  const rng = new Rng(4321);
  let gpu: CudaBackend;
  const g = () => (gpu ??= new CudaBackend({ precision: "bf16", attention: "fa3", memoryBytes: 1024 * MIB, stepBytes: 256 * MIB, poison: true }));
  after(() => gpu?.destroy());

  for (const dim of [16, 32, 64, 128]) {
    test(`head_dim ${dim}, GQA 8/2: RoPE/qk-norm/chunked, NoPE/temperature/global, SWA pool; prefill and decode kernels, chunk crossings, shuffled slots`, () => {
      const chunk = 8;
      const perm = shuffled(rng, 96);
      runScenario(rng, g(), {
        hq: 8, hkv: 2, dim,
        layers: [
          { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: chunk, pool: "full" },
          { rope: false, qkNorm: false, temperatureTuning: true, chunkSize: 0, pool: "full" },
          { rope: true, qkNorm: false, temperatureTuning: false, chunkSize: chunk, pool: "swa" },
        ],
        fullSlots: 96, swaSlots: 48,
        seqSlots: [perm.subarray(0, 48), perm.subarray(48, 96)],
        swa: { base: [0, 24], ring: 3 * chunk, chunk },
        // G = 4: the decode kernel takes steps whose sequences all have ≤ 16 new tokens
        steps: [[20, 7], [1, 1], [5, 0], [1, 11], [16, 1]],
        expect: ["prefill", "decode", "decode", "decode", "decode"],
      }, `d${dim}`);
    });
  }

  test("head_dim 128, GQA 10/2 (G = 5): prefill in row tiles of 128, over a cached prefix, chunk 96 crossing row and key tiles, two sequences", () => {
    const perm = shuffled(rng, 640);
    runScenario(rng, g(), {
      hq: 10, hkv: 2, dim: 128,
      layers: [
        { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: 96, pool: "full" },
        { rope: false, qkNorm: false, temperatureTuning: true, chunkSize: 0, pool: "full" },
      ],
      fullSlots: 640, swaSlots: 0,
      seqSlots: [perm.subarray(0, 560), perm.subarray(560, 640)],
      steps: [[300, 13], [200, 0], [1, 12], [0, 50]],
      expect: ["prefill", "prefill over a cached prefix", "decode, 12 rows × 5 heads", "prefill, cached prefix"],
    }, "G5 d128");
  });

  // Each prefill variant by name (the scenarios above run the device's default: wg on sm_90).
  for (const variant of ["w4", "w8", "wg"] as const) {
    test(`the ${variant === "w4" ? "4" : "8"}-warp prefill variant (TSGLANG_FA_PREFILL=${variant}${variant === "wg" ? ": Q·Kᵀ on wgmma" : ""}), head_dim 128, G = 5, cached prefix and chunk crossings`, () => {
      process.env.TSGLANG_FA_PREFILL = variant;
      const be = new CudaBackend({ precision: "bf16", attention: "fa3", memoryBytes: 256 * MIB, stepBytes: 128 * MIB, poison: true });
      delete process.env.TSGLANG_FA_PREFILL;
      try {
        const perm = shuffled(rng, 400);
        runScenario(rng, be, {
          hq: 10, hkv: 2, dim: 128,
          layers: [{ rope: true, qkNorm: true, temperatureTuning: false, chunkSize: 80, pool: "full" }, { rope: false, qkNorm: false, temperatureTuning: true, chunkSize: 0, pool: "full" }],
          fullSlots: 400, swaSlots: 0,
          // 150 and 20 rows: a tile whose second warpgroup is all padding (wg), and partial ones.
          seqSlots: [perm.subarray(0, 360), perm.subarray(360, 400)],
          steps: [[150, 20], [180, 0]],
        }, variant);
      } finally {
        be.destroy();
      }
    });
  }

  test("decode with split-KV: long and short sequences together (empty splits), global and chunked, G = 1 and G = 4", () => {
    for (const [hq, hkv] of [[4, 1], [4, 4]]) {
      const perm = shuffled(rng, 1300);
      runScenario(rng, g(), {
        hq, hkv, dim: 32,
        layers: [
          { rope: true, qkNorm: false, temperatureTuning: false, chunkSize: 0, pool: "full" },
          { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: 256, pool: "full" },
        ],
        fullSlots: 1300, swaSlots: 0,
        seqSlots: [perm.subarray(0, 1250), perm.subarray(1250, 1300)],
        steps: [[1200, 0], [1, 3], [1, 1], [2, 1]],
        expect: ["prefill", "decode, split", "decode, split", "decode, split"],
      }, `split ${hq}/${hkv}`);
    }
  });

  test("decode splits as one cluster (sm_90) give the split + combine path's bits: 2, 4 and 8 splits, empty splits, global and chunked, G = 5", (t) => {
    if (g().info.ccMajor !== 9) {
      t.skip(`clusters are sm_90 here; ${g().info.name} is sm_${g().info.ccMajor}${g().info.ccMinor}`);
      return;
    }
    process.env.TSGLANG_FA_CLUSTER = "0";
    const plain = new CudaBackend({ precision: "bf16", attention: "fa3", memoryBytes: 256 * MIB, stepBytes: 64 * MIB, poison: true });
    delete process.env.TSGLANG_FA_CLUSTER;
    const clustered = new CudaBackend({ precision: "bf16", attention: "fa3", memoryBytes: 256 * MIB, stepBytes: 64 * MIB, poison: true });
    try {
      const hq = 10, hkv = 2, dim = 128;
      const invFreq = new Float32Array(dim / 2).map((_, i) => Math.fround(1 / Math.pow(10000, (2 * i) / dim)));
      const params: AttentionParams = { numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq, floorScale: 4, attnScale: 0.3 };
      const layers: AttentionSpec[] = [
        { rope: false, qkNorm: false, temperatureTuning: true, chunkSize: 0, pool: "full" },
        { rope: true, qkNorm: true, temperatureTuning: false, chunkSize: 640, pool: "full" },
      ];
      // One sequence; key tiles of 64 → splits (132 SMs, 2 blocks): 4 tiles 2, 8 → 4, 16 → 8,
      // 17 → 8 with the last split empty (3 tiles per split), 5 → 2 uneven.
      for (const kvLen of [256, 512, 1024, 1088, 300]) {
        const slots = shuffled(rng, kvLen + 8);
        const outs = [plain, clustered].map((be) => {
          be.allocKv(params, layers, { full: kvLen + 8, swa: 0, rows: 1, context: kvLen + 8 });
          const data = new Rng(kvLen);
          const res: Float32Array[] = []; // bf16 values, exact in fp32
          let len = 0;
          for (const q of [kvLen - 1, 1]) {
            const batch: StepBatch = {
              ids: new Int32Array(q), positions: Int32Array.from({ length: q }, (_, i) => len + i), logitRows: new Int32Array(0),
              seqs: [{ qStart: 0, qLen: q, kvLen: len + q, row: 0, slotsFrom: len, fullSlots: slots.subarray(len, len + q), swaSlots: new Int32Array(q).fill(-1) }],
            };
            be.beginStep();
            const qd = randn(data, q * hq * dim), kd = randn(data, q * hkv * dim), vd = randn(data, q * hkv * dim);
            for (const [li, spec] of layers.entries()) {
              const out = be.attention(li, spec, be.upload(qd, [q, hq * dim], "bf16"), be.upload(kd, [q, hkv * dim], "bf16"), be.upload(vd, [q, hkv * dim], "bf16"), batch);
              if (q === 1) res.push(Float32Array.from(be.toHost(out)));
            }
            len += q;
          }
          return res;
        });
        for (let li = 0; li < layers.length; li++) {
          const i = outs[0][li].findIndex((v, k) => v !== outs[1][li][k]);
          assert.equal(i, -1, `${kvLen} keys, layer ${li}: element ${i} differs (cluster vs combine)`);
        }
      }
    } finally {
      plain.destroy();
      clustered.destroy();
    }
  });

  test("fa3 falls back to the reference kernel for f32 precision and other head dims", () => {
    const spec: AttentionSpec = { rope: true, qkNorm: false, temperatureTuning: false, chunkSize: 0, pool: "full" };
    for (const [precision, dim] of [["bf16", 48], ["f32", 64]] as const) {
      const be = new CudaBackend({ precision, attention: "fa3", memoryBytes: 64 * MIB, stepBytes: 16 * MIB, poison: true });
      try {
        const n = 5, hq = 4, hkv = 2;
        be.allocKv({ numHeads: hq, numKvHeads: hkv, headDim: dim, eps: 1e-5, invFreq: new Float32Array(dim / 2).fill(0.01), floorScale: 8, attnScale: 0.1 }, [spec], { full: 8, swa: 0, rows: 1, context: 8 });
        const slots = Int32Array.from({ length: n }, (_, i) => i);
        const batch: StepBatch = { ids: new Int32Array(n), positions: slots, seqs: [{ qStart: 0, qLen: n, kvLen: n, row: 0, slotsFrom: 0, fullSlots: slots, swaSlots: slots }], logitRows: new Int32Array(0) };
        be.beginStep();
        const out = be.attention(0, spec, be.upload(randn(rng, n * hq * dim), [n, hq * dim], precision), be.upload(randn(rng, n * hkv * dim), [n, hkv * dim], precision), be.upload(randn(rng, n * hkv * dim), [n, hkv * dim], precision), batch);
        assert.equal(be.attentionKernel, "cuda", `${precision} d${dim}`);
        assert.ok(be.toHost(out).every(Number.isFinite));
      } finally {
        be.destroy();
      }
    }
  });

  test("--attention-backend fa3 and auto pick the fa3 kernels on sm_90", async () => {
    const c = await createCudaBackendChoice("fa3");
    try {
      assert.equal(c.attention, "fa3");
      assert.match(c.description, /fa3/);
    } finally {
      (c.backend as CudaBackend).destroy();
    }
    if (probe.ok && probe.info.ccMajor === 9) {
      const a = await createCudaBackendChoice("auto");
      assert.equal(a.attention, "fa3");
      (a.backend as CudaBackend).destroy();
    }
  });
});
