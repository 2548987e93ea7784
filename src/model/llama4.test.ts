// The model against transformers' float64 references (tools/make_fixtures.py): every position's
// logprobs within 1e-3 and identical greedy continuations, through a whole-sequence forward and
// through token-by-token decoding with the KV cache.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CpuBackend } from "../runtime/cpu.js";
import { SingleSequence } from "../engine/sequence.js";
import { argmax, logSoftmax } from "../engine/sampling.js";
import { fixturePath } from "../util/repo.js";
import { readGolden } from "./golden.js";
import { loadModel } from "./loader.js";

function maxAbsDiff(ours: Float32Array, rowStart: number, ref: Float64Array, vocab: number): number {
  const lp = logSoftmax(ours.subarray(rowStart * vocab, (rowStart + 1) * vocab));
  let m = 0;
  for (let i = 0; i < vocab; i++) m = Math.max(m, Math.abs(lp[i] - ref[i]));
  return m;
}

// demo-golden: the bundled demo model (trained weights) against transformers' float64 (tools/bf16_drift.py).
for (const name of ["scout-tiny", "maverick-tiny", "demo-golden"]) {
  describe(`golden ${name}`, async () => {
    const dir = fixturePath(name);
    const golden = readGolden(dir);
    const { model, config } = await loadModel(golden.modelDir, new CpuBackend());
    const vocab = config.vocabSize;

    golden.prompts.forEach((p, pi) => {
      const seqIds = [...p.prompt_ids, ...p.greedy_ids];

      test(`prompt ${pi}: whole-sequence forward matches every position's logprobs`, () => {
        const seq = new SingleSequence(model, seqIds.length);
        const logits = seq.append(seqIds, seqIds.length);
        let worst = 0;
        for (let t = 0; t < seqIds.length; t++) {
          worst = Math.max(worst, maxAbsDiff(logits, t, p.logprobs.subarray(t * vocab, (t + 1) * vocab), vocab));
        }
        assert.ok(worst < 1e-3, `max |Δ logprob| = ${worst}`);
      });

      test(`prompt ${pi}: token-by-token decode matches logprobs and greedy continuation`, () => {
        const seq = new SingleSequence(model, seqIds.length);
        let worst = 0;
        let logits: Float32Array = new Float32Array(0);
        const generated: number[] = [];
        for (let t = 0; t < seqIds.length; t++) {
          if (t >= p.prompt_ids.length) generated.push(argmax(logits));
          // Feed the reference token so every position is compared even after a divergence.
          logits = seq.append([seqIds[t]]);
          worst = Math.max(worst, maxAbsDiff(logits, 0, p.logprobs.subarray(t * vocab, (t + 1) * vocab), vocab));
        }
        assert.deepEqual(generated, p.greedy_ids);
        assert.ok(worst < 1e-3, `max |Δ logprob| = ${worst}`);
      });
    });
  });
}
