// SGLang's native POST /generate: `text` or `input_ids` (one or a batch), `sampling_params`
// (SGLang names: max_new_tokens, stop, stop_token_ids, ...), `return_logprob`,
// `logprob_start_len`, `top_logprobs_num`, `stream`, `rid` (the id /abort_request takes). The
// answer is {text, output_ids, meta_info}
// (a list for a batch or n > 1); streaming sends the cumulative text so far, as SGLang does.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { ServerContext } from "./context.js";
import { badRequest } from "./errors.js";
import { type Finish, type GenResult, type GenSpec, type GenUpdate } from "./generation.js";
import { sendJson } from "./http.js";
import { nativeTopTriples, nativeTriples, promptEntries } from "./logprobs.js";
import { NATIVE_FIELDS, makeSpec, parseGenParams, parsePrompts, rejectNotYet, resolveMaxNewTokens } from "./params.js";
import { runStream, runToEnd } from "./responses.js";
import { SseStream } from "./sse.js";
import { optBool, optInt, requireObject, type Json } from "./validate.js";

interface GenerateRequest {
  specs: GenSpec[];
  /** Per spec: whether logprobs were asked and from which prompt position. */
  logprob: { on: boolean; start: number; top: number }[];
  textInLogprobs: boolean;
  single: boolean;
  stream: boolean;
}

/** A per-prompt field given once for all prompts or as a list with one value per prompt. */
function perPrompt(o: Json, key: string, count: number): Json[] {
  const v = o[key];
  if (Array.isArray(v)) {
    if (v.length !== count) throw badRequest(`'${key}' has ${v.length} entries for ${count} prompts`, key);
    return v.map((x) => ({ [key]: x }));
  }
  return Array.from({ length: count }, () => ({ [key]: v }));
}

export function parseGenerateRequest(ctx: ServerContext, body: unknown): GenerateRequest {
  const o = requireObject(body);
  const hasText = o.text !== undefined && o.text !== null;
  const hasIds = o.input_ids !== undefined && o.input_ids !== null;
  if (hasText === hasIds) throw badRequest("give exactly one of 'text' and 'input_ids'", hasText ? "input_ids" : "text");
  const key = hasText ? "text" : "input_ids";
  if (hasText && Array.isArray(o.text) && !o.text.every((t) => typeof t === "string")) {
    throw badRequest("'text' must be a string or an array of strings", "text", "invalid_type");
  }
  rejectNotYet(o); // image_data, lora_path at the top level
  const { prompts, batch } = parsePrompts(ctx, o[key], key);
  const stream = optBool(o, "stream", false);
  const textInLogprobs = optBool(o, "return_text_in_logprobs", false);

  const sps = o.sampling_params === undefined || o.sampling_params === null ? {} : o.sampling_params;
  const spList = Array.isArray(sps) ? sps : prompts.map(() => sps);
  if (spList.length !== prompts.length) throw badRequest(`'sampling_params' has ${spList.length} entries for ${prompts.length} prompts`, "sampling_params");
  const rl = perPrompt(o, "return_logprob", prompts.length);
  const ls = perPrompt(o, "logprob_start_len", prompts.length);
  const tn = perPrompt(o, "top_logprobs_num", prompts.length);
  const ri = perPrompt(o, "return_input_logprob", prompts.length);

  const specs: GenSpec[] = [];
  const logprob: GenerateRequest["logprob"] = [];
  prompts.forEach((p, i) => {
    const params = parseGenParams(ctx, requireObject(spList[i], "sampling_params"), NATIVE_FIELDS, 128);
    const on = optBool(rl[i], "return_logprob", false);
    let start = optInt(ls[i], "logprob_start_len", -1, { min: -1 });
    if (start === -1 && optBool(ri[i], "return_input_logprob", false)) start = 0;
    if (start >= p.ids.length) {
      throw badRequest(`'logprob_start_len' (${start}) must be below the number of input tokens (${p.ids.length})`, "logprob_start_len");
    }
    const top = optInt(tn[i], "top_logprobs_num", 0, { min: 0, max: 20 });
    const maxNew = resolveMaxNewTokens(ctx, p.ids.length, params.maxTokens, key);
    const lp = { returnLogprob: on, logprobStartLen: on ? start : -1, topLogprobsNum: on ? top : 0 };
    for (let j = 0; j < params.n; j++) {
      specs.push(makeSpec(ctx, params, p.ids, maxNew, lp, j));
      logprob.push({ on, start, top });
    }
  });
  // SGLang's `rid`: the client's id for each choice (for /abort_request); one string, or one per choice.
  if (o.rid !== undefined && o.rid !== null) {
    const rids = Array.isArray(o.rid) ? o.rid : [o.rid];
    if (!rids.every((r) => typeof r === "string" && r.length > 0 && r.length <= 256)) throw badRequest("'rid' must be a non-empty string (≤ 256 characters) or a list of them", "rid", "invalid_type");
    if (rids.length !== specs.length) throw badRequest(`'rid' has ${rids.length} ids for ${specs.length} choices`, "rid");
    rids.forEach((r, i) => (specs[i].rid = r as string));
  }
  return { specs, logprob, textInLogprobs, single: !batch && specs.length === 1, stream };
}

function finishReason(f: Finish | undefined, maxNewTokens: number) {
  if (!f) return null;
  if (f.reason === "stop") return { type: "stop", matched: f.matchedStop };
  if (f.reason === "length") return { type: "length", length: maxNewTokens };
  return { type: "abort", message: f.message ?? "aborted" };
}

interface Progress {
  rid: string;
  text: string;
  outputIds: number[];
  logprobs: GenResult["logprobs"];
  promptLogprobs: GenResult["promptLogprobs"];
  cachedTokens: number;
  finish: Finish | undefined;
  startedAt: number;
}

function itemOf(ctx: ServerContext, r: GenerateRequest, i: number, x: Progress) {
  const spec = r.specs[i];
  const lp = r.logprob[i];
  const meta: Record<string, unknown> = {
    id: x.rid,
    finish_reason: finishReason(x.finish, spec.maxNewTokens),
    prompt_tokens: spec.inputIds.length,
    completion_tokens: x.outputIds.length,
    cached_tokens: x.cachedTokens,
    e2e_latency: (performance.now() - x.startedAt) / 1000,
  };
  if (lp.on) {
    const input = lp.start >= 0 ? promptEntries(spec.inputIds, x.promptLogprobs, lp.start) : [];
    const output = x.outputIds.map((id, k) => ({ id, lp: x.logprobs[k] ?? null }));
    meta.input_token_logprobs = nativeTriples(ctx.texts, input, r.textInLogprobs);
    meta.output_token_logprobs = nativeTriples(ctx.texts, output, r.textInLogprobs);
    if (lp.top > 0) {
      meta.input_top_logprobs = nativeTopTriples(ctx.texts, input, lp.top, r.textInLogprobs);
      meta.output_top_logprobs = nativeTopTriples(ctx.texts, output, lp.top, r.textInLogprobs);
    }
  }
  return { text: x.text, output_ids: x.outputIds, meta_info: meta };
}

export async function handleGenerate(ctx: ServerContext, body: unknown, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const r = parseGenerateRequest(ctx, body);
  if (!r.stream) {
    const results = await runToEnd(ctx, r.specs, req, res);
    if (!results) return;
    const items = results.map((x) => itemOf(ctx, r, x.index, x));
    sendJson(res, 200, r.single ? items[0] : items);
    return;
  }

  const sse = new SseStream(res);
  const started = performance.now();
  const progress: Progress[] = r.specs.map(() => ({
    rid: "",
    text: "",
    outputIds: [],
    logprobs: [],
    promptLogprobs: [],
    cachedTokens: 0,
    finish: undefined,
    startedAt: started,
  }));
  const onUpdate = (u: GenUpdate) => {
    const p = progress[u.index];
    p.text += u.delta;
    p.outputIds.push(...u.ids);
    p.logprobs.push(...u.logprobs);
    if (u.promptLogprobs) p.promptLogprobs = u.promptLogprobs;
    if (u.cachedTokens !== undefined) p.cachedTokens = u.cachedTokens;
    p.finish = u.finish;
    if (u.delta === "" && u.ids.length === 0 && !u.finish) return;
    sse.send({ ...itemOf(ctx, r, u.index, p), index: u.index });
  };
  await runStream(ctx, r.specs, req, res, sse, onUpdate, (g) => g.rids.forEach((rid, i) => (progress[i].rid = rid)));
  sse.done();
}
