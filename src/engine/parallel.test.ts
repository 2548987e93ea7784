// Tensor and expert parallelism on the CPU backend (ranks are threads sharing memory): every
// layout must give transformers' logprobs and the same greedy tokens as one rank.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { readGolden } from "../model/golden.js";
import { fixturePath } from "../util/repo.js";
import { loadParallel } from "./parallel.js";
import { argmax, logSoftmax } from "./sampling.js";
import { ContiguousBatch } from "./sequence.js";

const layouts = [
  { tp: 2, ep: 1 },
  { tp: 4, ep: 1 },
  { tp: 2, ep: 2 },
  { tp: 4, ep: 4 },
  { tp: 8, ep: 1 }, // fewer KV heads than ranks: KV heads replicated
];

for (const name of ["scout-tiny", "maverick-tiny"]) {
  describe(`parallel ${name}`, () => {
    const golden = readGolden(fixturePath(name));
    for (const { tp, ep } of layouts) {
      test(`--tp ${tp} --ep-size ${ep}: logprobs and greedy continuations match the reference`, async () => {
        const { model, config } = await loadParallel({ modelPath: fixturePath(name), tp, ep, hybridKv: true });
        try {
          const vocab = config.vocabSize;
          // All prompts as one batch: prefill together, then decode the greedy tokens together.
          const ps = golden.prompts;
          const maxLen = Math.max(...ps.map((p) => p.prompt_ids.length + p.greedy_ids.length));
          const batch = new ContiguousBatch(model, ps.length, maxLen);
          let logits = batch.append(ps.map((p) => p.prompt_ids), 1);
          let worst = 0;
          const steps = Math.max(...ps.map((p) => p.greedy_ids.length));
          for (let s = 0; s < steps; s++) {
            const next = ps.map((p, b) => {
              const row = logits.subarray(b * vocab, (b + 1) * vocab);
              const pos = p.prompt_ids.length - 1 + s;
              if (s < p.greedy_ids.length) {
                assert.equal(argmax(row), p.greedy_ids[s], `prompt ${b} step ${s}`);
                const lp = logSoftmax(row);
                for (let i = 0; i < vocab; i++) worst = Math.max(worst, Math.abs(lp[i] - p.logprobs[pos * vocab + i]));
              }
              return [p.greedy_ids[Math.min(s, p.greedy_ids.length - 1)]];
            });
            if (s + 1 < steps) logits = batch.append(next, 1);
          }
          assert.ok(worst < 1e-3, `max |Δ logprob| ${worst}`);
        } finally {
          await model.close();
        }
      });
    }
  });
}

test("--tp 2: greedy steps (forwardArgmax, every rank in step) give the reference's greedy tokens", async () => {
  const name = "scout-tiny";
  const golden = readGolden(fixturePath(name));
  const { model } = await loadParallel({ modelPath: fixturePath(name), tp: 2, ep: 1, hybridKv: true });
  try {
    assert.ok(model.forwardArgmax, "the parallel model has a greedy path");
    const ps = golden.prompts;
    const maxLen = Math.max(...ps.map((p) => p.prompt_ids.length + p.greedy_ids.length));
    const batch = new ContiguousBatch(model, ps.length, maxLen);
    batch.append(ps.map((p) => p.prompt_ids.slice(0, -1)), 1);
    const steps = Math.max(...ps.map((p) => p.greedy_ids.length));
    // Teacher forcing: step s feeds the prompt's last token, then the reference's greedy tokens.
    for (let s = 0; s < steps; s++) {
      const feed = ps.map((p) => [s === 0 ? p.prompt_ids[p.prompt_ids.length - 1] : p.greedy_ids[Math.min(s - 1, p.greedy_ids.length - 1)]]);
      const ids = batch.appendGreedy(feed);
      ps.forEach((p, b) => s < p.greedy_ids.length && assert.equal(ids[b], p.greedy_ids[s], `prompt ${b} step ${s}`));
    }
  } finally {
    await model.close();
  }
});
