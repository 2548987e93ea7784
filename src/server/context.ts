// What every handler gets: the engine (behind its message interface), the tokenizer and chat
// template used on this thread, the limits the engine reported, and the server's settings.

import type { SamplingParams } from "../engine/sampling.js";
import type { Engine } from "../engine/types.js";
import type { ChatTemplate } from "../tokenizer/chat_template.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";
import type { Logger } from "./log.js";
import type { TokenTexts } from "./logprobs.js";
import type { Metrics } from "./metrics.js";

/** The engine's limits as the server needs them (a subset of the engine's EngineInfo). */
export interface EngineLimits {
  contextLength: number;
  /** Rows of the model's embedding: token ids must be below this. */
  vocabSize: number;
  maxTotalTokens?: number;
  maxRunningRequests?: number;
  hybridSwa?: boolean;
  fullPoolTokens?: number;
  swaPoolTokens?: number;
}

export interface ServerConfig {
  servedModelName: string;
  modelPath: string;
  tokenizerPath?: string;
  apiKey?: string;
  enableMetrics: boolean;
  /** Bodies larger than this are refused (413). */
  maxBodyBytes?: number;
  /** Timeout of /health_generate, ms. */
  healthTimeoutMs?: number;
  /** The launch settings, reported by /server_info (snake_case like SGLang's). */
  serverArgs?: Record<string, unknown>;
  /** Ids that end generation unless ignore_eos (config.json's and the tokenizer's EOS); default: the tokenizer's. */
  eosTokenIds?: number[];
  /** The checkpoint's preferred sampling values (generation_config.json), as SGLang applies them. */
  samplingDefaults?: Partial<SamplingParams>;
  /** `--tool-call-parser`: how chat outputs become tool_calls (pythonic: Llama 4's `[f(a=1)]`); none when absent. */
  toolCallParser?: "pythonic";
  /** config.json's model_type and architectures, for /model_info. */
  modelType?: string;
  architectures?: string[];
}

export interface ServerState {
  /** Set on SIGINT/SIGTERM: new work gets 503 while running requests drain. */
  shuttingDown: boolean;
  /** Requests being served (HTTP exchanges that reached a handler). */
  inflight: number;
  /** Running choices by request id, for /abort_request and shutdown (filled by startGenerations). */
  byRid: Map<string, { abort(message: string, busy?: boolean, requested?: boolean): void }>;
}

export interface ServerContext {
  engine: Engine;
  info: EngineLimits;
  tokenizer: Tokenizer;
  /** Cached per-token strings for logprobs. */
  texts: TokenTexts;
  /** Undefined when the checkpoint has none and none was given: chat answers 400. */
  chatTemplate: ChatTemplate | undefined;
  config: ServerConfig;
  metrics: Metrics | undefined;
  log: Logger;
  state: ServerState;
}
