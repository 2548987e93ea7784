// Where a batch-1 prefill's time goes: cold and warm prefills of one prompt (and a second prompt,
// whose expert counts differ), then one prefill with every kernel launch, cuBLASLt call, copy and
// memset followed by a synchronize, timed on the host and summed by name (device time + launch
// overhead per op; the sum against the wall time leaves the host-side gaps).
// Usage: node dist/bench/prefill_profile.js [inputLen=2048] [modelPath=bench/configs/scout-4layer]
// (writes $OUT/prefill_profile-<inputLen>.json when OUT is set)

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ContiguousBatch } from "../src/engine/sequence.js";
import { loadModel } from "../src/model/loader.js";
import { createBackend } from "../src/runtime/select.js";
import { prefillFlops } from "../src/cli/bench-one-batch.js";

const inputLen = Number(process.argv[2] ?? 2048);
const modelPath = process.argv[3] ?? "bench/configs/scout-4layer";
const choice = await createBackend("cuda", "auto");
const model = (await loadModel(modelPath, choice.backend, { loadFormat: "dummy" })).model;
const be = model.backend as any;
const cfg = model.cfg;
const sync = () => be.synchronize();
const flops = prefillFlops(cfg, 1, inputLen);
const prompt = (seed: number) => Array.from({ length: inputLen }, (_, i) => (seed * 7919 + i * 104729 + seed * i) % cfg.vocabSize);

function prefill(seed: number): number {
  const seqs = new ContiguousBatch(model, 1, inputLen + 4);
  sync();
  const t = performance.now();
  seqs.append([prompt(seed)]);
  sync();
  return performance.now() - t;
}

const runs: { what: string; ms: number; tflops: number }[] = [];
for (const [what, seed] of [["cold, prompt A", 0], ["warm, prompt A", 0], ["prompt B (new expert counts)", 1], ["warm, prompt B", 1], ["prompt C", 2], ["warm, prompt A again", 0]] as const) {
  const ms = prefill(seed);
  runs.push({ what, ms, tflops: flops / ms / 1e9 });
  console.log(`${what.padEnd(32)} ${ms.toFixed(2).padStart(9)} ms  ${(flops / ms / 1e9).toFixed(1).padStart(6)} TFLOP/s`);
}

// Per-op timing: everything that enqueues device work waits for it.
const ops = new Map<string, { calls: number; ms: number }>();
const add = (name: string, ms: number) => {
  const o = ops.get(name) ?? { calls: 0, ms: 0 };
  o.calls++;
  o.ms += ms;
  ops.set(name, o);
};
const native = be.native;
const wrapNative = (method: string, label: (args: any[]) => string) => {
  const orig = native[method].bind(native);
  native[method] = (...args: any[]) => {
    const t = performance.now();
    const r = orig(...args);
    native.synchronize();
    add(label(args), performance.now() - t);
    return r;
  };
};
const kernels = be.k;
const origLaunch = kernels.launch.bind(kernels);
kernels.launch = (name: string, ...rest: any[]) => {
  const t = performance.now();
  origLaunch(name, ...rest);
  native.synchronize();
  add(`kernel ${name}`, performance.now() - t);
};
wrapNative("matmul", (a) => `cublasLt m=${a[2]} n=${a[3] <= 64 ? a[3] : a[3] > 1024 ? a[3] : "65-1024"} k=${a[4]}`);
wrapNative("memset", () => "memset");
wrapNative("htod", () => "htod");
wrapNative("dtoh", () => "dtoh");
// The MoE layers' routing, as the host path downloads it (one expert id per token): rows per
// expert, to set the expert GEMMs' times against their weight-read floor.
const routed: number[][] = [];
wrapNative("dtohAfter", () => "dtoh (routing)");
const dtohTimed = native.dtohAfter;
native.dtohAfter = (dst: any, src: any, ev: any) => {
  const r = dtohTimed(dst, src, ev);
  if (dst instanceof Int32Array && dst.length === inputLen) {
    const counts = new Array(cfg.numExperts).fill(0);
    for (const j of dst) counts[j]++;
    routed.push(counts);
  }
  return r;
};
for (const seed of [3, 0]) {
  ops.clear();
  const wall = prefill(seed);
  const total = [...ops.values()].reduce((a, o) => a + o.ms, 0);
  console.log(`\nper-op (synchronized), prompt seed ${seed}: wall ${wall.toFixed(2)} ms, ops ${total.toFixed(2)} ms, other host time ${(wall - total).toFixed(2)} ms`);
  for (const [i, c] of routed.splice(0).entries()) console.log(`MoE layer ${i}: rows per expert ${c.join(" ")}`);
  for (const [name, o] of [...ops.entries()].sort((a, b) => b[1].ms - a[1].ms)) {
    console.log(`${name.padEnd(48)} ${String(o.calls).padStart(5)} calls ${o.ms.toFixed(3).padStart(9)} ms  ${(o.ms / o.calls * 1000).toFixed(1).padStart(8)} µs/call`);
  }
}
const result = { device: choice.description, inputLen, flops, runs, ops: Object.fromEntries(ops), fallbackGemms: be.fallbackGemms };
console.log(`fallbackGemms ${be.fallbackGemms}`);
if (process.env.OUT) writeFileSync(join(process.env.OUT, `prefill_profile-${inputLen}.json`), JSON.stringify(result, null, 1));
