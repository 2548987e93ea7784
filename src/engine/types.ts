// The messages between the HTTP side and the engine. The server turns API requests into
// EngineRequests (token ids + parameters) and turns EngineOutputs back into text; the engine
// never sees text, and the server never sees the model.

import type { SamplingParams } from "./sampling.js";

export interface EngineRequest {
  rid: string;
  inputIds: number[];
  sampling: SamplingParams;
  maxNewTokens: number;
  /** Generation stops after emitting any of these (EOS ids unless ignore_eos, plus stop_token_ids). */
  stopTokenIds: number[];
  minNewTokens?: number;
  returnLogprob: boolean;
  /** First prompt position whose logprob is returned; -1 = none. Position 0 has no logprob (null). */
  logprobStartLen: number;
  topLogprobsNum: number;
}

export interface TokenLogprob {
  id: number;
  logprob: number;
  /** The top-N alternatives as [id, logprob], best first. */
  top?: [number, number][];
}

export type FinishReason = "stop" | "length" | "abort";

export interface EngineOutput {
  rid: string;
  /** Tokens produced since the last output. */
  tokens: number[];
  logprobs?: TokenLogprob[];
  /** Sent once with the first output when asked: entry i is token i of the prompt (null before logprobStartLen, and at 0). */
  promptLogprobs?: (TokenLogprob | null)[];
  /** Sent once with the first output: prompt tokens served from the prefix cache. */
  cachedTokens?: number;
  /** `busy`: refused for capacity (queue full, shutting down), which clients see as 503. */
  finish?: { reason: FinishReason; matchedStop?: number; message?: string; busy?: boolean };
}

export interface EngineStats {
  running: number;
  waiting: number;
  fullPoolSize: number;
  fullPoolUsed: number;
  swaPoolSize: number;
  swaPoolUsed: number;
  /** Cumulative tokens run through the model (prefill + decode). */
  forwardTokens: number;
  /** Cumulative prompt tokens served from the prefix cache. */
  cachedTokens: number;
  /** Cumulative prompt tokens. */
  promptTokens: number;
  generatedTokens: number;
  /** Requests sent back to the queue because the KV pool ran out (recomputed later). */
  preemptions: number;
  /** Rank 0's device memory (Backend.stats: budget, weights, step peaks), on a GPU. */
  device?: Record<string, number>;
}

export class EngineBusyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineBusyError";
  }
}

export interface Engine {
  /** Queues a request; outputs stream to `onOutput` until one carries `finish`. Throws EngineBusyError when the queue is full. */
  submit(req: EngineRequest, onOutput: (o: EngineOutput) => void): void;
  /** Stops a request (client gone, stop string matched): frees its KV; a final output with reason 'abort' follows. */
  abort(rid: string): void;
  /** Drops every unreferenced prefix from the cache; false when requests are running. */
  flushCache(): Promise<boolean>;
  stats(): Promise<EngineStats>;
  shutdown(): Promise<void>;
}
