// Routes about the server rather than a generation: health checks, model and server info,
// the model list, cache flushing and Prometheus metrics.

import type { ServerResponse } from "node:http";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../util/repo.js";
import type { ServerContext } from "./context.js";
import { ApiError, notFound, unavailable } from "./errors.js";
import { sendJson, sendText } from "./http.js";
import { servesModel } from "./params.js";
import { EngineBusyError } from "../engine/types.js";
import { GREEDY } from "../engine/sampling.js";

export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "unknown";
  }
})();

const STARTED = Math.floor(Date.now() / 1000);

/** GET /health: 200 while serving, 503 while shutting down. */
export function handleHealth(ctx: ServerContext, res: ServerResponse): void {
  if (ctx.state.shuttingDown) throw unavailable("the server is shutting down");
  sendText(res, 200, "");
}

/**
 * GET /health_generate: runs a one-token greedy generation through the engine and answers
 * 200 once the engine produces it, 503 on timeout, shutdown or a full queue (as SGLang does).
 */
export async function handleHealthGenerate(ctx: ServerContext, res: ServerResponse): Promise<void> {
  if (ctx.state.shuttingDown) throw unavailable("the server is shutting down");
  if (!(await probeEngine(ctx, ctx.config.healthTimeoutMs ?? 20_000))) {
    throw unavailable("the engine did not answer the health check in time");
  }
  sendText(res, 200, "");
}

/** Runs a one-token greedy generation; true once the engine produced it within the timeout. */
export function probeEngine(ctx: ServerContext, timeoutMs: number): Promise<boolean> {
  const rid = `HEALTH_CHECK_${Date.now()}_${Math.random().toString(36).slice(2)}`;
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => {
      ctx.engine.abort(rid);
      resolve(false);
    }, timeoutMs);
    try {
      ctx.engine.submit(
        {
          rid,
          inputIds: [ctx.tokenizer.bosId ?? 0],
          sampling: GREEDY,
          maxNewTokens: 1,
          stopTokenIds: [],
          returnLogprob: false,
          logprobStartLen: -1,
          topLogprobsNum: 0,
        },
        (o) => {
          if (o.tokens.length === 0 && !o.finish) return;
          clearTimeout(timer);
          resolve(o.finish?.reason !== "abort");
        },
      );
    } catch (e) {
      clearTimeout(timer);
      if (!(e instanceof EngineBusyError)) ctx.log.error(`health check failed: ${(e as Error).message}`);
      resolve(false);
    }
  });
}

export function handleModelInfo(ctx: ServerContext, res: ServerResponse): void {
  sendJson(res, 200, {
    model_path: ctx.config.modelPath,
    tokenizer_path: ctx.config.tokenizerPath ?? ctx.config.modelPath,
    is_generation: true,
    preferred_sampling_params: ctx.config.samplingDefaults ?? null,
    weight_version: "default",
    has_image_understanding: false,
    has_audio_understanding: false,
    model_type: ctx.config.modelType ?? null,
    architectures: ctx.config.architectures ?? null,
  });
}

export async function handleServerInfo(ctx: ServerContext, res: ServerResponse): Promise<void> {
  const stats = await ctx.engine.stats();
  sendJson(res, 200, {
    ...ctx.config.serverArgs,
    version: VERSION,
    internal_states: [
      {
        context_length: ctx.info.contextLength,
        max_total_num_tokens: ctx.info.maxTotalTokens ?? null,
        max_running_requests: ctx.info.maxRunningRequests ?? null,
        hybrid_swa: ctx.info.hybridSwa ?? null,
        full_pool_tokens: ctx.info.fullPoolTokens ?? null,
        swa_pool_tokens: ctx.info.swaPoolTokens ?? null,
        num_running_reqs: stats.running,
        num_queue_reqs: stats.waiting,
        full_pool_used: stats.fullPoolUsed,
        swa_pool_used: stats.swaPoolUsed,
        cache_hit_rate: stats.promptTokens > 0 ? stats.cachedTokens / stats.promptTokens : 0,
        forward_tokens: stats.forwardTokens,
        generated_tokens: stats.generatedTokens,
        device_memory: stats.device ?? null,
      },
    ],
  });
}

function modelCard(ctx: ServerContext) {
  const id = ctx.config.servedModelName;
  return { id, object: "model", created: STARTED, owned_by: "sglang", root: id, parent: null, max_model_len: ctx.info.contextLength };
}

export function handleModels(ctx: ServerContext, res: ServerResponse): void {
  sendJson(res, 200, { object: "list", data: [modelCard(ctx)] });
}

export function handleModel(ctx: ServerContext, res: ServerResponse, model: string): void {
  if (!servesModel(ctx, model)) throw notFound(`The model '${model}' does not exist.`, "model", "model_not_found");
  sendJson(res, 200, modelCard(ctx));
}

const FLUSH_TEXT =
  "Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, the operation will not be performed.)\n";

/** GET|POST /flush_cache: 200 when flushed, 400 when requests are running (SGLang's answer). */
export async function handleFlushCache(ctx: ServerContext, res: ServerResponse): Promise<void> {
  const ok = await ctx.engine.flushCache();
  sendText(res, ok ? 200 : 400, FLUSH_TEXT);
}

export async function handleMetrics(ctx: ServerContext, res: ServerResponse): Promise<void> {
  if (!ctx.metrics) throw new ApiError(404, "metrics are off; launch with --enable-metrics", "invalid_request_error", null, "not_found");
  const { contentType, body } = await ctx.metrics.text();
  sendText(res, 200, body, contentType);
}
