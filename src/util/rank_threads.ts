// Rank threads (tensor-parallel ranks in engine/parallel.ts; the multi-GPU checks nccl_bench.ts
// and peer_allreduce_check.ts): rank r ≥ 1 runs in a worker of the calling module, given data(r)
// as its workerData, and posts RankThreadReply messages — { joining } once bound to its device,
// then { result } (a rank that keeps serving posts it when ready) or { error }. Rank 0 stays on
// the calling thread. A thread that exits or throws before it reports fails both promises
// instead of leaving them pending.

import { Worker } from "node:worker_threads";

export type RankThreadReply<R> = { joining: true } | { result: R } | { error: string };

export interface RankThreads<R> {
  /** Ranks 1..n−1's threads. */
  workers: Worker[];
  /** Every rank thread has its device and is joining the communicator. */
  joined: Promise<void>;
  /** Ranks 1..n−1's results, in rank order. */
  results: Promise<R[]>;
  terminate(): Promise<void>;
}

export function spawnRanks<R>(module: URL, ranks: number, data: (rank: number) => unknown): RankThreads<R> {
  const workers = Array.from({ length: ranks - 1 }, (_, i) => new Worker(module, { workerData: data(i + 1) }));
  const joining: Promise<void>[] = [];
  const done: Promise<R>[] = [];
  for (const w of workers) {
    let joined!: () => void, finished!: (r: R) => void, fail!: (e: Error) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    failed.catch(() => {});
    joining.push(Promise.race([new Promise<void>((r) => (joined = r)), failed]));
    done.push(Promise.race([new Promise<R>((r) => (finished = r)), failed]));
    // Until the result or error: what a rank posts after it is the caller's.
    const onMessage = (m: RankThreadReply<R>) => {
      if ("joining" in m) return joined();
      w.off("message", onMessage);
      if ("error" in m) fail(new Error(m.error));
      else finished(m.result);
    };
    w.on("message", onMessage);
    w.once("error", fail);
    w.once("exit", (code) => fail(new Error(`rank thread exited (code ${code}) before reporting`)));
  }
  const joined = Promise.all(joining).then(() => {});
  const results = Promise.all(done);
  joined.catch(() => {}); // the callers await these; until then a failure is not "unhandled"
  results.catch(() => {});
  return { workers, joined, results, terminate: async () => void (await Promise.all(workers.map((w) => w.terminate()))) };
}
