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
