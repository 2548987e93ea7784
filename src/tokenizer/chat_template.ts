// Renders OpenAI-style chat messages to a prompt string with a Jinja chat template: the
// checkpoint's own, a template file, or a built-in one (`llama-4`).
import { readFileSync } from 'node:fs';
import { Template } from '@huggingface/jinja';
import { LLAMA4_TEMPLATE } from './llama4_template.js';
import type { Tokenizer } from './tokenizer.js';

export const BUILTIN_TEMPLATES: Record<string, string> = { 'llama-4': LLAMA4_TEMPLATE };

/** Bad messages or a template that refuses them: the server answers 400. */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

export interface ContentPart {
  type: string;
  text?: string;
  image_url?: unknown;
  [key: string]: unknown;
}

export interface ToolCall {
  id?: string;
  type?: string;
  function: { name: string; arguments?: string | Record<string, unknown> };
}

export interface ChatMessage {
  role: string;
  content?: string | ContentPart[] | null;
  tool_calls?: ToolCall[];
  tool_call_id?: string;
  name?: string;
}

export interface RenderOptions {
  addGenerationPrompt?: boolean;
  /** OpenAI `tools` array; empty or absent means no tools. */
  tools?: unknown[];
  bosToken?: string;
  eosToken?: string;
  /** Extra template variables (OpenAI `chat_template_kwargs`, e.g. tools_in_user_message). */
  kwargs?: Record<string, unknown>;
  /**
   * SGLang's / vLLM's continue_final_message: the last message (an assistant turn) is left open,
   * so generation continues its text instead of starting a new turn.
   */
  continueFinalMessage?: boolean;
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool', 'ipython']);

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    readonly name = 'custom',
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new Error(`cannot parse chat template ${name}: ${(e as Error).message}`);
    }
  }

  /**
   * Picks a template: a built-in name, a path to a .jinja (or chat_template.json) file, or,
   * with no name, the checkpoint's own template.
   */
  static resolve(tokenizer: Tokenizer, nameOrPath?: string): ChatTemplate {
    if (nameOrPath === undefined) {
      if (tokenizer.chatTemplate === undefined) {
        const names = Object.keys(BUILTIN_TEMPLATES).join(', ');
        throw new Error(`the checkpoint has no chat template; pass one of: ${names}, or a template file`);
      }
      return new ChatTemplate(tokenizer.chatTemplate, 'checkpoint');
    }
    const builtin = BUILTIN_TEMPLATES[nameOrPath];
    if (builtin !== undefined) return new ChatTemplate(builtin, nameOrPath);
    let text: string;
    try {
      text = readFileSync(nameOrPath, 'utf8');
    } catch {
      const names = Object.keys(BUILTIN_TEMPLATES).join(', ');
      throw new Error(`unknown chat template "${nameOrPath}": not a built-in (${names}) nor a readable file`);
    }
    if (nameOrPath.endsWith('.json')) {
      const t = (JSON.parse(text) as { chat_template?: unknown }).chat_template;
      if (typeof t !== 'string') throw new Error(`${nameOrPath} has no "chat_template" string`);
      text = t;
    }
    return new ChatTemplate(text, nameOrPath);
  }

  render(messages: ChatMessage[], opts: RenderOptions = {}): string {
    const context: Record<string, unknown> = {
      ...opts.kwargs,
      messages: normaliseMessages(messages),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      bos_token: opts.bosToken ?? '',
      eos_token: opts.eosToken ?? '',
    };
    // Templates test `tools is defined` / `is not none`, so leave it out when there are none.
    if (opts.tools && opts.tools.length > 0) context.tools = opts.tools;
    try {
      return this.template.render(context);
    } catch (e) {
      throw new ChatTemplateError(`chat template ${this.name} failed: ${(e as Error).message}`);
    }
  }
}

/**
 * Renders and tokenises a chat. The template usually writes BOS itself, so special tokens
 * are added only when it did not: never two BOS.
 */
export function renderAndEncode(
  tokenizer: Tokenizer,
  template: ChatTemplate,
  messages: ChatMessage[],
  opts: RenderOptions = {},
): { prompt: string; ids: number[] } {
  const { continueFinalMessage, ...rest } = opts;
  let prompt = template.render(messages, {
    bosToken: tokenizer.bosToken,
    eosToken: tokenizer.eosToken,
    ...rest,
    addGenerationPrompt: continueFinalMessage ? false : rest.addGenerationPrompt,
  });
  if (continueFinalMessage) prompt = openFinalMessage(prompt, messages);
  const hasBos = tokenizer.bosToken !== undefined && prompt.startsWith(tokenizer.bosToken);
  return { prompt, ids: tokenizer.encode(prompt, { addSpecialTokens: !hasBos }) };
}

/** The prompt cut right after the final assistant message's text (dropping its end of turn). */
function openFinalMessage(prompt: string, messages: ChatMessage[]): string {
  const last = messages[messages.length - 1];
  if (last?.role !== 'assistant') throw new ChatTemplateError('continue_final_message needs the last message to be an assistant message');
  const c = last.content;
  const text = typeof c === 'string' ? c : Array.isArray(c) ? c.map((p) => (p?.type === 'text' ? p.text ?? '' : '')).join('') : '';
  // Templates may trim the content, so look for it without trailing blanks.
  const want = text.trimEnd();
  const at = want === '' ? -1 : prompt.lastIndexOf(want);
  if (at < 0) throw new ChatTemplateError('continue_final_message: the final assistant message is empty or not found in the rendered prompt');
  return prompt.slice(0, at + want.length);
}

// Checks roles and shapes, and brings messages to the form templates expect: content never
// null, OpenAI `image_url` parts typed `image` (what HF templates test for), tool-call
// arguments parsed from their JSON string, `developer` treated as `system`.
function normaliseMessages(messages: ChatMessage[]): ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new ChatTemplateError('messages must be a non-empty array');
  }
  return messages.map((m, i) => {
    const where = `messages[${i}]`;
    if (typeof m !== 'object' || m === null) throw new ChatTemplateError(`${where} must be an object`);
    if (!ROLES.has(m.role)) {
      throw new ChatTemplateError(
        `${where}.role must be one of ${[...ROLES].join(', ')}; got ${JSON.stringify(m.role)}`,
      );
    }
    const out: ChatMessage = { ...m, role: m.role === 'developer' ? 'system' : m.role };
    out.content = normaliseContent(m.content, where);
    if (m.tool_calls !== undefined) {
      if (!Array.isArray(m.tool_calls)) throw new ChatTemplateError(`${where}.tool_calls must be an array`);
      out.tool_calls = m.tool_calls.map((c, j) => normaliseToolCall(c, `${where}.tool_calls[${j}]`));
    }
    return out;
  });
}

function normaliseContent(content: ChatMessage['content'], where: string): string | ContentPart[] {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw new ChatTemplateError(`${where}.content must be a string or an array of parts`);
  return content.map((p, k) => {
    const at = `${where}.content[${k}]`;
    if (p?.type === 'text') {
      if (typeof p.text !== 'string') throw new ChatTemplateError(`${at}.text must be a string`);
      return p;
    }
    if (p?.type === 'image_url' || p?.type === 'image') return { ...p, type: 'image' };
    throw new ChatTemplateError(`${at}.type must be "text" or "image_url"; got ${JSON.stringify(p?.type)}`);
  });
}

function normaliseToolCall(c: ToolCall, where: string): ToolCall {
  if (typeof c?.function?.name !== 'string') throw new ChatTemplateError(`${where}.function.name must be a string`);
  let args = c.function.arguments ?? {};
  if (typeof args === 'string') {
    try {
      args = JSON.parse(args) as Record<string, unknown>;
    } catch {
      // Not JSON: keep the model's text as it was.
    }
  }
  return { ...c, function: { ...c.function, arguments: args } };
}
