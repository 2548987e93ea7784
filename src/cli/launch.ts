// `tsglang launch`: serve a model over HTTP with SGLang's flag names and meanings. The flag
// table below is the single source of parsing, validation and --help. The engine runs in a
// worker thread; this thread serves HTTP. One line on stdout says when it is ready.

import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { startEngine, type EngineOptions } from "../engine/engine.js";
import type { LoadProgress } from "../model/weights.js";
import type { SamplingParams } from "../engine/sampling.js";
import { loadConfig } from "../model/config.js";
import { listen } from "../server/app.js";
import type { ServerContext } from "../server/context.js";
import { probeEngine } from "../server/info.js";
import { LOG_LEVELS, Logger } from "../server/log.js";
import { TokenTexts } from "../server/logprobs.js";
import { Metrics } from "../server/metrics.js";
import { ChatTemplate } from "../tokenizer/chat_template.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { defaultModelPath } from "../util/repo.js";
import { gpuFor, parseAttentionBackend, parseDevice } from "../runtime/select.js";
import { gpuFromBytes, planMemory } from "../runtime/planner.js";
import { ArgsError, formatHelp, parseArgs, type FlagSpecs, type FlagValues } from "./args.js";

const FLAGS = {
  "model-path": { type: "string", alias: ["model"], metavar: "DIR", help: "Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json) (default: the bundled demo model)" },
  "tokenizer-path": { type: "string", metavar: "DIR", help: "tokenizer directory, if not the model path" },
  host: { type: "string", default: "127.0.0.1", help: "address to listen on" },
  port: { type: "int", default: 30000, min: 0, max: 65535, help: "port to listen on (0 = any free port)" },
  "served-model-name": { type: "string", help: "model name in the API (default: the model path)" },
  "context-length": { type: "int", min: 1, help: "maximum tokens per request, prompt + output (default: the model's max_position_embeddings)" },
  "chat-template": { type: "string", metavar: "NAME|FILE", help: "built-in template (llama-4) or a .jinja / .json file (default: the checkpoint's, else llama-4)" },
  "max-running-requests": { type: "int", min: 1, help: "maximum requests decoding at once (default: from the KV budget)" },
  "max-queued-requests": { type: "int", min: 1, help: "waiting requests beyond which new ones get 503 (default: 1024)" },
  "chunked-prefill-size": { type: "int", min: -1, help: "maximum prompt tokens per prefill chunk; -1 disables chunking (default: chosen by the engine)" },
  "schedule-policy": { type: "string", default: "fcfs", choices: ["fcfs", "lpm"], help: "waiting-queue order: first come first served, or longest prefix match" },
  "mem-fraction-static": { type: "number", help: "fraction of GPU memory for weights and KV cache, in (0, 1) (default: from the GPU's size)" },
  "max-total-tokens": { type: "int", min: 1, help: "KV cache size in tokens (default: from the memory budget)" },
  "swa-full-tokens-ratio": { type: "number", keywords: ["auto"], default: 0.8, help: "SWA-layer KV tokens / full-layer KV tokens, in (0, 1]; auto (GPU) picks the largest ≤ 0.8 that fits --context-length" },
  "disable-hybrid-swa-memory": { type: "boolean", help: "one KV pool for all layers instead of SWA + full pools" },
  "disable-radix-cache": { type: "boolean", help: "turn off prefix caching" },
  "disable-overlap-schedule": { type: "boolean", help: "run each greedy decode step after the last one's tokens are back, instead of queuing it one ahead" },
  "api-key": { type: "string", metavar: "KEY", help: "require 'Authorization: Bearer KEY' (health checks and metrics stay open)" },
  "enable-metrics": { type: "boolean", help: "serve Prometheus metrics at /metrics" },
  "tool-call-parser": { type: "string", metavar: "NAME", help: "turn chat outputs into tool_calls: pythonic (Llama 4's [f(a=1), ...] format, as SGLang parses Llama 4)" },
  "log-level": { type: "string", default: "info", choices: LOG_LEVELS, help: "logging level" },
  tp: { type: "int", alias: ["tp-size"], default: 1, min: 1, help: "tensor-parallel ranks" },
  "ep-size": { type: "int", default: 1, min: 1, help: "expert-parallel size: 1 or equal to --tp (whole experts per rank)" },
  "load-format": { type: "string", default: "auto", choices: ["auto", "dummy"], help: "dummy = random weights from config.json alone (benchmarks)" },
  device: { type: "string", default: "auto", choices: ["auto", "cuda", "cpu"], help: "where the model runs: a CUDA GPU when there is one (auto), else the CPU" },
  "attention-backend": { type: "string", default: "auto", help: "attention kernels: auto (fa3 on Hopper, cuda on other GPUs, cpu without a GPU), fa3, cuda, cpu" },
  "trust-remote-code": { type: "boolean", help: "accepted for SGLang compatibility; no effect" },
} as const satisfies FlagSpecs;

export type LaunchArgs = FlagValues<typeof FLAGS>;

export function helpText(): string {
  return formatHelp("launch --model-path DIR", "Serve a model with SGLang's HTTP API (OpenAI-compatible routes and /generate).", FLAGS);
}

/**
 * SGLang flags for capabilities tsglang does not have yet: refused with what is missing, rather
 * than "unknown flag" (or a server that silently ignores them).
 */
const NOT_YET: Record<string, string> = {
  "--enable-multimodal": "image input (--enable-multimodal) is not implemented yet: tsglang serves Llama 4 as a text model",
  "--speculative-algorithm": "speculative decoding (--speculative-algorithm EAGLE3 and its --speculative-* flags) is not implemented yet",
};
for (const f of ["--speculative-draft-model-path", "--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens"]) {
  NOT_YET[f] = NOT_YET["--speculative-algorithm"];
}

/** Parses and checks the flags; throws ArgsError with a one-line reason. */
export function parseLaunchArgs(argv: string[]): { args: LaunchArgs; help: boolean } {
  const notYet = argv.map((x) => x.split("=")[0]).find((x) => x in NOT_YET);
  if (notYet) throw new ArgsError(NOT_YET[notYet]);
  const { values: a, help } = parseArgs(FLAGS, argv);
  // Ranges the table cannot say (open bounds, a hole at 0).
  const frac = a["mem-fraction-static"];
  if (frac !== undefined && !(frac > 0 && frac < 1)) throw new ArgsError(`--mem-fraction-static must be in (0, 1), got ${frac}`);
  const ratio = a["swa-full-tokens-ratio"];
  if (ratio !== "auto" && !(ratio > 0 && ratio <= 1)) throw new ArgsError(`--swa-full-tokens-ratio must be in (0, 1] or 'auto', got ${ratio}`);
  if (a["chunked-prefill-size"] === 0) throw new ArgsError("--chunked-prefill-size must be -1 or a positive integer, got 0");
  const parser = a["tool-call-parser"];
  if (parser !== undefined && parser !== "pythonic") {
    // SGLang has no `llama4` key either (sglang-notes §4.1): Llama 4's calls are pythonic.
    throw new ArgsError(`--tool-call-parser ${parser} is not available; Llama 4 writes its tool calls in the pythonic format: --tool-call-parser pythonic`);
  }
  try {
    parseAttentionBackend(a["attention-backend"]);
  } catch (e) {
    throw new ArgsError((e as Error).message);
  }
  if (a["ep-size"] !== 1 && a["ep-size"] !== a.tp) throw new ArgsError(`--ep-size must be 1 or equal to --tp (${a.tp}), got ${a["ep-size"]}`);
  return { args: a, help };
}

// The checkpoint's generation_config.json values that SGLang uses as sampling defaults.
function samplingDefaults(dir: string): Partial<SamplingParams> {
  const path = join(dir, "generation_config.json");
  if (!existsSync(path)) return {};
  let g: Record<string, unknown>;
  try {
    g = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`invalid JSON in ${path}: ${(e as Error).message}`);
  }
  const out: Partial<SamplingParams> = {};
  const num = (k: string) => (typeof g[k] === "number" ? (g[k] as number) : undefined);
  if (num("temperature") !== undefined) out.temperature = num("temperature");
  if (num("top_p") !== undefined) out.topP = num("top_p");
  if (num("top_k") !== undefined) out.topK = num("top_k")! > 0 ? num("top_k") : -1;
  if (num("min_p") !== undefined) out.minP = num("min_p");
  if (num("repetition_penalty") !== undefined) out.repetitionPenalty = num("repetition_penalty");
  return out;
}

/**
 * Weight loading progress on stderr: layers, GB read by rank 0 and GB/s (dummy weights are made on
 * the device: layers only); redrawn in place on a terminal.
 */
function loadProgressPrinter(t0: number, dummy: boolean): (p: LoadProgress) => void {
  let lastPct = -1;
  return (p) => {
    const pct = Math.floor((100 * p.layers) / p.totalLayers);
    const s = (performance.now() - t0) / 1000;
    const gb = p.bytes / 1e9;
    const line = dummy
      ? `loading weights: ${p.layers}/${p.totalLayers} layers (dummy: random values made on the device)`
      : `loading weights: ${p.layers}/${p.totalLayers} layers, ${gb.toFixed(2)} GB, ${(gb / Math.max(s, 1e-3)).toFixed(2)} GB/s`;
    if (process.stderr.isTTY) process.stderr.write(`\r${line}${p.layers === p.totalLayers ? "\n" : ""}`);
    else if (pct >= lastPct + 25 || p.layers === p.totalLayers) {
      lastPct = pct;
      process.stderr.write(`${line}\n`);
    }
  };
}

export async function main(argv: string[]): Promise<number> {
  let a: LaunchArgs;
  try {
    const parsed = parseLaunchArgs(argv);
    if (parsed.help) {
      console.log(helpText());
      return 0;
    }
    a = parsed.args;
  } catch (e) {
    if (!(e instanceof ArgsError)) throw e;
    console.error(`tsglang launch: ${e.message}\nRun 'tsglang launch --help' for the flags.`);
    return 2;
  }
  const log = new Logger(a["log-level"]);
  const modelPath = resolve(a["model-path"] ?? defaultModelPath());
  const tokenizerPath = resolve(a["tokenizer-path"] ?? modelPath);
  const servedModelName = a["served-model-name"] ?? a["model-path"] ?? "default";

  const config = loadConfig(modelPath);
  const tokenizer = await Tokenizer.load(tokenizerPath);
  let chatTemplate: ChatTemplate;
  if (a["chat-template"] === undefined && tokenizer.chatTemplate === undefined) {
    // Every model we serve is Llama 4; its built-in template is the right fallback.
    log.info("the checkpoint has no chat template; using the built-in llama-4 template");
    chatTemplate = ChatTemplate.resolve(tokenizer, "llama-4");
  } else {
    chatTemplate = ChatTemplate.resolve(tokenizer, a["chat-template"]);
  }

  const opts: EngineOptions = {
    modelPath,
    contextLength: a["context-length"],
    maxRunningRequests: a["max-running-requests"],
    chunkedPrefillSize: a["chunked-prefill-size"],
    schedulePolicy: a["schedule-policy"],
    maxTotalTokens: a["max-total-tokens"],
    // auto is resolved by the memory plan below (GPU); without one the default stands.
    swaFullTokensRatio: a["swa-full-tokens-ratio"] === "auto" ? undefined : a["swa-full-tokens-ratio"],
    disableHybridSwaMemory: a["disable-hybrid-swa-memory"],
    disableRadixCache: a["disable-radix-cache"],
    disableOverlapSchedule: a["disable-overlap-schedule"],
    maxQueuedRequests: a["max-queued-requests"],
    tp: a.tp,
    epSize: a["ep-size"],
    loadFormat: a["load-format"] as EngineOptions["loadFormat"],
    device: a.device,
    attentionBackend: a["attention-backend"],
  };
  // On a GPU, check the memory plan before any weights load: a context that cannot fit is an
  // error naming the largest that does, not an out-of-memory crash later.
  const gpu = await gpuFor(parseDevice(a.device));
  if (gpu) {
    const plan = planMemory({
      config,
      visionParams: 0,
      tp: a.tp,
      ep: a["ep-size"],
      gpu: gpuFromBytes(gpu.totalBytes),
      contextLength: a["context-length"],
      hybrid: !a["disable-hybrid-swa-memory"],
      swaFullTokensRatio: a["swa-full-tokens-ratio"],
      memFractionStatic: a["mem-fraction-static"],
      maxRunningRequests: a["max-running-requests"],
    });
    if (!plan.fits) {
      console.error(`tsglang launch: ${plan.error}`);
      return 1;
    }
    log.info(`memory plan on ${gpu.name}: max context ${plan.maxContextLength}, weights ${(plan.weightsBytesPerGpu / 2 ** 30).toFixed(1)} GiB per GPU`);
    // The plan's SWA ratio (auto) and running-request cap (a window of SWA slots each) are what it checked.
    if (plan.hybrid) opts.swaFullTokensRatio = plan.swaFullTokensRatio;
    opts.maxRunningRequests ??= plan.maxRunningRequests;
  } else if (a["swa-full-tokens-ratio"] === "auto") {
    log.info("--swa-full-tokens-ratio auto needs a GPU memory plan; using 0.8");
  }
  log.info(`loading ${modelPath}`);
  const t0 = performance.now();
  const { engine, info } = await startEngine(opts, loadProgressPrinter(t0, a["load-format"] === "dummy"));
  log.info(`weights loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  log.info(
    `engine ready: context ${info.contextLength}, KV ${info.fullPoolTokens} full / ${info.swaPoolTokens} SWA tokens, ` +
      `max running ${info.maxRunningRequests}${info.hybridSwa ? ", hybrid SWA" : ""}` +
      (info.warmup ? `, GEMM warm-up ${info.warmup.seconds.toFixed(2)} s (${info.warmup.gemms} GEMMs over ${info.warmup.shapes} shapes)` : ""),
  );

  const serverArgs = Object.fromEntries(
    Object.entries(a)
      .filter(([k]) => k !== "api-key")
      .map(([k, v]) => [k.replace(/-/g, "_"), v ?? null]),
  );
  const ctx: ServerContext = {
    engine,
    info,
    tokenizer,
    texts: new TokenTexts(tokenizer),
    chatTemplate,
    config: {
      servedModelName,
      modelPath,
      tokenizerPath,
      apiKey: a["api-key"],
      enableMetrics: a["enable-metrics"],
      toolCallParser: a["tool-call-parser"] === "pythonic" ? "pythonic" : undefined,
      serverArgs: { ...serverArgs, model_path: modelPath, served_model_name: servedModelName, context_length: info.contextLength },
      samplingDefaults: samplingDefaults(modelPath),
      eosTokenIds: [...new Set([...config.eosTokenIds, ...tokenizer.eosIds])].sort((x, y) => x - y),
      modelType: readModelType(modelPath),
      architectures: readArchitectures(modelPath),
    },
    metrics: a["enable-metrics"] ? new Metrics(servedModelName, engine) : undefined,
    log,
    state: { shuttingDown: false, inflight: 0, byRid: new Map() },
  };

  let server;
  try {
    server = await listen(ctx, a.host, a.port);
  } catch (e) {
    await engine.shutdown();
    throw new Error(`cannot listen on ${a.host}:${a.port}: ${(e as Error).message}`);
  }
  // Warm up: one token through the engine before declaring ready, as SGLang does.
  if (!(await probeEngine(ctx, 600_000))) {
    await server.close(0);
    await engine.shutdown();
    throw new Error("the engine did not complete its warm-up generation");
  }
  console.log(`The server is fired up and ready to roll! Serving '${servedModelName}' at ${server.url}`);

  // SIGINT/SIGTERM: stop accepting, let running requests finish (30 s), then abort the rest.
  // A second signal aborts at once.
  return new Promise<number>((resolveExit) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn(`${signal} again: aborting running requests`);
        for (const g of ctx.state.byRid.values()) g.abort("the server is shutting down");
        return;
      }
      stopping = true;
      log.info(`${signal}: shutting down (${ctx.state.inflight} request(s) in flight)`);
      server
        .close(30_000)
        .then(() => engine.shutdown())
        .then(
          () => {
            log.info("stopped");
            process.off("SIGINT", onInt);
            process.off("SIGTERM", onTerm);
            resolveExit(0);
          },
          (e: unknown) => {
            log.error(`shutdown failed: ${(e as Error).message}`);
            resolveExit(1);
          },
        );
    };
    const onInt = () => stop("SIGINT");
    const onTerm = () => stop("SIGTERM");
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
  });
}

function readConfigJson(dir: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  } catch {
    return {};
  }
}

function readModelType(dir: string): string | undefined {
  const t = readConfigJson(dir).model_type;
  return typeof t === "string" ? t : undefined;
}

function readArchitectures(dir: string): string[] | undefined {
  const a = readConfigJson(dir).architectures;
  return Array.isArray(a) ? (a as string[]) : undefined;
}
