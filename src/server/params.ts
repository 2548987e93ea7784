// Request fields shared by the OpenAI routes and SGLang's /generate: sampling parameters with
// SGLang's ranges, stop conditions, the model name, prompts as text or token ids, and the
// context-length check. Everything is validated here, before anything reaches the engine.

import { GREEDY, type SamplingParams } from "../engine/sampling.js";
import type { ServerContext } from "./context.js";
import { badRequest, notFound } from "./errors.js";
import type { GenSpec } from "./generation.js";
import { checkIds, type Json, optBool, optIdList, optInt, optNumber, optStringList } from "./validate.js";

export interface GenParams {
  sampling: SamplingParams;
  /** undefined: as many as the context allows. */
  maxTokens: number | undefined;
  minTokens: number;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  skipSpecialTokens: boolean;
  noStopTrim: boolean;
  n: number;
}

/** Field names differ between the OpenAI bodies and SGLang's sampling_params. */
export interface FieldNames {
  maxTokens: string[]; // first present wins
  minTokens: string;
  seed: string;
}

export const OPENAI_FIELDS: FieldNames = { maxTokens: ["max_completion_tokens", "max_tokens"], minTokens: "min_tokens", seed: "seed" };
export const NATIVE_FIELDS: FieldNames = { maxTokens: ["max_new_tokens"], minTokens: "min_new_tokens", seed: "sampling_seed" };

const MAX_N = 128;

/** Request fields for capabilities not built yet: refused, so that no request silently loses them. */
const CONSTRAINED = ["json_schema", "regex", "ebnf", "structural_tag", "stop_regex"];
const NOT_YET: [string, string][] = [
  ...CONSTRAINED.map((k): [string, string] => [k, `constrained decoding (${CONSTRAINED.join(", ")})`]),
  ["lora_path", "LoRA adapters"],
  ["image_data", "image input (--enable-multimodal)"],
  ["return_hidden_states", "returning hidden states"],
];

export function rejectNotYet(o: Json): void {
  for (const [key, what] of NOT_YET) {
    if (o[key] !== undefined && o[key] !== null) throw badRequest(`'${key}': ${what} is not implemented yet`, key);
  }
}

export function parseGenParams(ctx: ServerContext, o: Json, names: FieldNames, dfltMaxTokens: number | undefined): GenParams {
  rejectNotYet(o);
  const d: SamplingParams = { ...GREEDY, temperature: 1, ...ctx.config.samplingDefaults };
  let topK = optInt(o, "top_k", d.topK, { min: -1 });
  if (topK === 0) topK = -1; // 0 means "off" for vLLM clients, as -1 does for SGLang's
  const seed = optInt(o, names.seed, undefined);
  const sampling: SamplingParams = {
    temperature: optNumber(o, "temperature", d.temperature, { min: 0 }),
    topP: optNumber(o, "top_p", d.topP, { gt: 0, max: 1 }),
    topK,
    minP: optNumber(o, "min_p", d.minP, { min: 0, max: 1 }),
    frequencyPenalty: optNumber(o, "frequency_penalty", d.frequencyPenalty, { min: -2, max: 2 }),
    presencePenalty: optNumber(o, "presence_penalty", d.presencePenalty, { min: -2, max: 2 }),
    repetitionPenalty: optNumber(o, "repetition_penalty", d.repetitionPenalty, { gt: 0, max: 2 }),
  };
  if (seed !== undefined) sampling.seed = seed >>> 0;
  const bias = logitBias(o, ctx.info.vocabSize);
  if (bias.length > 0) sampling.logitBias = bias;

  const maxKey = names.maxTokens.find((k) => o[k] !== undefined && o[k] !== null) ?? names.maxTokens[0];
  const maxTokens = optInt(o, maxKey, dfltMaxTokens, { min: 0 });
  const minTokens = optInt(o, names.minTokens, 0, { min: 0 });
  if (maxTokens !== undefined && minTokens > maxTokens) {
    throw badRequest(`'${names.minTokens}' (${minTokens}) must not exceed '${maxKey}' (${maxTokens})`, names.minTokens);
  }
  return {
    sampling,
    maxTokens,
    minTokens,
    stop: optStringList(o, "stop"),
    stopTokenIds: optIdList(o, "stop_token_ids", ctx.info.vocabSize),
    ignoreEos: optBool(o, "ignore_eos", false),
    skipSpecialTokens: optBool(o, "skip_special_tokens", true),
    noStopTrim: optBool(o, "no_stop_trim", false),
    n: optInt(o, "n", 1, { min: 1, max: MAX_N }),
  };
}

/** OpenAI's `logit_bias`: {"token id": bias in [-100, 100]}, added to the logits before sampling. */
function logitBias(o: Json, vocab: number): [number, number][] {
  const v = o.logit_bias;
  if (v === undefined || v === null) return [];
  if (typeof v !== "object" || Array.isArray(v)) throw badRequest("'logit_bias' must be an object of token id → bias", "logit_bias", "invalid_type");
  return Object.entries(v).map(([k, b]) => {
    const id = Number(k);
    if (!/^\d+$/.test(k) || id >= vocab) throw badRequest(`'logit_bias' key '${k}' is not a token id in [0, ${vocab})`, "logit_bias");
    if (typeof b !== "number" || !Number.isFinite(b) || b < -100 || b > 100) throw badRequest(`'logit_bias' for token ${k} must be a number in [-100, 100]`, "logit_bias");
    return [id, b];
  });
}

/** The request's `model` must be the served name (or the model path, or SGLang's "default"). */
export function checkModel(ctx: ServerContext, o: Json): void {
  const model = o.model;
  if (model === undefined || model === null) return;
  if (typeof model !== "string") throw badRequest(`'model' must be a string`, "model", "invalid_type");
  if (!servesModel(ctx, model)) {
    throw notFound(`The model '${model}' does not exist. This server serves '${ctx.config.servedModelName}'.`, "model", "model_not_found");
  }
}

export function servesModel(ctx: ServerContext, model: string): boolean {
  return model === ctx.config.servedModelName || model === ctx.config.modelPath || model === "default";
}

/** One prompt as given: text, or token ids. */
export type Prompt = { text: string; ids: number[] } | { text: undefined; ids: number[] };

/** Token ids of a text prompt (BOS added as the tokenizer does) or checked ids. */
export function promptFromText(ctx: ServerContext, text: string): Prompt {
  return { text, ids: ctx.tokenizer.encode(text) };
}

export function promptFromIds(ctx: ServerContext, ids: unknown[], param: string): Prompt {
  if (!ids.every((x) => Number.isInteger(x))) throw badRequest(`'${param}' must hold integer token ids`, param, "invalid_type");
  checkIds(ids as number[], param, ctx.info.vocabSize);
  return { text: undefined, ids: ids as number[] };
}

/**
 * A prompt field that may be a string, token ids, or a batch of either (OpenAI `prompt`,
 * SGLang `text` / `input_ids`). Returns the prompts and whether a batch was given.
 */
export function parsePrompts(ctx: ServerContext, v: unknown, param: string): { prompts: Prompt[]; batch: boolean } {
  const bad = () => badRequest(`'${param}' must be a string, an array of token ids, or an array of either`, param, "invalid_type");
  if (typeof v === "string") return { prompts: [promptFromText(ctx, v)], batch: false };
  if (!Array.isArray(v)) throw bad();
  if (v.length === 0) throw badRequest(`'${param}' must not be empty`, param, "invalid_value");
  if (v.every((x) => typeof x === "number")) return { prompts: [promptFromIds(ctx, v, param)], batch: false };
  const prompts = v.map((x, i) => {
    if (typeof x === "string") return promptFromText(ctx, x);
    if (Array.isArray(x) && x.length > 0) return promptFromIds(ctx, x, `${param}[${i}]`);
    throw bad();
  });
  return { prompts, batch: true };
}

/**
 * max_new_tokens for a prompt: what was asked, or the rest of the context. A prompt that does
 * not fit, or prompt + max_tokens beyond the context, is a 400 (SGLang's rule).
 */
export function resolveMaxNewTokens(ctx: ServerContext, promptLen: number, maxTokens: number | undefined, param: string): number {
  const limit = ctx.info.contextLength;
  if (promptLen === 0) throw badRequest(`'${param}' is empty`, param, "invalid_value");
  if (promptLen >= limit) {
    throw badRequest(
      `The input (${promptLen} tokens) is longer than the model's context length (${limit} tokens).`,
      param,
      "context_length_exceeded",
    );
  }
  if (maxTokens === undefined) return limit - promptLen;
  if (promptLen + maxTokens > limit) {
    throw badRequest(
      `Requested token count exceeds the model's maximum context length of ${limit} tokens. You requested a total of ` +
        `${promptLen + maxTokens} tokens: ${promptLen} tokens from the input and ${maxTokens} tokens for the completion. ` +
        `Please reduce the number of tokens in the input or the completion to fit within the limit.`,
      param,
      "context_length_exceeded",
    );
  }
  return maxTokens;
}

export interface LogprobRequest {
  returnLogprob: boolean;
  logprobStartLen: number;
  topLogprobsNum: number;
}

export const NO_LOGPROBS: LogprobRequest = { returnLogprob: false, logprobStartLen: -1, topLogprobsNum: 0 };

/** The engine request for choice `choice` of a prompt. Seeds differ per choice so n > 1 samples differ. */
export function makeSpec(ctx: ServerContext, p: GenParams, ids: number[], maxNewTokens: number, lp: LogprobRequest, choice: number): GenSpec {
  const sampling = p.sampling.seed === undefined ? p.sampling : { ...p.sampling, seed: (p.sampling.seed + choice) >>> 0 };
  const eos = p.ignoreEos ? [] : (ctx.config.eosTokenIds ?? ctx.tokenizer.eosIds);
  return {
    inputIds: ids,
    sampling,
    maxNewTokens,
    minNewTokens: Math.min(p.minTokens, maxNewTokens),
    stopTokenIds: [...new Set([...eos, ...p.stopTokenIds])],
    stopStrings: p.stop,
    skipSpecialTokens: p.skipSpecialTokens,
    noStopTrim: p.noStopTrim,
    ...lp,
  };
}
