// Tensor/expert parallel ranks as threads: rank 0 lives in the calling thread (the engine
// worker) and drives; ranks 1..N-1 are worker threads that replay every allocKv/forward rank 0
// makes, meeting it in the collectives. The scheduler sees one model either way.

import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import type { AttentionSpec, KvPoolSizes, StepBatch } from "../runtime/backend.js";
import { CpuBackend } from "../runtime/cpu.js";
import { SharedMemoryCollective, createSharedCollective, type SharedCollectiveInit } from "../runtime/collective.js";
import type { Llama4Config } from "../model/config.js";
import { loadModel } from "../model/loader.js";
import type { ForwardModel } from "../model/llama4.js";
import type { LoadOptions } from "../model/weights.js";

export interface ParallelOptions {
  modelPath: string;
  tp: number;
  ep: number;
  hybridKv?: boolean;
  loadFormat?: LoadOptions["loadFormat"];
}

interface RankData {
  opts: ParallelOptions;
  rank: number;
  collective: SharedCollectiveInit;
}

type RankMessage = { type: "allocKv"; sizes: KvPoolSizes } | { type: "forward"; batch: StepBatch };

async function loadRank(opts: ParallelOptions, rank: number, collective: SharedCollectiveInit) {
  const backend = new CpuBackend(new SharedMemoryCollective(collective, rank));
  return loadModel(opts.modelPath, backend, { hybridKv: opts.hybridKv, loadFormat: opts.loadFormat, shard: { rank, tp: opts.tp, ep: opts.ep } });
}

class ParallelModel implements ForwardModel {
  constructor(
    private readonly lead: ForwardModel,
    private readonly workers: Worker[],
  ) {}

  get cfg(): Llama4Config {
    return this.lead.cfg;
  }

  get attention(): AttentionSpec[] {
    return this.lead.attention;
  }

  get kvElementBytes(): number {
    return this.lead.kvElementBytes;
  }

  /** Ranks hold equal shares, so rank 0's free memory stands for all. */
  kvMemoryBytes(): number | undefined {
    return this.lead.kvMemoryBytes();
  }

  allocKv(sizes: KvPoolSizes): void {
    for (const w of this.workers) w.postMessage({ type: "allocKv", sizes } satisfies RankMessage);
    this.lead.allocKv(sizes);
  }

  forward(batch: StepBatch): Float32Array {
    for (const w of this.workers) w.postMessage({ type: "forward", batch } satisfies RankMessage);
    return this.lead.forward(batch);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Loads every rank's shard; resolves to rank 0's view once all ranks are ready. */
export async function loadParallel(opts: ParallelOptions): Promise<{ model: ForwardModel & { close(): Promise<void> }; config: Llama4Config }> {
  const collective = createSharedCollective(opts.tp);
  const workers = Array.from({ length: opts.tp - 1 }, (_, i) => new Worker(new URL(import.meta.url), { workerData: { opts, rank: i + 1, collective } satisfies RankData }));
  const ready = workers.map(
    (w) =>
      new Promise<void>((resolve, reject) => {
        w.once("message", (m: { type: string; message?: string }) => (m.type === "ready" ? resolve() : reject(new Error(m.message))));
        w.once("error", reject);
      }),
  );
  const [lead] = await Promise.all([loadRank(opts, 0, collective), ...ready]);
  // A rank that dies mid-step would leave the others waiting in a collective forever.
  for (const w of workers) w.on("error", (e) => {
    console.error(`tsglang: tensor-parallel rank failed: ${e.message}`);
    process.exit(1);
  });
  return { model: new ParallelModel(lead.model, workers), config: lead.config };
}

if (!isMainThread && (workerData as RankData)?.collective) {
  const { opts, rank, collective } = workerData as RankData;
  loadRank(opts, rank, collective).then(
    ({ model }) => {
      parentPort!.on("message", (m: RankMessage) => {
        if (m.type === "allocKv") model.allocKv(m.sizes);
        else model.forward(m.batch);
      });
      parentPort!.postMessage({ type: "ready" });
    },
    (e: Error) => parentPort!.postMessage({ type: "error", message: e.message }),
  );
}
