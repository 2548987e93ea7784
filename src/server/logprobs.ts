// Logprobs in the three shapes clients expect: OpenAI chat ({content: [{token, logprob, bytes,
// top_logprobs}]}), OpenAI completions ({tokens, token_logprobs, top_logprobs, text_offset},
// what lm_eval reads), and SGLang's [logprob, token_id, text] triples.

import type { TokenLogprob } from "../engine/types.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";

/** Per-token strings (special tokens included), cached: the same ids recur a lot. */
export class TokenTexts {
  private readonly cache = new Map<number, string>();
  constructor(private readonly tokenizer: Tokenizer) {}
  get(id: number): string {
    let s = this.cache.get(id);
    if (s === undefined) {
      s = this.tokenizer.decode([id]);
      if (this.cache.size < 100_000) this.cache.set(id, s);
    }
    return s;
  }
}

// -Infinity is not JSON; clients get a very negative finite number, as vLLM sends.
function finite(lp: number): number {
  return Number.isFinite(lp) ? lp : -9999.0;
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export function chatLogprobs(texts: TokenTexts, lps: readonly TokenLogprob[], topN: number): { content: ChatTokenLogprob[] } {
  const entry = (id: number, lp: number) => {
    const token = texts.get(id);
    return { token, logprob: finite(lp), bytes: [...Buffer.from(token, "utf8")] };
  };
  return {
    content: lps.map((t) => ({
      ...entry(t.id, t.logprob),
      top_logprobs: (t.top ?? []).slice(0, topN).map(([id, lp]) => entry(id, lp)),
    })),
  };
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/**
 * OpenAI completions logprobs. `entries` are prompt tokens (when echoed; null logprob where
 * there is none, e.g. position 0) followed by generated tokens. `offset` is where the first
 * token starts in the returned text; each next offset adds the token's text length.
 */
export function completionLogprobs(
  texts: TokenTexts,
  entries: readonly { id: number; lp: TokenLogprob | null }[],
  topN: number,
  offset: number,
): { logprobs: CompletionLogprobs; offset: number } {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  for (const { id, lp } of entries) {
    const token = texts.get(id);
    out.tokens.push(token);
    out.token_logprobs.push(lp ? finite(lp.logprob) : null);
    if (lp && topN > 0) {
      const top: Record<string, number> = {};
      for (const [tid, tlp] of (lp.top ?? []).slice(0, topN)) top[texts.get(tid)] ??= finite(tlp);
      out.top_logprobs.push(top);
    } else {
      out.top_logprobs.push(null);
    }
    out.text_offset.push(offset);
    offset += token.length;
  }
  return { logprobs: out, offset };
}

/** Prompt tokens from position `start` paired with their logprobs (null where none). */
export function promptEntries(ids: readonly number[], lps: readonly (TokenLogprob | null)[], start = 0) {
  return ids.slice(start).map((id, i) => ({ id, lp: lps[start + i] ?? null }));
}

export type Triple = [number | null, number, string | null];

export function nativeTriples(texts: TokenTexts, entries: readonly { id: number; lp: TokenLogprob | null }[], withText: boolean): Triple[] {
  return entries.map(({ id, lp }) => [lp ? finite(lp.logprob) : null, id, withText ? texts.get(id) : null]);
}

export function nativeTopTriples(
  texts: TokenTexts,
  entries: readonly { id: number; lp: TokenLogprob | null }[],
  topN: number,
  withText: boolean,
): (Triple[] | null)[] {
  return entries.map(({ lp }) =>
    lp ? (lp.top ?? []).slice(0, topN).map(([id, v]): Triple => [finite(v), id, withText ? texts.get(id) : null]) : null,
  );
}
