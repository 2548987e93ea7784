// Reads the golden references written by tools/make_fixtures.py and tools/bf16_drift.py
// (transformers, float64).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../util/repo.js";

export interface GoldenPrompt {
  text: string | null;
  prompt_ids: number[];
  greedy_ids: number[];
  greedy_top2_margins: number[];
  positions: number;
  /** log-softmax rows [positions, vocab] for prompt + greedy continuation. */
  logprobs: Float64Array;
}

export interface Golden {
  fixture: string;
  vocabSize: number;
  /** The checkpoint the references were computed from: the golden's own folder, or (`model` in reference.json, from the package root) another one. */
  modelDir: string;
  prompts: GoldenPrompt[];
}

export function readGolden(dir: string): Golden {
  const ref = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8"));
  const buf = readFileSync(join(dir, "logprobs.bin"));
  const all = new Float64Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  const vocab: number = ref.vocab_size;
  let row = 0;
  const prompts = (ref.prompts as Omit<GoldenPrompt, "logprobs">[]).map((p) => {
    const logprobs = all.subarray(row * vocab, (row + p.positions) * vocab);
    row += p.positions;
    return { ...p, logprobs };
  });
  if (row * vocab !== all.length) throw new Error(`${dir}/logprobs.bin holds ${all.length / vocab} rows, reference.json ${row}`);
  const modelDir = typeof ref.model === "string" ? join(packageRoot(), ref.model) : dir;
  return { fixture: ref.fixture, vocabSize: vocab, modelDir, prompts };
}
