// The engine worker thread: owns the model, KV pools, radix cache and scheduler. The main
// thread only exchanges small messages with it (requests in, per-step tokens out), so HTTP
// handling never waits on the model.

import { parentPort, workerData } from "node:worker_threads";
import { RadixCache } from "../cache/radix_cache.js";
import { TokenPool } from "../cache/token_pool.js";
import { loadModel } from "../model/loader.js";
import { loadParallel } from "./parallel.js";
import { CpuBackend } from "../runtime/cpu.js";
import { planCpuKv } from "./kv_budget.js";
import { Scheduler } from "./scheduler.js";
import type { EngineOptions, ToEngine, FromEngine } from "./engine.js";
import { EngineBusyError } from "./types.js";

const port = parentPort!;
const send = (m: FromEngine) => port.postMessage(m);

async function main(opts: EngineOptions): Promise<void> {
  const hybridKv = !opts.disableHybridSwaMemory;
  const tp = opts.tp ?? 1;
  const ep = opts.epSize ?? 1;
  const { model, config } =
    tp > 1 || ep > 1
      ? await loadParallel({ modelPath: opts.modelPath, tp, ep, hybridKv, loadFormat: opts.loadFormat })
      : await loadModel(opts.modelPath, new CpuBackend(), { hybridKv, loadFormat: opts.loadFormat });
  const hybrid = model.attention.some((a) => a.pool === "swa");
  const plan = planCpuKv(config, model.attention, opts);
  model.allocKv({ full: plan.fullTokens, swa: plan.swaTokens });
  const fullPool = new TokenPool(plan.fullTokens);
  const swaPool = hybrid ? new TokenPool(plan.swaTokens) : null;
  const chunk = hybrid ? config.attentionChunkSize : 0;
  const cache = new RadixCache({ full: fullPool, swa: swaPool, chunkSize: chunk, disabled: opts.disableRadixCache });
  const maxRunning = opts.maxRunningRequests ?? 64;
  const sched = new Scheduler(
    model,
    cache,
    fullPool,
    swaPool,
    {
      contextLength: plan.contextLength,
      maxRunningRequests: maxRunning,
      // SGLang's -1 turns chunking off: a whole prompt per step.
      chunkedPrefillSize: opts.chunkedPrefillSize === undefined ? 8192 : opts.chunkedPrefillSize > 0 ? opts.chunkedPrefillSize : Infinity,
      schedulePolicy: opts.schedulePolicy ?? "fcfs",
      maxQueuedRequests: opts.maxQueuedRequests ?? 1024,
      swaChunkSize: chunk,
    },
    (o) => send({ type: "output", o }),
  );

  let looping = false;
  const loop = () => {
    try {
      if (sched.step()) {
        setImmediate(loop); // let queued messages in between steps
        return;
      }
    } catch (e) {
      send({ type: "fatal", message: `engine step failed: ${(e as Error).stack ?? e}` });
      process.exit(1);
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
        send({ type: "reply", id: m.id, value: sched.stats() });
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
      fullPoolTokens: plan.fullTokens,
      swaPoolTokens: hybrid ? plan.swaTokens : 0,
    },
  });
}

main(workerData as EngineOptions).catch((e) => {
  send({ type: "fatal", message: (e as Error).message });
  process.exit(1);
});
