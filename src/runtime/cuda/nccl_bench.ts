// NCCL between GPU ranks outside the model: exact checks of all-reduce (fp32 and bf16) and
// all-gather, then the all-reduce bus bandwidth (nccl-tests' definition: algorithm bandwidth
// bytes/time × 2(n−1)/n). Rank 0 runs in the calling thread, ranks 1..n−1 in worker threads,
// each bound to GPU `rank`, as the model's ranks are (engine/parallel.ts).

import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { NcclCommunicator, type NcclInit, bindCudaDevice, loadNccl, ncclUniqueId } from "./nccl.js";
import { type RankThreadReply, spawnRanks } from "../../util/rank_threads.js";

export interface NcclBenchResult {
  ranks: number;
  bytes: number;
  /** Failed exact checks, as "rank r: what" (empty when all hold). */
  failures: string[];
  /** Median milliseconds of one fp32 all-reduce of `bytes`, on rank 0. */
  ms: number;
  algBandwidth: number;
  busBandwidth: number;
}

interface BenchData {
  ncclBench: NcclInit;
  bytes: number;
  reps: number;
}

type RankResult = { failures: string[]; ms: number };

const F32_ONE = 0x3f800000; // the bits of 1.0f

/** One rank's part: checks, then `reps` timed all-reduces of `bytes` (median of 5 batches). */
function runRank(init: NcclInit, bytes: number, reps: number): RankResult {
  const n = loadNccl();
  const comm = new NcclCommunicator(init, init.rank); // blocks until every rank has joined
  const { rank, size } = init;
  const failures: string[] = [];
  const small = 4096;
  const buf = n.memAlloc(bytes);
  const gathered = n.memAlloc(small * 4 * size);
  try {
    // All-reduce fp32: rank r holds r + 1 everywhere, so every element becomes n(n+1)/2.
    const want = (size * (size + 1)) / 2;
    n.memset(buf, new Uint32Array(new Float32Array([rank + 1]).buffer)[0], small, 4);
    comm.allReduce(buf, small, "f32");
    const f = new Float32Array(small);
    n.dtoh(f, buf);
    if (!f.every((v) => v === want)) failures.push(`rank ${rank}: fp32 all-reduce gave ${f[0]}…, expected ${want}`);
    // All-reduce bf16 (small integers are exact in bf16).
    n.memset(buf, new Uint16Array(new Float32Array([rank + 1]).buffer)[1], small, 2);
    comm.allReduce(buf, small, "bf16");
    const h = new Uint16Array(small);
    n.dtoh(h, buf);
    const got = new Float32Array(new Uint32Array([h[0] << 16]).buffer)[0];
    if (!h.every((v) => v === h[0]) || got !== want) failures.push(`rank ${rank}: bf16 all-reduce gave ${got}, expected ${want}`);
    // All-gather: block r of the result is rank r's (r + 1)s.
    n.memset(buf, new Uint32Array(new Float32Array([rank + 1]).buffer)[0], small, 4);
    comm.allGather(buf, gathered, small, "f32");
    const all = new Float32Array(small * size);
    n.dtoh(all, gathered);
    for (let r = 0; r < size; r++) {
      if (!all.subarray(r * small, (r + 1) * small).every((v) => v === r + 1)) failures.push(`rank ${rank}: all-gather block ${r} is not ${r + 1}`);
    }
    // Bandwidth: fp32 all-reduce in place of the whole buffer (values grow ×n per call; 1 stays finite).
    const count = Math.floor(bytes / 4);
    n.memset(buf, F32_ONE, count, 4);
    for (let i = 0; i < 3; i++) comm.allReduce(buf, count, "f32");
    n.synchronize();
    const a = n.eventCreate();
    const b = n.eventCreate();
    const times: number[] = [];
    for (let t = 0; t < 5; t++) {
      n.memset(buf, F32_ONE, count, 4);
      n.eventRecord(a);
      for (let i = 0; i < reps; i++) comm.allReduce(buf, count, "f32");
      n.eventRecord(b);
      times.push(n.eventElapsed(a, b) / reps);
    }
    times.sort((x, y) => x - y);
    return { failures, ms: times[2] };
  } finally {
    n.synchronize();
    n.memFree(buf);
    n.memFree(gathered);
    comm.destroy();
  }
}

/** Checks NCCL on GPUs 0..ranks−1 and measures the all-reduce bandwidth of `bytes` (fp32). */
export async function ncclBench(ranks: number, bytes = 256 * 2 ** 20, reps = 10): Promise<NcclBenchResult> {
  const id = ncclUniqueId();
  const threads = spawnRanks<RankResult>(new URL(import.meta.url), ranks, (rank) => ({ ncclBench: { id, rank, size: ranks }, bytes, reps }) satisfies BenchData);
  // Rank 0 joins on this thread (blocking) once every other rank has its device and is joining.
  let lead: RankResult, others: RankResult[];
  try {
    await threads.joined;
    lead = runRank({ id, rank: 0, size: ranks }, bytes, reps);
    others = await threads.results;
  } finally {
    await threads.terminate();
  }
  const algBandwidth = bytes / (lead.ms / 1000);
  return {
    ranks,
    bytes,
    failures: [lead, ...others].flatMap((r) => r.failures),
    ms: lead.ms,
    algBandwidth,
    busBandwidth: (algBandwidth * 2 * (ranks - 1)) / ranks,
  };
}

if (!isMainThread && (workerData as BenchData)?.ncclBench) {
  const { ncclBench: init, bytes, reps } = workerData as BenchData;
  const reply = (m: RankThreadReply<RankResult>) => parentPort!.postMessage(m);
  try {
    bindCudaDevice(init.rank);
    reply({ joining: true });
    reply({ result: runRank(init, bytes, reps) });
  } catch (e) {
    reply({ error: (e as Error).message });
  }
}
