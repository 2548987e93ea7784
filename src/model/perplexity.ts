// Held-out perplexity of a checkpoint, by the procedure in the demo model card: tokenise the
// text without special tokens, cut it into windows of W tokens, run [BOS] + w[:-1] from position
// 0 for each window, and sum -log p(w[i]) in float64. Windows are spread over worker threads.

import { availableParallelism } from "node:os";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { CpuBackend } from "../runtime/cpu.js";
import { logSoftmax } from "../engine/sampling.js";
import { SingleSequence } from "../engine/sequence.js";
import { loadModel } from "./loader.js";

interface Job {
  dir: string;
  bos: number;
  windows: number[][];
}

/** NLL sum of each window, in order. */
async function windowNll(job: Job): Promise<number[]> {
  const { model, config } = await loadModel(job.dir, new CpuBackend());
  const vocab = config.vocabSize;
  return job.windows.map((w) => {
    const seq = new SingleSequence(model, w.length);
    const logits = seq.append([job.bos, ...w.slice(0, -1)], w.length);
    let nll = 0;
    for (let i = 0; i < w.length; i++) nll -= logSoftmax(logits.subarray(i * vocab, (i + 1) * vocab))[w[i]];
    return nll;
  });
}

export interface PerplexityResult {
  tokens: number;
  windows: number;
  nllSums: number[];
  ppl: number;
}

export async function perplexity(dir: string, ids: number[], bos: number, window: number, threads = availableParallelism()): Promise<PerplexityResult> {
  const windows: number[][] = [];
  for (let i = 0; i < ids.length; i += window) windows.push(ids.slice(i, i + window));
  const k = Math.max(1, Math.min(threads, windows.length));
  // Round-robin so every thread gets a similar amount of work; results go back in order.
  const parts = Array.from({ length: k }, (_, t) => windows.map((w, i) => [i, w] as const).filter(([i]) => i % k === t));
  const results = await Promise.all(
    parts.map(
      (part) =>
        new Promise<number[]>((resolve, reject) => {
          const wk = new Worker(new URL(import.meta.url), { workerData: { dir, bos, windows: part.map(([, w]) => w) } satisfies Job });
          wk.once("message", resolve);
          wk.once("error", reject);
        }),
    ),
  );
  const nllSums = new Array<number>(windows.length);
  parts.forEach((part, t) => part.forEach(([i], j) => (nllSums[i] = results[t][j])));
  const total = nllSums.reduce((a, b) => a + b, 0);
  return { tokens: ids.length, windows: windows.length, nllSums, ppl: Math.exp(total / ids.length) };
}

if (!isMainThread && (workerData as Job)?.windows) {
  windowNll(workerData as Job).then((r) => parentPort!.postMessage(r));
}
