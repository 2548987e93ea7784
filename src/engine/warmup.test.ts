// The GEMM warm-up: which weights it plans (every GEMM of the forward), that it does nothing on
// a backend without planning (the CPU), and on a GPU that a model warmed up this way still
// computes what the CPU backend computes.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { loadModel } from "../model/loader.js";
import { readGolden } from "../model/golden.js";
import { CpuBackend } from "../runtime/cpu.js";
import { probeCuda } from "../runtime/cuda/native.js";
import { fixturePath } from "../util/repo.js";
import { SingleSequence } from "./sequence.js";
import { gemmWarmups, warmupGemms } from "./warmup.js";

const golden = readGolden(fixturePath("scout-tiny"));

test("gemmWarmups lists every linear of every layer and the lm_head (q, k and v as their stacked tensor)", async () => {
  const { model, config } = await loadModel(golden.modelDir, new CpuBackend());
  const specs = gemmWarmups(model, { maxTokens: 512, maxLogitRows: 16 });
  const perLayer = config.layers.map((l) => (l.moe ? 2 + 5 : 2 + 2));
  assert.equal(specs.length, perLayer.reduce((a, b) => a + b, 0) + 1);
  const w = model.weights;
  const planned = new Set(specs.filter((s) => s.weight !== w.lmHead).map((s) => s.weight));
  for (const [i, l] of w.layers.entries()) {
    assert.ok(l.qkv, `layer ${i}: q, k and v are loaded side by side (CpuBackend.splitRows)`);
    for (const t of [l.qkv, l.o, l.router, l.expertsGateUp, l.expertsDown, l.sharedGateUp, l.sharedDown, l.mlpGateUp, l.mlpDown]) {
      if (t) assert.ok(planned.has(t), `layer ${i}: a weight is missing`);
    }
    for (const t of [l.q, l.k, l.v]) assert.ok(!planned.has(t), `layer ${i}: q, k or v planned alone (the GEMM runs on the stacked tensor)`);
  }
  const head = specs.filter((s) => s.weight === w.lmHead);
  assert.deepEqual(head.map((s) => [s.maxRows, s.outF32]), [[16, true]]);
  assert.ok(specs.filter((s) => s.weight !== w.lmHead).every((s) => s.maxRows === 512));
  // A backend without prepareGemms (the CPU) has nothing to warm.
  assert.equal(warmupGemms(model, { maxTokens: 512, maxLogitRows: 16 }), null);
});

const probe = probeCuda();
const skip = probe.ok ? false : "no CUDA device";

describe("GEMM warm-up on the GPU", { skip }, () => {
  let close = () => {};
  after(() => close());

  test("scout-tiny after the warm-up: the forward matches the CPU backend (f32) and repeats exactly", async () => {
    const { CudaBackend } = await import("../runtime/cuda/backend.js");
    const gpu = new CudaBackend({ precision: "f32", memoryBytes: 512 * 2 ** 20, stepBytes: 128 * 2 ** 20, poison: true });
    close = () => gpu.destroy();
    const { model: gm } = await loadModel(golden.modelDir, gpu);
    const { model: cm, config } = await loadModel(golden.modelDir, new CpuBackend());
    const ids = golden.prompts[0].prompt_ids;
    const r = warmupGemms(gm, { maxTokens: 4 * ids.length, maxLogitRows: 4 });
    assert.ok(r && r.gemms > 0 && r.shapes > 0, `warm-up: ${JSON.stringify(r)}`);
    console.log(`# scout-tiny warm-up: ${r!.gemms} GEMMs over ${r!.shapes} shapes in ${r!.seconds.toFixed(3)} s`);
    const run = (m: typeof gm) => new SingleSequence(m, ids.length).append(ids, ids.length);
    const got = run(gm);
    const want = run(cm);
    assert.equal(got.length, ids.length * config.vocabSize);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    assert.ok(worst < 1e-3, `max |Δ logit| ${worst}`);
    assert.deepEqual(run(gm), got, "a second forward gives the same logits");
    assert.equal(gpu.stats().fallbackGemms, 0);
  });
});
