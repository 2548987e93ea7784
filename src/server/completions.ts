// POST /v1/completions: a prompt (text, token ids, or a batch of either) → n engine requests per
// prompt → a text_completion (or stream). `echo` + `logprobs` returns the prompt's logprobs
// too (position 0 has none: null), which is what lm_eval's local-completions scores with.

import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { ServerContext } from "./context.js";
import { badRequest } from "./errors.js";
import { type GenResult, type GenSpec, type GenUpdate } from "./generation.js";
import { sendJson } from "./http.js";
import { completionLogprobs, promptEntries } from "./logprobs.js";
import {
  NO_LOGPROBS,
  OPENAI_FIELDS,
  checkModel,
  makeSpec,
  parseGenParams,
  parsePrompts,
  resolveMaxNewTokens,
  type GenParams,
  type Prompt,
} from "./params.js";
import { UsageSoFar, finishFields, nowSeconds, runStream, runToEnd, usageOf } from "./responses.js";
import { SseStream } from "./sse.js";
import { optBool, optInt, optString, requireObject, streamOptions } from "./validate.js";

interface CompletionRequest {
  params: GenParams;
  prompts: Prompt[];
  specs: GenSpec[];
  stream: boolean;
  includeUsage: boolean;
  /** stream_options.continuous_usage_stats (with include_usage): usage so far on every chunk. */
  continuousUsage: boolean;
  echo: boolean;
  /** undefined: no logprobs; otherwise the number of top alternatives (0..20). */
  logprobs: number | undefined;
}

export function parseCompletionRequest(ctx: ServerContext, body: unknown): CompletionRequest {
  const o = requireObject(body);
  checkModel(ctx, o);
  const params = parseGenParams(ctx, o, OPENAI_FIELDS, 16);
  const { stream, includeUsage, continuousUsage } = streamOptions(o);
  const echo = optBool(o, "echo", false);
  const logprobs = optInt(o, "logprobs", undefined, { min: 0, max: 20 });
  if (optString(o, "suffix")) throw badRequest("'suffix' is not supported", "suffix");
  const bestOf = optInt(o, "best_of", undefined, { min: 1 });
  if (bestOf !== undefined && bestOf !== params.n) throw badRequest("'best_of' other than n is not supported", "best_of");
  if (o.prompt === undefined || o.prompt === null) throw badRequest("'prompt' is required", "prompt", "missing_required_parameter");
  const { prompts } = parsePrompts(ctx, o.prompt, "prompt");

  const lp =
    logprobs === undefined ? NO_LOGPROBS : { returnLogprob: true, logprobStartLen: echo ? 0 : -1, topLogprobsNum: logprobs };
  const specs: GenSpec[] = [];
  for (const p of prompts) {
    const maxNew = resolveMaxNewTokens(ctx, p.ids.length, params.maxTokens, "prompt");
    for (let j = 0; j < params.n; j++) specs.push(makeSpec(ctx, params, p.ids, maxNew, lp, j));
  }
  return { params, prompts, specs, stream, includeUsage, continuousUsage, echo, logprobs };
}

export async function handleCompletions(ctx: ServerContext, body: unknown, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const r = parseCompletionRequest(ctx, body);
  const n = r.params.n;
  const head = { id: `cmpl-${randomUUID().replace(/-/g, "")}`, created: nowSeconds(), model: ctx.config.servedModelName };
  // The echoed prompt: the client's own text, or the decoded ids.
  const promptText = (i: number) => {
    const p = r.prompts[Math.floor(i / n)];
    return p.text ?? ctx.tokenizer.decode(p.ids);
  };

  if (!r.stream) {
    const results = await runToEnd(ctx, r.specs, req, res);
    if (!results) return;
    const choices = results.map((x) => {
      const prefix = r.echo ? promptText(x.index) : "";
      const entries = [...(r.echo ? promptEntries(x.promptIds, x.promptLogprobs) : []), ...generated(x)];
      return {
        index: x.index,
        text: prefix + x.text,
        logprobs: r.logprobs === undefined ? null : completionLogprobs(ctx.texts, entries, r.logprobs, 0).logprobs,
        ...finishFields(x.finish),
      };
    });
    sendJson(res, 200, { ...head, object: "text_completion", choices, usage: usageOf(results, n) });
    return;
  }

  const sse = new SseStream(res);
  const soFar = new UsageSoFar(r.prompts.reduce((a, p) => a + p.ids.length, 0));
  const chunk = (choices: unknown[], usage?: unknown) => ({
    ...head,
    object: "text_completion",
    choices,
    ...(r.includeUsage ? { usage: usage ?? (r.continuousUsage ? soFar.get() : null) } : {}),
  });
  const offsets = new Map<number, number>(); // per choice: text offset of its next token
  const onUpdate = (u: GenUpdate) => {
    soFar.add(u.ids.length);
    const first = !offsets.has(u.index);
    const echoNow = r.echo && first;
    const text = (echoNow ? promptText(u.index) : "") + u.delta;
    let logprobs = null;
    if (r.logprobs !== undefined) {
      const entries = [
        ...(echoNow ? promptEntries(r.specs[u.index].inputIds, u.promptLogprobs ?? []) : []),
        ...u.ids.map((id, i) => ({ id, lp: u.logprobs[i] ?? null })),
      ];
      if (entries.length > 0) {
        const out = completionLogprobs(ctx.texts, entries, r.logprobs, offsets.get(u.index) ?? 0);
        logprobs = out.logprobs;
        offsets.set(u.index, out.offset);
      }
    }
    if (!offsets.has(u.index)) offsets.set(u.index, 0);
    if (text !== "" || logprobs) {
      sse.send(chunk([{ index: u.index, text, logprobs, finish_reason: null, matched_stop: null }]));
    }
    if (u.finish) sse.send(chunk([{ index: u.index, text: "", logprobs: null, ...finishFields(u.finish) }]));
  };
  const { results, failed } = await runStream(ctx, r.specs, req, res, sse, onUpdate);
  if (!failed && r.includeUsage) sse.send(chunk([], usageOf(results, n)));
  sse.done();
}

function generated(x: GenResult) {
  return x.outputIds.map((id, i) => ({ id, lp: x.logprobs[i] ?? null }));
}
