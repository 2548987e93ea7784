// Is a 1 × 2048 prefill's time a property of its prompt or of its place in the process?
// bench-one-batch's nine timed prompts (the same ids) run three times in one process after its
// warm-up: in order, in order again, and reversed; each run prints its time and the cuBLASLt
// planning it met (plans for new row counts, algorithm choices timed on the GPU). The same prompt
// at the same speed in every pass means its routing sets its time; a pass that runs faster
// than the one before means the first met something (planning, clocks) the later did not.
// Usage: node dist/bench/prefill_order.js [modelPath=bench/configs/scout-4layer] (writes $OUT/prefill_order.json)

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { prefillFlops } from "../src/cli/bench-one-batch.js";
import { ContiguousBatch } from "../src/engine/sequence.js";
import { warmupGemms } from "../src/engine/warmup.js";
import { loadModel } from "../src/model/loader.js";
import { createBackend } from "../src/runtime/select.js";

const modelPath = process.argv[2] ?? "bench/configs/scout-4layer";
const inputLen = 2048;
const choice = await createBackend("cuda", "auto");
const model = (await loadModel(modelPath, choice.backend, { loadFormat: "dummy" })).model;
const be = model.backend;
const cfg = model.cfg;
const sync = () => be.synchronize?.();
// bench-one-batch's prompts, its warm-up prompt and its GEMM warm-up.
const prompt = (run: number) => Array.from({ length: inputLen }, (_, i) => (i * 104729 + run * 15485863) % cfg.vocabSize);
warmupGemms(model, { maxTokens: inputLen, maxLogitRows: 1 });
new ContiguousBatch(model, 1, inputLen + 1).append([Array.from({ length: inputLen }, (_, i) => (7919 + i * 104723 + 17) % cfg.vocabSize)]);
sync();

const flops = prefillFlops(cfg, 1, inputLen);
const rows: { pass: string; run: number; ms: number; plans: number; timed: number }[] = [];
const passes: [string, number[]][] = [["first", [0, 1, 2, 3, 4, 5, 6, 7, 8]], ["again", [0, 1, 2, 3, 4, 5, 6, 7, 8]], ["reversed", [8, 7, 6, 5, 4, 3, 2, 1, 0]]];
for (const [pass, order] of passes) {
  for (const run of order) {
    const seqs = new ContiguousBatch(model, 1, inputLen + 4);
    sync();
    const s0 = be.gemmStats?.();
    const t = performance.now();
    seqs.append([prompt(run)]);
    sync();
    const ms = performance.now() - t;
    const s1 = be.gemmStats?.();
    const plans = s0 && s1 ? s1.plans - s0.plans : -1, timed = s0 && s1 ? s1.timed - s0.timed : -1;
    rows.push({ pass, run, ms, plans, timed });
    console.log(`${pass.padEnd(9)} prompt ${run}  ${ms.toFixed(2).padStart(7)} ms  ${(flops / ms / 1e9).toFixed(0).padStart(4)} TFLOP/s  plans ${plans}  timed ${timed}`);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
for (const [pass] of passes) console.log(`${pass.padEnd(9)} median ${median(rows.filter((r) => r.pass === pass).map((r) => r.ms)).toFixed(2)} ms`);
if (process.env.OUT) writeFileSync(join(process.env.OUT, "prefill_order.json"), JSON.stringify({ device: choice.description, rows }, null, 1));
