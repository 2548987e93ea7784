// The engine worker thread: owns the model, KV pools, radix cache and scheduler. The main
// thread only exchanges small messages with it (requests in, per-step tokens out), so HTTP
// handling never waits on the model.

import { parentPort, workerData } from "node:worker_threads";
import { RadixCache } from "../cache/radix_cache.js";
import { TokenPool } from "../cache/token_pool.js";
import { loadModel } from "../model/loader.js";
import type { LoadProgress } from "../model/weights.js";
import { loadParallel } from "./parallel.js";
import { planKvPools } from "./kv_budget.js";
import { shardDims } from "../model/shard.js";
import { type AttentionBackend, type Device, createBackend, cudaAttentionFor, gpuFor, parseAttentionBackend, parseDevice } from "../runtime/select.js";
import { Scheduler } from "./scheduler.js";
import { warmupGemms } from "./warmup.js";
import type { EngineOptions, ToEngine, FromEngine } from "./engine.js";
import { EngineBusyError } from "./types.js";

const port = parentPort!;
const send = (m: FromEngine) => port.postMessage(m);

async function main(opts: EngineOptions): Promise<void> {
  const hybridKv = !opts.disableHybridSwaMemory;
  const tp = opts.tp ?? 1;
  const ep = opts.epSize ?? 1;
  const device = parseDevice(opts.device ?? "auto");
  const attention = parseAttentionBackend(opts.attentionBackend ?? "auto");
  const { model, config, description } = await load(opts, { hybridKv, tp, ep, device, attention });
  const hybrid = model.attention.some((a) => a.pool === "swa");
  const kvHeads = shardDims(config, { rank: 0, tp, ep }).kvHeads;
  const maxRunning = opts.maxRunningRequests ?? 64;
  const deviceKv = model.kvMemoryBytes();
  const planFor = (kvBytes: number | undefined) => planKvPools(config, model.attention, { ...opts, kvBytes, elementBytes: model.kvElementBytes }, kvHeads);
  // On a GPU keep 5% of what is left for allocator slack. The slot tables ([rows, context] per
  // pool) come from the same memory and depend on the context the pools allow: plan, take them
  // out, plan again (the context can only shrink, so the tables sized by the first plan fit).
  const budget = opts.kvBytes ?? (deviceKv !== undefined ? Math.floor(deviceKv * 0.95) : undefined);
  const tables = deviceKv === undefined ? 0 : (model.backend.slotTableBytes?.(maxRunning, planFor(budget).contextLength, hybrid ? 2 : 1) ?? 0);
  const plan = planFor(budget === undefined ? undefined : budget - tables);
  model.allocKv({ full: plan.fullTokens, swa: plan.swaTokens, rows: maxRunning, context: plan.contextLength });
  const fullPool = new TokenPool(plan.fullTokens);
  const swaPool = hybrid ? new TokenPool(plan.swaTokens) : null;
  const chunk = hybrid ? config.attentionChunkSize : 0;
  const cache = new RadixCache({ full: fullPool, swa: swaPool, chunkSize: chunk, disabled: opts.disableRadixCache });
  const chunked = opts.chunkedPrefillSize === undefined ? 8192 : opts.chunkedPrefillSize > 0 ? opts.chunkedPrefillSize : Infinity;
  // Before "ready": plan every GEMM a step can run (a step: one prefill budget plus a decode row
  // per running request), so that no request pays first-use planning or kernel loads.
  const warmup = warmupGemms(model, { maxTokens: Math.min(chunked, plan.contextLength) + maxRunning, maxLogitRows: maxRunning });
  const sched = new Scheduler(
    model,
    cache,
    fullPool,
    swaPool,
    {
      contextLength: plan.contextLength,
      maxRunningRequests: maxRunning,
      // SGLang's -1 turns chunking off: a whole prompt per step.
      chunkedPrefillSize: chunked,
      schedulePolicy: opts.schedulePolicy ?? "fcfs",
      maxQueuedRequests: opts.maxQueuedRequests ?? 1024,
      swaChunkSize: chunk,
      overlap: !opts.disableOverlapSchedule,
    },
    (o) => send({ type: "output", o }),
  );

  let looping = false;
  const loop = () => {
    try {
      // Keep stepping while requests remain, even after a step that only requeued some.
      if (sched.step() || !sched.idle) {
        setImmediate(loop); // let queued messages in between steps
        return;
      }
    } catch (e) {
      // One failed step ends the requests in it, not the server.
      const message = `engine step failed: ${(e as Error).message}`;
      send({ type: "log", message: `${message}\n${(e as Error).stack ?? ""}` });
      sched.abortRunning(message);
      setImmediate(loop);
      return;
    }
    looping = false;
  };
  const kick = () => {
    if (!looping) {
      looping = true;
      setImmediate(loop);
    }
  };

  port.on("message", (m: ToEngine) => {
    switch (m.type) {
      case "submit":
        try {
          sched.add(m.req);
          kick();
        } catch (e) {
          send({ type: "rejected", rid: m.req.rid, message: (e as Error).message, busy: e instanceof EngineBusyError });
        }
        break;
      case "abort":
        sched.abort(m.rid);
        kick();
        break;
      case "flush":
        send({ type: "reply", id: m.id, value: sched.flushCache() });
        break;
      case "stats":
        send({ type: "reply", id: m.id, value: { ...sched.stats(), device: model.backend.stats?.() } });
        break;
      case "shutdown":
        process.exit(0);
    }
  });
  send({
    type: "ready",
    info: {
      contextLength: plan.contextLength,
      maxTotalTokens: plan.fullTokens,
      vocabSize: config.vocabSize,
      maxRunningRequests: maxRunning,
      hybridSwa: hybrid,
      backend: description,
      fullPoolTokens: plan.fullTokens,
      swaPoolTokens: hybrid ? plan.swaTokens : 0,
      warmup: warmup ?? undefined,
    },
  });
}

const progress = (p: LoadProgress) => send({ type: "progress", progress: p });

/** Loads the model on the chosen device: one rank here, or tensor/expert-parallel ranks. */
async function load(opts: EngineOptions, o: { hybridKv: boolean; tp: number; ep: number; device: Device; attention: AttentionBackend }) {
  if (o.tp > 1 || o.ep > 1) {
    // Ranks on GPUs when there are GPUs (rank r on GPU r, NCCL), else CPU threads.
    const gpu = await gpuFor(o.device);
    const device = gpu ? "cuda" : "cpu";
    const cuda = gpu ? { attention: cudaAttentionFor(o.attention, gpu) } : undefined;
    const r = await loadParallel({ modelPath: opts.modelPath, tp: o.tp, ep: o.ep, hybridKv: o.hybridKv, loadFormat: opts.loadFormat, device, cuda }, progress);
    return { ...r, description: gpu ? `cuda (bf16, ${gpu.name}, ${cuda!.attention} attention) × ${o.tp} ranks, NCCL` : `cpu (TypeScript, fp32) × ${o.tp} ranks` };
  }
  const choice = await createBackend(o.device, o.attention);
  const r = await loadModel(opts.modelPath, choice.backend, { hybridKv: o.hybridKv, loadFormat: opts.loadFormat, onProgress: progress });
  return { ...r, description: choice.description };
}

main(workerData as EngineOptions).catch((e) => {
  send({ type: "fatal", message: (e as Error).message });
  process.exit(1);
});
