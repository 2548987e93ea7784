// The main thread's handle on the engine worker: implements the Engine interface by message
// passing, routing per-request outputs to their callbacks.

import { Worker } from "node:worker_threads";
import type { LoadProgress } from "../model/weights.js";
import { EngineBusyError, type Engine, type EngineOutput, type EngineRequest, type EngineStats } from "./types.js";

export interface EngineOptions {
  modelPath: string;
  contextLength?: number;
  maxRunningRequests?: number;
  chunkedPrefillSize?: number;
  schedulePolicy?: "fcfs" | "lpm";
  maxTotalTokens?: number;
  swaFullTokensRatio?: number;
  disableHybridSwaMemory?: boolean;
  disableRadixCache?: boolean;
  disableOverlapSchedule?: boolean;
  maxQueuedRequests?: number;
  /** KV budget in bytes for the CPU backend. */
  kvBytes?: number;
  /** Tensor-parallel ranks, and expert-parallel size (1 or equal to tp). */
  tp?: number;
  epSize?: number;
  loadFormat?: "auto" | "dummy";
  /** auto | cuda | cpu, and the attention kernels (auto | fa3 | cuda | cpu). */
  device?: string;
  attentionBackend?: string;
}

export interface EngineInfo {
  contextLength: number;
  maxTotalTokens: number;
  vocabSize: number;
  maxRunningRequests: number;
  hybridSwa: boolean;
  /** The compute backend, in words. */
  backend: string;
  fullPoolTokens: number;
  swaPoolTokens: number;
  /** The GEMM warm-up before ready (engine/warmup.ts), where the backend has one. */
  warmup?: { gemms: number; shapes: number; seconds: number };
}

export type ToEngine =
  | { type: "submit"; req: EngineRequest }
  | { type: "abort"; rid: string }
  | { type: "flush"; id: number }
  | { type: "stats"; id: number }
  | { type: "shutdown" };

export type FromEngine =
  | { type: "ready"; info: EngineInfo }
  | { type: "output"; o: EngineOutput }
  | { type: "rejected"; rid: string; message: string; busy: boolean }
  | { type: "reply"; id: number; value: unknown }
  | { type: "fatal"; message: string }
  | { type: "log"; message: string }
  | { type: "progress"; progress: LoadProgress };

class WorkerEngine implements Engine {
  private readonly listeners = new Map<string, (o: EngineOutput) => void>();
  private readonly replies = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private nextId = 0;

  /** Why the worker is gone, once it is: every later request fails fast with this. */
  private dead: string | null = null;

  constructor(
    private readonly worker: Worker,
    /** Requests in flight (queued + running) beyond which submit answers busy. */
    private readonly capacity: number,
  ) {
    // A worker that dies (out of memory, a crash in native code) must not leave requests hanging.
    worker.on("exit", (code) => this.fail(`the engine worker exited (code ${code})`));
    worker.on("error", (e) => this.fail(`the engine worker failed: ${e.message}`));
    worker.on("message", (m: FromEngine) => {
      if (m.type === "log") console.error(`tsglang: ${m.message}`);
      else if (m.type === "output") {
        const cb = this.listeners.get(m.o.rid);
        if (m.o.finish) this.listeners.delete(m.o.rid);
        cb?.(m.o);
      } else if (m.type === "rejected") {
        // Admission failed inside the worker (queue full, prompt too long): finish the request.
        const cb = this.listeners.get(m.rid);
        this.listeners.delete(m.rid);
        cb?.({ rid: m.rid, tokens: [], finish: { reason: "abort", message: m.message, busy: m.busy } });
      } else if (m.type === "reply") {
        this.replies.get(m.id)?.resolve(m.value);
        this.replies.delete(m.id);
      }
    });
  }

  private fail(reason: string): void {
    if (this.dead) return;
    this.dead = reason;
    for (const [rid, cb] of this.listeners) cb({ rid, tokens: [], finish: { reason: "abort", message: reason, busy: true } });
    this.listeners.clear();
    for (const r of this.replies.values()) r.reject(new EngineBusyError(reason));
    this.replies.clear();
  }

  submit(req: EngineRequest, onOutput: (o: EngineOutput) => void): void {
    if (this.dead) throw new EngineBusyError(this.dead);
    if (this.listeners.has(req.rid)) throw new Error(`duplicate request id ${req.rid}`);
    if (this.listeners.size >= this.capacity) throw new EngineBusyError(`the server is at capacity (${this.capacity} requests in flight)`);
    this.listeners.set(req.rid, onOutput);
    this.post({ type: "submit", req });
  }

  abort(rid: string): void {
    if (this.listeners.has(rid)) this.post({ type: "abort", rid });
  }

  flushCache(): Promise<boolean> {
    return this.ask("flush") as Promise<boolean>;
  }

  stats(): Promise<EngineStats> {
    return this.ask("stats") as Promise<EngineStats>;
  }

  get inFlight(): number {
    return this.listeners.size;
  }

  async shutdown(): Promise<void> {
    this.dead = "the engine was shut down";
    for (const [rid, cb] of this.listeners) cb({ rid, tokens: [], finish: { reason: "abort", message: "server shutting down", busy: true } });
    this.listeners.clear();
    await this.worker.terminate();
  }

  private ask(type: "flush" | "stats"): Promise<unknown> {
    if (this.dead) return Promise.reject(new EngineBusyError(this.dead));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.replies.set(id, { resolve, reject });
      this.post({ type, id });
    });
  }

  private post(m: ToEngine): void {
    this.worker.postMessage(m);
  }
}

/** Starts the worker, loads the model there, and resolves once it is ready to serve. */
export async function startEngine(opts: EngineOptions, onProgress?: (p: LoadProgress) => void): Promise<{ engine: Engine; info: EngineInfo }> {
  const worker = new Worker(new URL("./worker.js", import.meta.url), { workerData: opts });
  const info = await new Promise<EngineInfo>((resolve, reject) => {
    const onMsg = (m: FromEngine) => {
      if (m.type === "ready") resolve(m.info);
      else if (m.type === "fatal") reject(new Error(m.message));
      else {
        if (m.type === "progress") onProgress?.(m.progress);
        return;
      }
      worker.off("message", onMsg);
    };
    worker.on("message", onMsg);
    worker.once("error", reject);
    worker.once("exit", (code) => reject(new Error(`engine worker exited with code ${code} before it was ready`)));
  });
  worker.on("message", (m: FromEngine) => {
    if (m.type === "fatal") console.error(`tsglang: ${m.message}`);
  });
  return { engine: new WorkerEngine(worker, info.maxRunningRequests + (opts.maxQueuedRequests ?? 1024)), info };
}

export { EngineBusyError };
