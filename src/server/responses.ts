// Pieces every generation route shares: usage with cached tokens, SGLang's finish fields,
// what an engine-side abort becomes, aborting a request whose client went away, and running a
// streamed request's choices.

import type { IncomingMessage, ServerResponse } from "node:http";
import { ApiError } from "./errors.js";
import type { ServerContext } from "./context.js";
import { CLIENT_GONE, startGenerations, type Finish, type GenGroup, type GenResult, type GenSpec, type GenUpdate } from "./generation.js";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** Prompt tokens count once per prompt (choice index % n == 0), completion tokens per choice. */
export function usageOf(results: readonly GenResult[], n: number): Usage {
  let prompt = 0;
  let completion = 0;
  let cached = 0;
  for (const r of results) {
    completion += r.outputIds.length;
    if (r.index % n === 0) {
      prompt += r.promptIds.length;
      cached += r.cachedTokens;
    }
  }
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } };
}

/**
 * Usage on every streamed chunk so far (stream_options.continuous_usage_stats, with
 * include_usage, as SGLang and vLLM take it): prompt tokens as usageOf counts them, completion
 * tokens as they arrive.
 */
export class UsageSoFar {
  private completion = 0;
  constructor(private readonly prompt: number) {}

  add(tokens: number): void {
    this.completion += tokens;
  }

  get(): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
    return { prompt_tokens: this.prompt, completion_tokens: this.completion, total_tokens: this.prompt + this.completion };
  }
}

/** OpenAI's finish_reason plus SGLang's matched_stop (the stop string or token id, else null). */
export function finishFields(f: Finish): { finish_reason: string; matched_stop: string | number | null } {
  return { finish_reason: f.reason, matched_stop: f.matchedStop };
}

/** An abort that came from the engine (not from us) as the error a client gets. */
export function abortError(f: Finish): ApiError {
  const message = f.message ?? "the request was aborted";
  if (f.busy) return new ApiError(503, message, "service_unavailable_error", null, "service_unavailable");
  return new ApiError(500, message, "server_error", null, "request_aborted");
}

/**
 * A streamed choice ended by abort ends the whole stream: an engine-side abort as an SSE error,
 * a client that left with nothing written; the group's other choices are stopped either way.
 */
export function endStreamOnAbort(finish: Finish, sse: { error(e: ApiError): void }, group: GenGroup | undefined): void {
  if (finish.message !== CLIENT_GONE) sse.error(abortError(finish));
  group?.abort(CLIENT_GONE);
}

/** The first engine-side abort among the results, if any (an /abort_request is a normal end). */
export function firstAbort(results: readonly GenResult[]): ApiError | undefined {
  const r = results.find((x) => x.finish.reason === "abort" && !x.finish.requested);
  return r ? abortError(r.finish) : undefined;
}

/** When the client disconnects before the response is complete, its engine requests are aborted (freeing their KV). */
export function abortOnDisconnect(req: IncomingMessage, res: ServerResponse, group: GenGroup): void {
  const onClose = () => {
    if (!res.writableFinished) group.abort(CLIENT_GONE);
  };
  res.once("close", onClose);
  req.once("aborted", onClose);
}

export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/**
 * Runs a streamed request's choices: `handle` sees each update until an engine-side abort, which
 * ends the stream instead (endStreamOnAbort; later updates are dropped); a client that leaves
 * aborts the engine requests. `started` runs once the choices are queued. Resolves when all end.
 */
export async function runStream(
  ctx: ServerContext,
  specs: GenSpec[],
  req: IncomingMessage,
  res: ServerResponse,
  sse: { error(e: ApiError): void },
  handle: (u: GenUpdate) => void,
  started: (g: GenGroup) => void = () => {},
): Promise<{ results: GenResult[]; failed: boolean }> {
  let failed = false;
  let group: GenGroup | undefined = undefined;
  group = startGenerations(ctx, specs, (u) => {
    if (failed) return;
    if (u.finish?.reason === "abort" && !u.finish.requested) {
      failed = true;
      endStreamOnAbort(u.finish, sse, group);
      return;
    }
    handle(u);
  });
  started(group);
  abortOnDisconnect(req, res, group);
  const results = await group.done;
  return { results, failed };
}

/**
 * Runs a non-streamed request's choices to their end: their results, or null when the client
 * left meanwhile (nothing to send); an engine-side abort is thrown as its HTTP error.
 */
export async function runToEnd(ctx: ServerContext, specs: GenSpec[], req: IncomingMessage, res: ServerResponse): Promise<GenResult[] | null> {
  const group = startGenerations(ctx, specs);
  abortOnDisconnect(req, res, group);
  const results = await group.done;
  if (res.destroyed) return null;
  const err = firstAbort(results);
  if (err) throw err;
  return results;
}
