// POST /v1/chat/completions: messages → chat template → token ids → n engine requests →
// a chat.completion (or chat.completion.chunk stream).

import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { ChatTemplateError, renderAndEncode, type ChatMessage } from "../tokenizer/chat_template.js";
import type { ServerContext } from "./context.js";
import { badRequest } from "./errors.js";
import { type Finish, type GenResult, type GenUpdate } from "./generation.js";
import { sendJson } from "./http.js";
import { chatLogprobs } from "./logprobs.js";
import { NO_LOGPROBS, OPENAI_FIELDS, checkModel, makeSpec, parseGenParams, promptFromIds, resolveMaxNewTokens, type GenParams } from "./params.js";
import { UsageSoFar, finishFields, nowSeconds, runStream, runToEnd, usageOf } from "./responses.js";
import { SseStream } from "./sse.js";
import { ToolCallStream, parsePythonicToolCalls, type ToolCall } from "./tool_calls.js";
import { isObject, optBool, optInt, requireObject, streamOptions, type Json } from "./validate.js";

interface ChatRequest {
  params: GenParams;
  ids: number[];
  maxNewTokens: number;
  stream: boolean;
  includeUsage: boolean;
  /** stream_options.continuous_usage_stats (with include_usage): usage so far on every chunk. */
  continuousUsage: boolean;
  logprobs: boolean;
  topLogprobs: number;
  /** Names of the offered functions when outputs are parsed for tool calls (--tool-call-parser, tools given, tool_choice not none). */
  tools: ReadonlySet<string> | null;
}

export function parseChatRequest(ctx: ServerContext, body: unknown): ChatRequest {
  const o = requireObject(body);
  checkModel(ctx, o);
  const params = parseGenParams(ctx, o, OPENAI_FIELDS, undefined);
  const { stream, includeUsage, continuousUsage } = streamOptions(o);
  const logprobs = optBool(o, "logprobs", false);
  const topLogprobs = optInt(o, "top_logprobs", 0, { min: 0, max: 20 });
  if (topLogprobs > 0 && !logprobs) throw badRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  checkUnsupported(o);

  if (!Array.isArray(o.messages)) throw badRequest("'messages' must be a non-empty array", "messages", "invalid_type");
  if (o.messages.length === 0) throw badRequest("'messages' must be a non-empty array", "messages", "invalid_value");
  if (o.tools !== undefined && o.tools !== null && !Array.isArray(o.tools)) throw badRequest("'tools' must be an array", "tools", "invalid_type");
  // The template would render an image part as <|image|> with no image behind it: refuse instead.
  (o.messages as unknown[]).forEach((m, i) => {
    const parts = isObject(m) && Array.isArray(m.content) ? m.content : [];
    if (parts.some((p) => isObject(p) && (p.type === "image_url" || p.type === "image"))) {
      throw badRequest(`messages[${i}] has an image; image input (--enable-multimodal) is not implemented yet`, "messages", "invalid_value");
    }
  });
  const kwargs = o.chat_template_kwargs ?? {};
  if (!isObject(kwargs)) throw badRequest("'chat_template_kwargs' must be an object", "chat_template_kwargs", "invalid_type");
  if (!ctx.chatTemplate) throw badRequest("this server has no chat template; launch it with --chat-template", "messages");
  let ids: number[];
  try {
    // SGLang's input_ids: the prompt as token ids, bypassing the template (messages still checked).
    if (o.input_ids !== undefined && o.input_ids !== null) {
      if (!Array.isArray(o.input_ids) || o.input_ids.length === 0) throw badRequest("'input_ids' must be a non-empty array of token ids", "input_ids", "invalid_type");
      ids = promptFromIds(ctx, o.input_ids, "input_ids").ids;
    } else ({ ids } = renderAndEncode(ctx.tokenizer, ctx.chatTemplate, o.messages as ChatMessage[], {
      addGenerationPrompt: optBool(o, "add_generation_prompt", true),
      continueFinalMessage: optBool(o, "continue_final_message", false),
      tools: (o.tools as unknown[] | null | undefined) ?? undefined,
      kwargs,
    }));
  } catch (e) {
    if (e instanceof ChatTemplateError) throw badRequest(e.message, "messages", "invalid_value");
    throw e;
  }
  const maxNewTokens = resolveMaxNewTokens(ctx, ids.length, params.maxTokens, "messages");
  const names = toolNames(o.tools);
  const tools = ctx.config.toolCallParser && names.size > 0 && o.tool_choice !== "none" ? names : null;
  return { params, ids, maxNewTokens, stream, includeUsage, continuousUsage, logprobs, topLogprobs, tools };
}

/** The function names of OpenAI `tools` ([{type: "function", function: {name, ...}}]). */
function toolNames(tools: unknown): Set<string> {
  const names = new Set<string>();
  if (tools === undefined || tools === null) return names;
  (tools as unknown[]).forEach((t, i) => {
    const fn = isObject(t) && t.type === "function" && isObject(t.function) ? t.function : null;
    if (!fn || typeof fn.name !== "string" || fn.name === "") throw badRequest(`tools[${i}] must be {"type": "function", "function": {"name": ...}}`, "tools", "invalid_value");
    names.add(fn.name);
  });
  return names;
}

// Fields whose meaning we cannot honour yet are refused rather than silently ignored.
function checkUnsupported(o: Json): void {
  const rf = o.response_format;
  if (rf !== undefined && rf !== null && !(isObject(rf) && rf.type === "text")) {
    throw badRequest("'response_format' other than {\"type\": \"text\"} is not supported yet", "response_format");
  }
  const tc = o.tool_choice;
  if (tc !== undefined && tc !== null && tc !== "auto" && tc !== "none") {
    throw badRequest("'tool_choice' other than \"auto\" or \"none\" is not supported yet", "tool_choice");
  }
}

export async function handleChat(ctx: ServerContext, body: unknown, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const r = parseChatRequest(ctx, body);
  const lp = r.logprobs ? { returnLogprob: true, logprobStartLen: -1, topLogprobsNum: r.topLogprobs } : NO_LOGPROBS;
  const specs = Array.from({ length: r.params.n }, (_, i) => makeSpec(ctx, r.params, r.ids, r.maxNewTokens, lp, i));
  const head = { id: `chatcmpl-${randomUUID().replace(/-/g, "")}`, created: nowSeconds(), model: ctx.config.servedModelName };

  if (!r.stream) {
    const results = await runToEnd(ctx, specs, req, res);
    if (!results) return;
    sendJson(res, 200, {
      ...head,
      object: "chat.completion",
      choices: results.map((x) => choiceOf(ctx, r, x)),
      usage: usageOf(results, r.params.n),
    });
    return;
  }

  const sse = new SseStream(res);
  const soFar = new UsageSoFar(r.ids.length);
  const chunk = (choices: unknown[], usage?: unknown) => ({
    ...head,
    object: "chat.completion.chunk",
    choices,
    ...(r.includeUsage ? { usage: usage ?? (r.continuousUsage ? soFar.get() : null) } : {}),
  });
  let rolesSent = false;
  // The role comes first, once per choice, as OpenAI streams it.
  const sendRoles = () => {
    if (rolesSent) return;
    rolesSent = true;
    for (let i = 0; i < specs.length; i++) {
      sse.send(chunk([{ index: i, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]));
    }
  };
  // With tool-call parsing, text from a '[' on is held while it may still be a call list
  // (ToolCallStream); at the end a call list goes out as one tool_calls delta.
  const calls = specs.map(() => (r.tools ? new ToolCallStream(r.tools) : null));
  const onUpdate = (u: GenUpdate) => {
    soFar.add(u.ids.length);
    sendRoles();
    const tc = calls[u.index];
    let delta = tc ? tc.push(u.delta) : u.delta;
    const logprobs = r.logprobs && u.ids.length > 0 ? chatLogprobs(ctx.texts, u.logprobs, r.topLogprobs) : null;
    if (tc && u.finish) {
      const end = tc.finish();
      if (end.calls) {
        const content = delta + end.content;
        sse.send(chunk([{ index: u.index, delta: { ...(content ? { content } : {}), tool_calls: toolCallsOf(end.calls) }, logprobs, finish_reason: null, matched_stop: null }]));
        sse.send(chunk([{ index: u.index, delta: {}, logprobs: null, ...finishOf(u.finish, true) }]));
        return;
      }
      delta += end.content;
    }
    if (delta !== "" || logprobs) {
      sse.send(chunk([{ index: u.index, delta: { content: delta }, logprobs, finish_reason: null, matched_stop: null }]));
    }
    if (u.finish) sse.send(chunk([{ index: u.index, delta: {}, logprobs: null, ...finishFields(u.finish) }]));
  };
  const { results, failed } = await runStream(ctx, specs, req, res, sse, onUpdate, sendRoles);
  if (!failed && r.includeUsage) sse.send(chunk([], usageOf(results, r.params.n)));
  sse.done();
}

function choiceOf(ctx: ServerContext, r: ChatRequest, x: GenResult) {
  const parsed = r.tools ? parsePythonicToolCalls(x.text, r.tools) : null;
  return {
    index: x.index,
    message: { role: "assistant", content: parsed ? parsed.content : x.text, reasoning_content: null, tool_calls: parsed ? toolCallsOf(parsed.calls) : null },
    logprobs: r.logprobs ? chatLogprobs(ctx.texts, x.logprobs, r.topLogprobs) : null,
    ...finishOf(x.finish, parsed !== null),
  };
}

/** OpenAI's tool_calls entries (ids are fresh per call). */
function toolCallsOf(calls: readonly ToolCall[]) {
  return calls.map((c, index) => ({ index, id: `call_${randomUUID().replace(/-/g, "").slice(0, 24)}`, type: "function", function: { name: c.name, arguments: c.arguments } }));
}

/** finish_reason "tool_calls" when the output was a call list and ended by a stop, as OpenAI and SGLang report it. */
function finishOf(f: Finish, calls: boolean) {
  const fields = finishFields(f);
  return calls && f.reason === "stop" ? { ...fields, finish_reason: "tool_calls" } : fields;
}
