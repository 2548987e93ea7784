// Runs engine requests for one HTTP request (n choices × prompts) and turns their outputs into
// text updates: incremental detokenization, stop strings (matched here, then the engine
// request is aborted), the trimming of a matched stop token, and the bookkeeping a response
// needs (ids, logprobs, cached tokens, finish reason, timings).

import { randomUUID } from "node:crypto";
import { badRequest } from "./errors.js";
import { EngineBusyError, type EngineOutput, type EngineRequest, type TokenLogprob } from "../engine/types.js";
import type { SamplingParams } from "../engine/sampling.js";
import type { ServerContext } from "./context.js";
import { unavailable } from "./errors.js";
import { TextAssembler } from "./text.js";

/** One engine request as the server wants it run. */
export interface GenSpec {
  inputIds: number[];
  sampling: SamplingParams;
  maxNewTokens: number;
  minNewTokens: number;
  /** EOS ids (unless ignore_eos) plus the request's stop_token_ids. */
  stopTokenIds: number[];
  stopStrings: string[];
  skipSpecialTokens: boolean;
  /** Keep the matched stop string / stop token in the text (SGLang's no_stop_trim). */
  noStopTrim: boolean;
  returnLogprob: boolean;
  /** First prompt position whose logprob is wanted; -1 = none. */
  logprobStartLen: number;
  topLogprobsNum: number;
  /** The client's request id (SGLang's `rid`); a fresh one when absent. */
  rid?: string;
}

export interface Finish {
  reason: "stop" | "length" | "abort";
  /** The stop string or stop token id that ended generation; null for EOS-less ends. */
  matchedStop: string | number | null;
  message?: string;
  /** The engine refused for capacity (503), not for the request itself. */
  busy?: boolean;
  /** Ended by /abort_request: the choice ends normally with finish_reason abort (not an error). */
  requested?: boolean;
}

/** What one engine output added to a choice. */
export interface GenUpdate {
  index: number;
  delta: string;
  /** New completion tokens (a trimmed stop token still counts, as in SGLang). */
  ids: number[];
  /** Logprobs of `ids`, when asked. */
  logprobs: TokenLogprob[];
  /** Set on the first update when prompt logprobs were asked. */
  promptLogprobs?: (TokenLogprob | null)[];
  /** Set on the first update: prompt tokens served from the prefix cache. */
  cachedTokens?: number;
  finish?: Finish;
}

export interface GenResult {
  index: number;
  rid: string;
  promptIds: number[];
  text: string;
  outputIds: number[];
  logprobs: TokenLogprob[];
  promptLogprobs: (TokenLogprob | null)[];
  cachedTokens: number;
  finish: Finish;
  /** Times in ms (performance.now()). */
  startedAt: number;
  firstTokenAt: number | undefined;
  finishedAt: number;
}

class Generation {
  readonly rid: string;
  private readonly asm: TextAssembler;
  private text = "";
  private readonly outputIds: number[] = [];
  private readonly logprobs: TokenLogprob[] = [];
  private promptLogprobs: (TokenLogprob | null)[] = [];
  private cachedTokens = 0;
  private readonly startedAt = performance.now();
  private firstTokenAt: number | undefined;
  private lastTokenAt: number | undefined;
  private finished = false;
  private updated = false;
  readonly done: Promise<GenResult>;
  private resolve!: (r: GenResult) => void;

  constructor(
    private readonly ctx: ServerContext,
    readonly index: number,
    private readonly spec: GenSpec,
    private readonly onUpdate: (u: GenUpdate) => void,
  ) {
    this.asm = new TextAssembler(ctx.tokenizer, spec.stopStrings, {
      skipSpecialTokens: spec.skipSpecialTokens,
      noStopTrim: spec.noStopTrim,
    });
    this.rid = spec.rid ?? randomUUID().replace(/-/g, "");
    this.done = new Promise((r) => (this.resolve = r));
  }

  /** Queues the engine request; throws EngineBusyError when the engine's queue is full. */
  start(): void {
    const s = this.spec;
    // max_tokens 0 without prompt logprobs needs no model work at all.
    if (s.maxNewTokens === 0 && s.logprobStartLen < 0) {
      queueMicrotask(() => this.onOutput({ rid: this.rid, tokens: [], finish: { reason: "length" } }));
      return;
    }
    const req: EngineRequest = {
      rid: this.rid,
      inputIds: s.inputIds,
      sampling: s.sampling,
      maxNewTokens: s.maxNewTokens,
      minNewTokens: s.minNewTokens,
      stopTokenIds: s.stopTokenIds,
      returnLogprob: s.returnLogprob,
      logprobStartLen: s.logprobStartLen,
      topLogprobsNum: s.topLogprobsNum,
    };
    this.ctx.engine.submit(req, (o) => this.onOutput(o));
  }

  /** Ends the choice now (client gone, shutdown, /abort_request); the engine frees its KV. */
  abort(message: string, busy = false, requested = false): void {
    if (this.finished) return;
    this.ctx.engine.abort(this.rid);
    this.end({ reason: "abort", matchedStop: null, message, busy, requested }, "", [], []);
  }

  private onOutput(o: EngineOutput): void {
    // Outputs that arrive after we ended the choice (stop string, abort) are dropped.
    if (this.finished) return;
    const now = performance.now();
    if (o.cachedTokens !== undefined) this.cachedTokens = o.cachedTokens;
    if (o.promptLogprobs) this.promptLogprobs = o.promptLogprobs;
    const ids: number[] = [];
    const logprobs: TokenLogprob[] = [];
    let delta = "";
    let matched: string | undefined;
    // A stop token (EOS or stop_token_ids) ends the output and is not part of the text.
    const trimLast = o.finish?.reason === "stop" && typeof o.finish.matchedStop === "number" && !this.spec.noStopTrim;
    // Never more than max_new_tokens, even if the engine sends one more (max_tokens 0 with
    // prompt logprobs still runs a prefill, which samples a token).
    const room = this.spec.maxNewTokens - this.outputIds.length;
    const capped = o.tokens.length > room;
    const tokens = capped ? o.tokens.slice(0, Math.max(0, room)) : o.tokens;
    for (let i = 0; i < tokens.length && matched === undefined; i++) {
      ids.push(tokens[i]);
      if (o.logprobs?.[i]) logprobs.push(o.logprobs[i]);
      if (trimLast && !capped && i === tokens.length - 1) break;
      const step = this.asm.push(tokens[i]);
      delta += step.delta;
      matched = step.matched;
    }
    if (ids.length > 0) {
      this.firstTokenAt ??= now;
      if (this.lastTokenAt !== undefined) this.ctx.metrics?.observeInterToken((now - this.lastTokenAt) / 1000 / ids.length, ids.length);
      this.lastTokenAt = now;
    }
    let finish: Finish | undefined;
    // The choice ends when the engine says so or when max_new_tokens is reached.
    const ends = o.finish ?? (capped || ids.length === room ? { reason: "length" as const } : undefined);
    if (matched === undefined && ends) {
      const tail = this.asm.finish();
      delta += tail.delta;
      matched = tail.matched;
    }
    if (matched !== undefined) {
      finish = { reason: "stop", matchedStop: matched };
    } else if (capped) {
      finish = { reason: "length", matchedStop: null };
    } else if (ends) {
      finish = { reason: ends.reason, matchedStop: o.finish?.matchedStop ?? null, message: o.finish?.message, busy: o.finish?.busy };
    }
    if (finish && !o.finish) this.ctx.engine.abort(this.rid);
    const update: GenUpdate = { index: this.index, delta, ids, logprobs };
    if (!this.updated) {
      update.cachedTokens = this.cachedTokens;
      if (this.spec.logprobStartLen >= 0) update.promptLogprobs = this.promptLogprobs;
    }
    if (finish) this.end(finish, delta, ids, logprobs, update);
    else this.record(update);
  }

  private record(u: GenUpdate): void {
    this.updated = true;
    this.text += u.delta;
    this.outputIds.push(...u.ids);
    this.logprobs.push(...u.logprobs);
    this.onUpdate(u);
  }

  private end(finish: Finish, delta: string, ids: number[], logprobs: TokenLogprob[], update?: GenUpdate): void {
    this.finished = true;
    this.record({ ...(update ?? { index: this.index, delta, ids, logprobs }), finish });
    this.resolve({
      index: this.index,
      rid: this.rid,
      promptIds: this.spec.inputIds,
      text: this.text,
      outputIds: this.outputIds,
      logprobs: this.logprobs,
      promptLogprobs: this.promptLogprobs,
      cachedTokens: this.cachedTokens,
      finish,
      startedAt: this.startedAt,
      firstTokenAt: this.firstTokenAt,
      finishedAt: performance.now(),
    });
  }
}

/** The abort message of a client that went away: nothing is sent for it. */
export const CLIENT_GONE = "client disconnected";

export interface GenGroup {
  /** The engine request id of each choice. */
  rids: string[];
  /** All choices' results in index order, once every one has finished. */
  done: Promise<GenResult[]>;
  /** Ends every unfinished choice (e.g. the client disconnected). */
  /** `busy`: ended for capacity (shutdown), which clients see as 503. */
  abort(message: string, busy?: boolean): void;
}

/**
 * Starts one engine request per spec (spec i is choice index i). If the engine's queue is full
 * the ones already started are aborted and a 503 is thrown: a request runs whole or not at all.
 */
export function startGenerations(ctx: ServerContext, specs: GenSpec[], onUpdate: (u: GenUpdate) => void = () => {}): GenGroup {
  const gens = specs.map((s, i) => new Generation(ctx, i, s, onUpdate));
  const rids = ctx.state.byRid;
  for (const [i, g] of gens.entries()) {
    if (rids.has(g.rid) || gens.findIndex((h) => h.rid === g.rid) !== i) throw badRequest(`request id '${g.rid}' is already running`, "rid");
  }
  for (const g of gens) {
    rids.set(g.rid, g);
    void g.done.finally(() => rids.get(g.rid) === g && rids.delete(g.rid));
  }
  for (let i = 0; i < gens.length; i++) {
    try {
      gens[i].start();
    } catch (e) {
      for (let j = 0; j < i; j++) gens[j].abort("not admitted");
      for (const g of gens.slice(i)) if (rids.get(g.rid) === g) rids.delete(g.rid); // never started: no done to clear them
      if (e instanceof EngineBusyError) throw unavailable(`the server is busy: ${e.message}; retry later`);
      throw e;
    }
  }
  const done = Promise.all(gens.map((g) => g.done));
  ctx.metrics?.trackRequests(done);
  const group: GenGroup = { rids: gens.map((g) => g.rid), done, abort: (message, busy) => gens.forEach((g) => g.abort(message, busy)) };
  return group;
}
