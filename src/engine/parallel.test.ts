// Tensor and expert parallelism on the CPU backend (ranks are threads sharing memory): every
// layout must give transformers' logprobs and the same greedy tokens as one rank.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { readGolden } from "../model/golden.js";
import { loadModel } from "../model/loader.js";
import { CpuBackend } from "../runtime/cpu.js";
import { fixturePath } from "../util/repo.js";
import { compact, loadParallel } from "./parallel.js";
import { MessageChannel } from "node:worker_threads";
import { argmax, logSoftmax } from "./sampling.js";
import { ContiguousBatch } from "./sequence.js";
import { sampleOnce } from "./sample_check.js";

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

test("--tp 2: pipelined greedy steps (queueArgmax, each chained on the picks before it) give the reference's greedy tokens", async () => {
  const name = "scout-tiny";
  const golden = readGolden(fixturePath(name));
  const { model } = await loadParallel({ modelPath: fixturePath(name), tp: 2, ep: 1, hybridKv: true });
  try {
    const ps = golden.prompts;
    const steps = Math.max(...ps.map((p) => p.greedy_ids.length));
    const batch = new ContiguousBatch(model, ps.length, Math.max(...ps.map((p) => p.prompt_ids.length)) + steps);
    batch.append(ps.map((p) => p.prompt_ids.slice(0, -1)), 1);
    // Only the first step's ids come from the host; every later step's are the last step's picks.
    let picks = batch.queueGreedy(ps.map((p) => p.prompt_ids[p.prompt_ids.length - 1]));
    for (let s = 0; s < steps; s++) {
      const next = s + 1 < steps ? batch.queueGreedy(picks) : null;
      const ids = picks.wait();
      ps.forEach((p, b) => s < p.greedy_ids.length && assert.equal(ids[b], p.greedy_ids[s], `prompt ${b} step ${s}`));
      if (next) picks = next;
    }
  } finally {
    await model.close();
  }
});

test("--tp 2: a sampled step (forwardSample, every rank in step) draws what one rank draws with the same u", async () => {
  const dir = fixturePath("scout-tiny");
  const golden = readGolden(dir);
  const one = sampleOnce((await loadModel(dir, new CpuBackend())).model, golden);
  const { model } = await loadParallel({ modelPath: dir, tp: 2, ep: 1, hybridKv: true });
  try {
    const two = sampleOnce(model, golden);
    assert.deepEqual(Array.from(two.ids), Array.from(one.ids));
    two.logprobs.forEach((lp, i) => assert.ok(Math.abs(lp - one.logprobs[i]) < 1e-4, `row ${i}: logprob ${lp} vs ${one.logprobs[i]}`));
  } finally {
    await model.close();
  }
});

test("a step crosses to the ranks without the slot lists its views sit in", async () => {
  // A decode step of a 1M-token request: its slots are a one-element view into a 4 MB list.
  const list = new Int32Array(1 << 20).fill(7);
  const seq = { qStart: 0, qLen: 1, kvLen: 1000, row: 3, slotsFrom: 999, fullSlots: list.subarray(999, 1000), swaSlots: list.subarray(999, 1000) };
  const batch = { ids: Int32Array.of(5), positions: Int32Array.of(999), seqs: [seq], logitRows: Int32Array.of(0) };
  const sent = compact(batch);
  assert.equal(sent.seqs[0].fullSlots.buffer.byteLength, 4);
  assert.deepEqual([...sent.seqs[0].swaSlots], [7]);
  assert.equal(sent.ids, batch.ids, "arrays that own their buffer are not copied");
  // What postMessage actually carries: the clone of the compact batch holds 4-byte slot buffers.
  const { port1, port2 } = new MessageChannel();
  const got = new Promise<typeof sent>((resolve) => port2.once("message", resolve));
  port1.postMessage(sent);
  const received = await got;
  port1.close();
  assert.equal(received.seqs[0].fullSlots.buffer.byteLength, 4);
  assert.equal(received.seqs[0].row, 3);
});
