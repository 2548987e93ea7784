// Tensor/expert parallel ranks as threads: rank 0 lives in the calling thread (the engine
// worker) and drives; ranks 1..N-1 are worker threads that replay every allocKv/forward rank 0
// makes, meeting it in the collectives. The scheduler sees one model either way. Forward steps
// reach the other ranks through shared memory (step_channel.ts), everything else by message.
//
// Two devices:
// - "cpu": CpuBackend ranks joined by shared-memory collectives (runtime/collective.ts);
// - "cuda": rank r is bound to GPU r (its own context and stream on its thread) and the ranks
//   are joined by NCCL (runtime/cuda/nccl.ts). Rank 0 makes the NCCL unique id and hands it to
//   the other threads in workerData; ncclCommInitRank blocks until every rank has joined, so
//   rank 0 joins only once every other thread has its device and is about to join (a rank that
//   fails before that is reported instead of leaving rank 0 waiting). Small all-reduces take the
//   custom all-reduce over peer memory (runtime/cuda/peer_allreduce.ts): its buffer addresses
//   cross the threads through a SharedArrayBuffer, also handed over in workerData.

import { type Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import type { AttentionSpec, Backend, KvPoolSizes, PendingPicks, SampleRow, StepBatch } from "../runtime/backend.js";
import { CpuBackend } from "../runtime/cpu.js";
import { SharedMemoryCollective, createSharedCollective, type SharedCollectiveInit } from "../runtime/collective.js";
import type { CudaBackendOptions } from "../runtime/cuda/backend.js";
import type { NcclInit } from "../runtime/cuda/nccl.js";
import type { PeerExchange } from "../runtime/cuda/peer_allreduce.js";
import type { Llama4Config } from "../model/config.js";
import { loadModel } from "../model/loader.js";
import type { ForwardModel, Llama4Model, ModelSample, PendingModelSample } from "../model/llama4.js";
import type { LoadOptions } from "../model/weights.js";
import { type WarmupLimits, warmupRank } from "./warmup.js";
import { STEP_CHAIN, STEP_FORWARD, STEP_QUEUE, STEP_SAMPLE_CHAIN, STEP_SAMPLE_QUEUE, type StepChannelInit, type StepCommand, type StepKind, StepReceiver, StepSender, createStepChannel } from "./step_channel.js";
import { type RankThreadReply, spawnRanks } from "../util/rank_threads.js";

export interface ParallelOptions {
  modelPath: string;
  tp: number;
  ep: number;
  hybridKv?: boolean;
  loadFormat?: LoadOptions["loadFormat"];
  /** Where the ranks run: "cpu" (threads sharing memory; the default) or "cuda" (rank r on GPU r, NCCL). */
  device?: "cpu" | "cuda";
  /** CudaBackend options for every rank (precision, memory budget...); the device is the rank. */
  cuda?: Omit<CudaBackendOptions, "device" | "nccl">;
}

/**
 * The batch as it should cross to another thread: postMessage clones a typed array's whole
 * buffer, and a step's slot arrays are views into each request's growing slot list (4 MB for a
 * 1M-token request), so views are copied out first — a decode step then sends a few bytes.
 */
export function compact(batch: StepBatch): StepBatch {
  const own = (a: Int32Array) => (a.byteLength === a.buffer.byteLength ? a : a.slice());
  return {
    ids: own(batch.ids),
    positions: own(batch.positions),
    logitRows: own(batch.logitRows),
    seqs: batch.seqs.map((s) => {
      const fullSlots = own(s.fullSlots);
      return { ...s, fullSlots, swaSlots: s.swaSlots === s.fullSlots ? fullSlots : own(s.swaSlots) };
    }),
  };
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** How a rank reaches the others: shared memory (CPU ranks), or an NCCL communicator id and the peer-memory exchange (GPU ranks). */
type Link = { device: "cpu"; collective: SharedCollectiveInit } | { device: "cuda"; nccl: NcclInit; peers: PeerExchange };

interface RankData {
  opts: ParallelOptions;
  rank: number;
  link: Link;
  steps: StepChannelInit;
}

/** Commands rank 0 posts (steps normally go through the step channel); `seq` orders them with the channel's. */
type RankMessage = { seq: number } & (
  | { type: "allocKv"; sizes: KvPoolSizes }
  | { type: "warmup"; limits: WarmupLimits }
  | { type: "step"; kind: StepKind; batch: StepBatch }
  | { type: "close" }
);
/** A rank thread's replies: spawnRanks' (its result is `true` once loaded), then `closed` when asked to close. */
type RankReply = RankThreadReply<true> | { closed: true };

interface LoadedRank {
  model: Llama4Model;
  config: Llama4Config;
  /** Frees the rank's device memory and communicator (every rank at once: NCCL may wait for peers). */
  close(): void;
}

/**
 * Loads one rank's shard. `beforeJoin` runs once the rank has its device and before it joins
 * the NCCL communicator (which blocks until all ranks have joined).
 */
async function loadRank(opts: ParallelOptions, rank: number, link: Link, beforeJoin: () => void | Promise<void>, onProgress?: LoadOptions["onProgress"]): Promise<LoadedRank> {
  const load = (backend: Backend) =>
    loadModel(opts.modelPath, backend, { hybridKv: opts.hybridKv, loadFormat: opts.loadFormat, shard: { rank, tp: opts.tp, ep: opts.ep }, onProgress });
  if (link.device === "cpu") {
    await beforeJoin();
    const r = await load(new CpuBackend(new SharedMemoryCollective(link.collective, rank)));
    return { model: r.model, config: r.config, close: () => {} };
  }
  const { CudaBackend } = await import("../runtime/cuda/backend.js");
  const { NcclCommunicator, bindCudaDevice } = await import("../runtime/cuda/nccl.js");
  bindCudaDevice(rank); // a missing device fails here, before anyone waits on this rank
  await beforeJoin();
  const nccl = new NcclCommunicator(link.nccl, rank); // before the backend takes its memory budget
  const backend = new CudaBackend({ ...opts.cuda, device: rank, nccl });
  await backend.connectPeers(link.peers); // every rank at once, as the communicator
  const r = await load(backend);
  return {
    model: r.model,
    config: r.config,
    close: () => {
      backend.destroy();
      nccl.destroy();
    },
  };
}

class ParallelModel implements ForwardModel {
  private readonly steps: StepSender;
  /** Rank 0's last queueArgmax / queueSample picks (what a chained step may follow). */
  private lastQueued: PendingPicks | null = null;
  /** Pipelined sampled steps, where the ranks draw on their GPUs (Llama4Model.samplesOnDevice). */
  readonly queueSample?: (batch: StepBatch, rows: SampleRow[], after: PendingPicks | null) => PendingModelSample;

  constructor(
    private readonly lead: LoadedRank,
    private readonly workers: Worker[],
    channel: StepChannelInit,
  ) {
    this.steps = new StepSender(channel);
    if (lead.model.samplesOnDevice && lead.model.backend.queueSample) {
      this.queueSample = (batch, rows, after) => {
        this.checkChain(after);
        this.sendStep(after ? STEP_SAMPLE_CHAIN : STEP_SAMPLE_QUEUE, batch);
        const drawn = this.lead.model.queueSample(batch, rows, after);
        this.lastQueued = drawn;
        return drawn;
      };
    }
  }

  private checkChain(after: PendingPicks | null): void {
    if (after && after !== this.lastQueued) throw new Error("a chained step must follow the last queued one");
  }

  get cfg(): Llama4Config {
    return this.lead.model.cfg;
  }

  get attention(): AttentionSpec[] {
    return this.lead.model.attention;
  }

  get backend(): Backend {
    return this.lead.model.backend;
  }

  get kvElementBytes(): number {
    return this.lead.model.kvElementBytes;
  }

  /** Ranks hold equal shares, so rank 0's free memory stands for all. */
  kvMemoryBytes(): number | undefined {
    return this.lead.model.kvMemoryBytes();
  }

  allocKv(sizes: KvPoolSizes): void {
    this.post({ type: "allocKv", sizes });
    this.lead.model.allocKv(sizes);
  }

  /** Every rank plans its shards' GEMMs, the others on their threads while rank 0 does here (a step's collectives wait for them). */
  warmupGemms(limits: WarmupLimits): { gemms: number; shapes: number } | null {
    this.post({ type: "warmup", limits });
    return warmupRank(this.lead.model, limits);
  }

  forward(batch: StepBatch): Float32Array {
    this.sendStep(STEP_FORWARD, batch);
    return this.lead.model.forward(batch);
  }

  /** Greedy steps: queueArgmax waited for (every rank argmaxes its vocabulary shard; (max, id) pairs cross the ranks). */
  forwardArgmax(batch: StepBatch): Int32Array {
    return this.queueArgmax(batch, null).wait();
  }

  /**
   * Sampled steps: on GPUs queueSample waited for (the logits gathered whole on the devices, rank 0
   * draws); CPU ranks run forward() and rank 0 draws on the host.
   */
  forwardSample(batch: StepBatch, rows: SampleRow[]): ModelSample {
    if (this.queueSample) return this.queueSample(batch, rows, null).sampled();
    this.sendStep(STEP_FORWARD, batch);
    return this.lead.model.forwardSample(batch, rows);
  }

  /** Pipelined greedy steps: every rank queues its part; a chained step's ids are each rank's own copy of the previous picks. */
  queueArgmax(batch: StepBatch, after: PendingPicks | null): PendingPicks {
    this.checkChain(after);
    this.sendStep(after ? STEP_CHAIN : STEP_QUEUE, batch);
    return (this.lastQueued = this.lead.model.queueArgmax!(batch, after));
  }

  /** The step to every other rank: through the step channel, or (too large for it) posted, its arrays copied out of views first (see compact). */
  private sendStep(kind: StepKind, batch: StepBatch): void {
    if (kind === STEP_FORWARD) this.lastQueued = null; // nothing can chain onto a plain forward
    if (this.steps.step(kind, batch)) return;
    this.post({ type: "step", kind, batch: compact(batch) });
  }

  /** A command to every other rank by postMessage, numbered in the step channel's order. */
  private post(m: DistributiveOmit<RankMessage, "seq">): void {
    const seq = this.steps.message();
    for (const w of this.workers) w.postMessage({ ...m, seq } as RankMessage);
  }

  /** Every rank frees its device memory and communicator, then the threads end. */
  async close(): Promise<void> {
    const closed = this.workers.map((w) => new Promise<void>((resolve) => {
      w.on("message", (m: RankReply) => "closed" in m && resolve());
      w.once("exit", () => resolve());
    }));
    this.post({ type: "close" });
    this.lead.close();
    await Promise.all(closed);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Loads every rank's shard; resolves to rank 0's view once all ranks are ready. */
/** `onProgress` reports rank 0's loading (every rank reads a similar share). */
export async function loadParallel(opts: ParallelOptions, onProgress?: LoadOptions["onProgress"]): Promise<{ model: ForwardModel & { close(): Promise<void> }; config: Llama4Config }> {
  const device = opts.device ?? "cpu";
  const links: Link[] = [];
  if (device === "cuda") {
    const { cudaDeviceCount } = await import("../runtime/cuda/backend.js");
    const { ncclUniqueId } = await import("../runtime/cuda/nccl.js");
    const { createPeerExchange } = await import("../runtime/cuda/peer_allreduce.js");
    const count = cudaDeviceCount();
    if (count < opts.tp) throw new Error(`--tp ${opts.tp} on CUDA needs ${opts.tp} GPUs (one per rank); ${count} visible`);
    const id = ncclUniqueId();
    const peers = createPeerExchange(opts.tp);
    for (let rank = 0; rank < opts.tp; rank++) links.push({ device, nccl: { id, rank, size: opts.tp }, peers });
  } else {
    const collective = createSharedCollective(opts.tp);
    for (let rank = 0; rank < opts.tp; rank++) links.push({ device, collective });
  }
  const steps = createStepChannel(opts.tp - 1);
  const threads = spawnRanks<true>(new URL(import.meta.url), opts.tp, (rank) => ({ opts, rank, link: links[rank], steps }) satisfies RankData);
  const workers = threads.workers;
  let lead: LoadedRank;
  try {
    // Rank 0 joins last, so a rank that cannot start is an error here rather than a hang in NCCL.
    [lead] = await Promise.all([loadRank(opts, 0, links[0], () => threads.joined, onProgress), threads.results]);
  } catch (e) {
    await threads.terminate();
    throw e;
  }
  // A rank that dies mid-step would leave the others waiting in a collective forever.
  for (const w of workers) {
    w.removeAllListeners("exit");
    w.on("error", (e) => {
      console.error(`tsglang: tensor-parallel rank failed: ${e.message}`);
      process.exit(1);
    });
  }
  return { model: new ParallelModel(lead, workers, steps), config: lead.config };
}

if (!isMainThread && (workerData as RankData)?.link) {
  const { opts, rank, link, steps } = workerData as RankData;
  const reply = (m: RankReply) => parentPort!.postMessage(m);
  loadRank(opts, rank, link, () => reply({ joining: true })).then(
    (loaded) => {
      // Commands run in rank 0's numbering, from the step channel or from posted messages.
      const channel = new StepReceiver(steps, rank - 1);
      let next = 1;
      let closed = false;
      let queued: PendingPicks | null = null; // this rank's picks of the last queued step (never waited for here)
      const runStep = (c: StepCommand) => {
        const m = loaded.model;
        const chained = c.kind === STEP_CHAIN || c.kind === STEP_SAMPLE_CHAIN;
        if (chained && !queued) throw new Error(`rank ${rank}: a chained step with no queued step before it`);
        const after = chained ? queued : null;
        if (c.kind === STEP_QUEUE || c.kind === STEP_CHAIN) return void (queued = m.queueArgmax(c.batch, after));
        if (c.kind === STEP_SAMPLE_QUEUE || c.kind === STEP_SAMPLE_CHAIN) return void (queued = m.queueSample(c.batch, null, after));
        queued = null;
        m.forward(c.batch);
      };
      // Steps from the channel until a posted message is due or none comes for a while; then
      // the event loop (messages), and back.
      const pump = () => {
        if (closed) return;
        for (;;) {
          const got = channel.take(next);
          if (got === "message") return; // its handler pumps again
          if (got === "none") return void setImmediate(pump);
          runStep(got);
          next++;
        }
      };
      parentPort!.on("message", (m: RankMessage) => {
        // A step published before this message is still in the channel (rank 0 waits for it to be taken).
        while (next < m.seq) {
          const got = channel.take(next, 0);
          if (typeof got !== "object") throw new Error(`rank ${rank}: command ${next} is neither in the step channel nor posted before ${m.seq}`);
          runStep(got);
          next++;
        }
        next++;
        if (m.type === "allocKv") loaded.model.allocKv(m.sizes);
        else if (m.type === "warmup") warmupRank(loaded.model, m.limits);
        else if (m.type === "step") runStep(m);
        else {
          closed = true;
          loaded.close();
          reply({ closed: true });
          return;
        }
        pump();
      });
      reply({ result: true });
      pump();
    },
    (e: Error) => reply({ error: e.message }),
  );
}
