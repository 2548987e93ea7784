// vLLM-style /tokenize and /detokenize (also under /v1):
//   {model, prompt, add_special_tokens?} → {tokens, count, max_model_len}
//   {model, tokens} → {prompt}

import type { ServerResponse } from "node:http";
import type { ServerContext } from "./context.js";
import { badRequest } from "./errors.js";
import { sendJson } from "./http.js";
import { checkModel } from "./params.js";
import { checkIds, optBool, requireObject } from "./validate.js";

export function handleTokenize(ctx: ServerContext, body: unknown, res: ServerResponse): void {
  const o = requireObject(body);
  checkModel(ctx, o);
  if (typeof o.prompt !== "string") throw badRequest("'prompt' must be a string", "prompt", "invalid_type");
  const tokens = ctx.tokenizer.encode(o.prompt, { addSpecialTokens: optBool(o, "add_special_tokens", true) });
  sendJson(res, 200, { tokens, count: tokens.length, max_model_len: ctx.info.contextLength });
}

export function handleDetokenize(ctx: ServerContext, body: unknown, res: ServerResponse): void {
  const o = requireObject(body);
  checkModel(ctx, o);
  const tokens = o.tokens;
  if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t))) {
    throw badRequest("'tokens' must be an array of integer token ids", "tokens", "invalid_type");
  }
  checkIds(tokens as number[], "tokens", ctx.info.vocabSize);
  sendJson(res, 200, { prompt: ctx.tokenizer.decode(tokens as number[]) });
}
