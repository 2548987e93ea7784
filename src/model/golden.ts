// Reads the golden references written by tools/make_fixtures.py (transformers, float64).

import { readFileSync } from "node:fs";
import { join } from "node:path";

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
  return { fixture: ref.fixture, vocabSize: vocab, prompts };
}
