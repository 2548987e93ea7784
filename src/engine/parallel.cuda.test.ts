// Tensor and expert parallelism on GPUs: rank r on GPU r, NCCL between the ranks. Every layout
// that fits the visible GPUs must give the golden fixtures' greedy tokens and the --tp 1 run's:
// at the reference precision (f32, which matches the CPU to ~1e-5) every token and logprobs
// within 1e-3; in bf16 every token whose reference top-2 margin is > 1. Also NCCL on its own
// (exact all-reduce/all-gather checks) and the all-reduce bus bandwidth for docs/PERF.md. Small
// all-reduces take the custom all-reduce over peer memory where the GPUs allow it (its own checks:
// runtime/cuda/peer_allreduce.cuda.test.ts); the graph test also runs with NCCL alone.
// Skipped, with the reason, without two CUDA devices and NCCL.

process.env.NCCL_NVLS_ENABLE ??= "0"; // never NVLink multicast (shared hosts: see the device notes)

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { readGolden, type Golden } from "../model/golden.js";
import { loadModel } from "../model/loader.js";
import type { ForwardModel, ModelSample } from "../model/llama4.js";
import { CudaBackend, type Precision } from "../runtime/cuda/backend.js";
import { ncclDescription } from "../runtime/cuda/nccl.js";
import { ncclBench } from "../runtime/cuda/nccl_bench.js";
import { fixturePath } from "../util/repo.js";
import { loadParallel } from "./parallel.js";
import { argmax, logSoftmax } from "./sampling.js";
import { ContiguousBatch } from "./sequence.js";
import { sampleOnce, sampledRuns } from "./sample_check.js";
import { warmupGemms } from "./warmup.js";
import { multiGpu } from "../runtime/cuda/check.js";

const MIB = 2 ** 20;
const RANK_MEMORY = { memoryBytes: 512 * MIB, stepBytes: 128 * MIB, poison: true };

const { count, skip } = multiGpu();

test("tensor parallelism on GPUs: devices and NCCL, or why skipped", () => {
  console.log(skip ? `# skipped: ${skip}` : `# ${count} CUDA devices; NCCL ${ncclDescription()}; NCCL_NVLS_ENABLE=${process.env.NCCL_NVLS_ENABLE}`);
});

describe("NCCL between GPU ranks", { skip }, () => {
  for (const ranks of [2, 4].filter((r) => r <= count)) {
    test(`${ranks} ranks: exact all-reduce (fp32, bf16) and all-gather; all-reduce bandwidth of 256 MiB`, async () => {
      const r = await ncclBench(ranks, 256 * MIB);
      console.log(
        `# all-reduce fp32 256 MiB over ${ranks} GPUs: ${r.ms.toFixed(3)} ms, algbw ${(r.algBandwidth / 1e9).toFixed(1)} GB/s, busbw ${(r.busBandwidth / 1e9).toFixed(1)} GB/s`,
      );
      assert.deepEqual(r.failures, []);
    });
  }
});

interface Run {
  /** argmax per prompt per greedy step, with the reference tokens fed back (teacher forcing). */
  tokens: number[][];
  /** max |Δ logprob| against the reference over all checked rows and the whole vocabulary. */
  worst: number;
}

/** All prompts as one batch: prefill together, then decode the reference tokens together. */
function run(model: ForwardModel, golden: Golden, vocab: number): Run {
  const ps = golden.prompts;
  const maxLen = Math.max(...ps.map((p) => p.prompt_ids.length + p.greedy_ids.length));
  const batch = new ContiguousBatch(model, ps.length, maxLen);
  let logits = batch.append(ps.map((p) => p.prompt_ids), 1);
  const tokens: number[][] = ps.map(() => []);
  let worst = 0;
  const steps = Math.max(...ps.map((p) => p.greedy_ids.length));
  for (let s = 0; s < steps; s++) {
    const next = ps.map((p, b) => {
      const row = logits.subarray(b * vocab, (b + 1) * vocab);
      if (s < p.greedy_ids.length) {
        tokens[b].push(argmax(row));
        const lp = logSoftmax(row);
        const ref = p.logprobs.subarray((p.prompt_ids.length - 1 + s) * vocab);
        for (let i = 0; i < vocab; i++) worst = Math.max(worst, Math.abs(lp[i] - ref[i]));
      }
      return [p.greedy_ids[Math.min(s, p.greedy_ids.length - 1)]];
    });
    if (s + 1 < steps) logits = batch.append(next, 1);
  }
  return { tokens, worst };
}

/** "prompt b step s: got x, want y (margin m)" for every token that must match and does not. */
function mismatches(got: number[][], want: number[][], golden: Golden, minMargin: number): string[] {
  const bad: string[] = [];
  golden.prompts.forEach((p, b) =>
    p.greedy_ids.forEach((_, s) => {
      const m = p.greedy_top2_margins[s];
      if (m > minMargin && got[b][s] !== want[b][s]) bad.push(`prompt ${b} step ${s}: ${got[b][s]} ≠ ${want[b][s]} (margin ${m.toFixed(3)})`);
    }),
  );
  return bad;
}

const layouts = [
  { tp: 2, ep: 1 },
  { tp: 2, ep: 2 },
  { tp: 4, ep: 1 },
  { tp: 4, ep: 4 },
];

/** f32: every greedy token (margins here are ≥ 0.02) and logprobs within 1e-3; bf16: clear tokens. */
const LIMITS: Record<Precision, { minMargin: number; maxLogprob: number }> = {
  f32: { minMargin: -1, maxLogprob: 1e-3 },
  // bf16 logprob noise on these peaked random fixtures reaches ~2.4 even at tp 1, and the
  // graph-captured NCCL all-reduce at tp 4 sums partials in another order: one token with a
  // 0.53 margin flipped on 4×H100 (2026-11-27). Tokens with margin > 1 must all agree.
  bf16: { minMargin: 1.0, maxLogprob: Infinity },
};

for (const precision of ["f32", "bf16"] as const) {
  for (const name of ["scout-tiny", "maverick-tiny"]) {
    describe(`${name} on GPUs (${precision})`, { skip }, () => {
      const dir = fixturePath(name);
      const golden = readGolden(dir);
      const reference = golden.prompts.map((p) => p.greedy_ids);
      const limits = LIMITS[precision];
      let single: Run | undefined;

      test("--tp 1 on GPU 0", async () => {
        const backend = new CudaBackend({ ...RANK_MEMORY, precision });
        try {
          const { model, config } = await loadModel(dir, backend, { hybridKv: true });
          single = run(model, golden, config.vocabSize);
        } finally {
          backend.destroy();
        }
        console.log(`# ${name} ${precision} tp 1: max |Δ logprob| ${single.worst.toExponential(2)}`);
        assert.deepEqual(mismatches(single.tokens, reference, golden, limits.minMargin), []);
        assert.ok(single.worst < limits.maxLogprob, `max |Δ logprob| ${single.worst}`);
      });

      for (const { tp, ep } of layouts.filter((l) => l.tp <= count)) {
        test(`--tp ${tp} --ep-size ${ep}: the reference's and --tp 1's greedy tokens`, async () => {
          const t0 = performance.now();
          const { model, config } = await loadParallel({ modelPath: dir, tp, ep, hybridKv: true, device: "cuda", cuda: { ...RANK_MEMORY, precision } });
          const loaded = performance.now();
          let r: Run;
          let allReduce: string;
          try {
            // Every rank plans its shards' GEMMs first; the run after it must not change.
            const warm = warmupGemms(model, { maxTokens: 64, maxLogitRows: golden.prompts.length });
            assert.ok(warm && warm.gemms > 0, `tp ${tp} warm-up: ${JSON.stringify(warm)}`);
            r = run(model, golden, config.vocabSize);
            allReduce = customAllReduce(model.backend as CudaBackend);
          } finally {
            await model.close();
          }
          console.log(`# ${name} ${precision} tp ${tp} ep ${ep}: max |Δ logprob| ${r.worst.toExponential(2)} (load ${((loaded - t0) / 1000).toFixed(1)} s, run ${((performance.now() - loaded) / 1000).toFixed(1)} s; ${allReduce})`);
          assert.deepEqual(mismatches(r.tokens, reference, golden, limits.minMargin), [], "against the reference");
          if (single) assert.deepEqual(mismatches(r.tokens, single.tokens, golden, limits.minMargin), [], "against --tp 1");
          assert.ok(r.worst < limits.maxLogprob, `max |Δ logprob| ${r.worst}`);
        });
      }
    });
  }
}

/** "custom all-reduce: 312 calls on rank 0 (≤ 1048576 bytes)" or why it is off. */
function customAllReduce(backend: CudaBackend): string {
  const ar = backend.peerAllReduce;
  if (!ar) return "custom all-reduce not connected";
  return ar.off ? `custom all-reduce off (${ar.off})` : `custom all-reduce: ${ar.calls} calls on rank 0 (≤ ${ar.maxBytes} bytes)`;
}

/** Greedy continuations of the prompts, step by step (forwardArgmax) and pipelined (queueArgmax, each step's ids the last step's device picks). */
function freeRuns(model: ForwardModel, golden: Golden): { stepwise: number[][]; pipelined: number[][] } {
  const ps = golden.prompts;
  const steps = 6;
  const start = () => {
    const b = new ContiguousBatch(model, ps.length, Math.max(...ps.map((p) => p.prompt_ids.length)) + steps);
    b.append(ps.map((p) => p.prompt_ids.slice(0, -1)), 1);
    return b;
  };
  const last = ps.map((p) => p.prompt_ids[p.prompt_ids.length - 1]);
  let batch = start();
  const stepwise: number[][] = [];
  let feed = last;
  for (let s = 0; s < steps; s++) stepwise.push((feed = Array.from(batch.appendGreedy(feed.map((id) => [id])))));
  batch = start();
  const pipelined: number[][] = [];
  let picks = batch.queueGreedy(last);
  for (let s = 0; s < steps; s++) {
    const next = s + 1 < steps ? batch.queueGreedy(picks) : null;
    pipelined.push(Array.from(picks.wait()));
    if (next) picks = next;
  }
  return { stepwise, pipelined };
}

/**
 * Decode steps with the reference tokens fed back: every step's logits (append) and, on a second
 * pass, every step's greedy ids (appendGreedy: forwardArgmax, the distributed argmax under TP).
 */
function decodeBoth(model: ForwardModel, golden: Golden, vocab: number): { logits: Float32Array[]; greedy: number[][] } {
  const ps = golden.prompts;
  const maxLen = Math.max(...ps.map((p) => p.prompt_ids.length + p.greedy_ids.length));
  const steps = Math.max(...ps.map((p) => p.greedy_ids.length));
  const feed = (s: number) => ps.map((p) => [p.greedy_ids[Math.min(s, p.greedy_ids.length - 1)]]);
  const logits: Float32Array[] = [];
  let batch = new ContiguousBatch(model, ps.length, maxLen);
  batch.append(ps.map((p) => p.prompt_ids), 1);
  for (let s = 0; s < steps; s++) logits.push(batch.append(feed(s), 1).slice(0, ps.length * vocab));
  const greedy: number[][] = [];
  batch = new ContiguousBatch(model, ps.length, maxLen);
  batch.append(ps.map((p) => p.prompt_ids), 1);
  for (let s = 0; s < steps; s++) greedy.push(Array.from(batch.appendGreedy(feed(s))));
  return { logits, greedy };
}

describe("sampling under tensor parallelism", { skip }, () => {
  const dir = fixturePath("scout-tiny");
  const golden = readGolden(dir);
  for (const tp of [2, 4].filter((t) => t <= count)) {
    test(`--tp ${tp} (f32): a sampled step draws on rank 0's GPU (gathered logits) what one GPU draws; pipelined draws equal step-by-step ones`, async () => {
      const backend = new CudaBackend({ ...RANK_MEMORY, precision: "f32" });
      let want: ModelSample;
      try {
        want = sampleOnce((await loadModel(dir, backend, { hybridKv: true })).model, golden);
      } finally {
        backend.destroy();
      }
      const { model } = await loadParallel({ modelPath: dir, tp, ep: 1, hybridKv: true, device: "cuda", cuda: { ...RANK_MEMORY, precision: "f32" } });
      try {
        const got = sampleOnce(model, golden);
        assert.deepEqual(Array.from(got.ids), Array.from(want.ids));
        got.logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - want.logprobs[i]) < 1e-4, `row ${i}: logprob ${lp} vs ${want.logprobs[i]}`));
        assert.deepEqual(got.top?.map((t) => t.map(([id]) => id)), want.top?.map((t) => t.map(([id]) => id)));
        // Pipelined: rank 0 draws, the other ranks receive its draws on the device for the next step's ids.
        const runs = sampledRuns(model, golden);
        assert.deepEqual(runs.pipelined, runs.stepwise, "pipelined draws vs step by step");
      } finally {
        await model.close();
      }
    });
  }
});

describe("CUDA graphs and greedy under tensor parallelism", { skip }, () => {
  const name = "scout-tiny";
  const dir = fixturePath(name);
  const golden = readGolden(dir);
  for (const tp of [2, 4].filter((t) => t <= count)) {
    test(`--tp ${tp} (f32): graph replay equals direct steps; distributed argmax equals the host argmax`, async () => {
      const runWith = async (graphSizes: number[] | undefined, ncclOnly = false) => {
        const saved = process.env.TSGLANG_CUSTOM_AR_MAX_BYTES;
        if (ncclOnly) process.env.TSGLANG_CUSTOM_AR_MAX_BYTES = "0"; // read by every rank as it connects (workers copy the env)
        let loaded: Awaited<ReturnType<typeof loadParallel>>;
        try {
          loaded = await loadParallel({ modelPath: dir, tp, ep: 1, hybridKv: true, device: "cuda", cuda: { ...RANK_MEMORY, precision: "f32", graphSizes } });
        } finally {
          if (saved === undefined) delete process.env.TSGLANG_CUSTOM_AR_MAX_BYTES;
          else process.env.TSGLANG_CUSTOM_AR_MAX_BYTES = saved;
        }
        const { model, config } = loaded;
        try {
          const r = { ...decodeBoth(model, golden, config.vocabSize), ...freeRuns(model, golden) };
          const backend = model.backend as CudaBackend;
          const stats = backend.graphStats;
          return { ...r, vocab: config.vocabSize, replays: stats.replays, off: stats.off, allReduce: customAllReduce(backend), customCalls: backend.peerAllReduce?.calls ?? 0 };
        } finally {
          await model.close();
        }
      };
      const graphs = await runWith(undefined);
      const direct = await runWith([]);
      const ncclOnly = await runWith(undefined, true);
      console.log(`# tp ${tp}: ${graphs.allReduce}; NCCL-only run: ${ncclOnly.allReduce}`);
      assert.equal(ncclOnly.customCalls, 0, "TSGLANG_CUSTOM_AR_MAX_BYTES=0 still took the custom path");
      assert.equal(graphs.off, "", "graphs were turned off");
      assert.ok(graphs.replays > 0, "no graph replays under TP");
      assert.equal(direct.replays, 0);
      let worst = 0;
      graphs.logits.forEach((l, s) => l.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - direct.logits[s][i])))));
      console.log(`# tp ${tp}: ${graphs.replays} graph replays on rank 0; max |Δ logit| graphs vs direct ${worst.toExponential(2)}`);
      assert.ok(worst < 1e-4, `max |Δ logit| ${worst}`);
      const v = graphs.vocab;
      const hostArgmax = graphs.logits.map((l) => Array.from({ length: l.length / v }, (_, b) => argmax(l.subarray(b * v, (b + 1) * v))));
      assert.deepEqual(graphs.greedy, hostArgmax, "greedy with graphs vs the host argmax");
      assert.deepEqual(direct.greedy, hostArgmax, "greedy without graphs vs the host argmax");
      // The custom all-reduce (rank-order fp32 sums) against NCCL alone (its own order): f32 noise only.
      let vsNccl = 0;
      graphs.logits.forEach((l, s) => l.forEach((v, i) => (vsNccl = Math.max(vsNccl, Math.abs(v - ncclOnly.logits[s][i])))));
      console.log(`# tp ${tp}: max |Δ logit| custom all-reduce vs NCCL only ${vsNccl.toExponential(2)}`);
      assert.ok(vsNccl < 1e-4, `max |Δ logit| custom vs NCCL ${vsNccl}`);
      assert.deepEqual(ncclOnly.greedy, hostArgmax, "greedy with NCCL only vs the host argmax");
      // The overlap schedule's steps: ids from the previous step's picks, merged on the device.
      for (const [what, r] of [["graphs", graphs], ["direct", direct]] as const) assert.deepEqual(r.pipelined, r.stepwise, `pipelined greedy vs step by step (${what})`);
    });
  }
});
