// A sampled step on the golden prompts, for the tests that compare layouts (one rank, CPU and
// GPU ranks): every prompt but its last token prefilled, then one forwardSample over those
// tokens with fixed draws and mixed filters.

import type { Golden } from "../model/golden.js";
import type { ForwardModel, ModelSample } from "../model/llama4.js";
import type { SampleRow } from "../runtime/backend.js";
import { ContiguousBatch } from "./sequence.js";

export function sampleOnce(model: ForwardModel, golden: Golden): ModelSample {
  const ps = golden.prompts;
  const batch = new ContiguousBatch(model, ps.length, Math.max(...ps.map((p) => p.prompt_ids.length)) + 1);
  batch.append(ps.map((p) => p.prompt_ids.slice(0, -1)), 1);
  const rows: SampleRow[] = ps.map((_, i) => ({
    temperature: [0.7, 1, 1.3][i % 3],
    topP: [1, 0.9, 0.95][i % 3],
    topK: [-1, 40, 5][i % 3],
    minP: 0,
    u: (i * 0.37 + 0.11) % 1,
    topN: 2,
    edits: null,
  }));
  return batch.appendSample(ps.map((p) => [p.prompt_ids[p.prompt_ids.length - 1]]), rows);
}

/**
 * The golden prompts continued for `steps` sampled tokens (seeded draws, mixed filters, one row
 * greedy), step by step (appendSample) and pipelined (queueSample, each step's ids the previous
 * step's draws on the device): the tokens and logprobs of each.
 */
export function sampledRuns(model: ForwardModel, golden: Golden, steps = 5): { stepwise: number[][][]; pipelined: number[][][] } {
  const ps = golden.prompts;
  const rowsAt = (s: number): SampleRow[] =>
    ps.map((_, i) => ({
      temperature: i === 1 ? 0 : [0.8, 1, 1.2][i % 3],
      topP: [0.95, 1, 0.9][i % 3],
      topK: [-1, 20, 8][i % 3],
      minP: 0,
      u: ((s + 1) * 0.618 + i * 0.29) % 1,
      topN: i % 2 === 0 ? 2 : 0,
      edits: null,
    }));
  const start = () => {
    const b = new ContiguousBatch(model, ps.length, Math.max(...ps.map((p) => p.prompt_ids.length)) + steps);
    b.append(ps.map((p) => p.prompt_ids.slice(0, -1)), 1);
    return b;
  };
  const row = (d: ModelSample) => [Array.from(d.ids), Array.from(d.logprobs)];
  const last = ps.map((p) => p.prompt_ids[p.prompt_ids.length - 1]);
  let batch = start();
  const stepwise: number[][][] = [];
  let feed = last;
  for (let s = 0; s < steps; s++) {
    const d = batch.appendSample(feed.map((id) => [id]), rowsAt(s));
    stepwise.push(row(d));
    feed = Array.from(d.ids);
  }
  batch = start();
  const pipelined: number[][][] = [];
  let drawn = batch.queueSample(last, rowsAt(0));
  for (let s = 0; s < steps; s++) {
    const next = s + 1 < steps ? batch.queueSample(drawn, rowsAt(s + 1)) : null;
    pipelined.push(row(drawn.sampled()));
    if (next) drawn = next;
  }
  return { stepwise, pipelined };
}
