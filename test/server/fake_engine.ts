// A stand-in engine for server tests: deterministic tokens from a script (or a hash of the
// sequence), one token per tick on a timer like the real worker's messages, with a bounded
// queue, aborts, a prefix "cache", and fake logprobs. It lets the HTTP layer be tested without
// the model.

import { EngineBusyError, type Engine, type EngineOutput, type EngineRequest, type EngineStats, type TokenLogprob } from "../../src/engine/types.js";

export interface FakeOptions {
  vocabSize: number;
  /** Requests held at once (running + waiting); more → EngineBusyError. */
  maxQueued?: number;
  /** ms between steps. */
  stepMs?: number;
  /** Output ids for a prompt; default: a hash of the sequence so far. */
  script?: (inputIds: readonly number[]) => number[] | undefined;
  /** Tokens per output message (the real engine may batch several). */
  tokensPerOutput?: number;
}

interface Live {
  req: EngineRequest;
  out: number[];
  cb: (o: EngineOutput) => void;
  timer?: NodeJS.Timeout;
  first: boolean;
  cached: number;
}

export function fakeLogprob(id: number, pos: number): TokenLogprob {
  const lp = -((id * 7 + pos) % 13) / 10 - 0.01;
  return { id, logprob: lp };
}

export class FakeEngine implements Engine {
  readonly submitted: EngineRequest[] = [];
  readonly aborted: string[] = [];
  private readonly live = new Map<string, Live>();
  private readonly seen: number[][] = [];
  private total = { prompt: 0, cached: 0, gen: 0 };

  constructor(private readonly o: FakeOptions) {}

  get running(): number {
    return this.live.size;
  }

  submit(req: EngineRequest, cb: (o: EngineOutput) => void): void {
    if (this.live.size >= (this.o.maxQueued ?? 1000)) throw new EngineBusyError(`queue full (${this.live.size})`);
    this.submitted.push(req);
    let cached = 0;
    for (const s of this.seen) {
      let k = 0;
      while (k < s.length && k < req.inputIds.length && s[k] === req.inputIds[k]) k++;
      cached = Math.max(cached, Math.min(k, req.inputIds.length - 1));
    }
    this.seen.push(req.inputIds.slice());
    this.total.prompt += req.inputIds.length;
    this.total.cached += cached;
    const l: Live = { req, out: [], cb, first: true, cached };
    this.live.set(req.rid, l);
    this.schedule(l);
  }

  private schedule(l: Live): void {
    l.timer = setTimeout(() => this.step(l), this.o.stepMs ?? 1);
  }

  private nextToken(l: Live): number | undefined {
    const script = this.o.script?.(l.req.inputIds);
    if (script) return script[l.out.length];
    const seq = [...l.req.inputIds, ...l.out];
    let h = 17;
    for (const id of seq.slice(-4)) h = (h * 31 + id) % 1_000_003;
    return (h + seq.length) % this.o.vocabSize;
  }

  private step(l: Live): void {
    if (!this.live.has(l.req.rid)) return;
    const r = l.req;
    const o: EngineOutput = { rid: r.rid, tokens: [] };
    if (l.first) {
      o.cachedTokens = l.cached;
      if (r.returnLogprob && r.logprobStartLen >= 0) {
        o.promptLogprobs = r.inputIds.map((id, i) =>
          i === 0 || i < r.logprobStartLen ? null : withTop(fakeLogprob(id, i), r.topLogprobsNum, this.o.vocabSize),
        );
      }
      l.first = false;
    }
    const per = this.o.tokensPerOutput ?? 1;
    for (let k = 0; k < per && !o.finish; k++) {
      if (l.out.length >= r.maxNewTokens) {
        o.finish = { reason: "length" };
        break;
      }
      const t = this.nextToken(l);
      if (t === undefined) {
        o.finish = { reason: "stop" };
        break;
      }
      l.out.push(t);
      o.tokens.push(t);
      this.total.gen++;
      if (r.returnLogprob) (o.logprobs ??= []).push(withTop(fakeLogprob(t, r.inputIds.length + l.out.length - 1), r.topLogprobsNum, this.o.vocabSize));
      if (r.stopTokenIds.includes(t) && l.out.length >= (r.minNewTokens ?? 0)) o.finish = { reason: "stop", matchedStop: t };
      else if (l.out.length >= r.maxNewTokens) o.finish = { reason: "length" };
    }
    if (o.finish) this.live.delete(r.rid);
    else this.schedule(l);
    l.cb(o);
  }

  abort(rid: string): void {
    const l = this.live.get(rid);
    this.aborted.push(rid);
    if (!l) return;
    clearTimeout(l.timer);
    this.live.delete(rid);
    setImmediate(() => l.cb({ rid, tokens: [], finish: { reason: "abort", message: "aborted" } }));
  }

  async flushCache(): Promise<boolean> {
    if (this.live.size > 0) return false;
    this.seen.length = 0;
    return true;
  }

  async stats(): Promise<EngineStats> {
    return {
      running: this.live.size,
      waiting: 0,
      fullPoolSize: 1000,
      fullPoolUsed: 10 * this.live.size,
      swaPoolSize: 800,
      swaPoolUsed: 8 * this.live.size,
      forwardTokens: this.total.prompt + this.total.gen,
      cachedTokens: this.total.cached,
      promptTokens: this.total.prompt,
      generatedTokens: this.total.gen,
      preemptions: 0,
    };
  }

  async shutdown(): Promise<void> {
    for (const rid of [...this.live.keys()]) this.abort(rid);
  }
}

function withTop(t: TokenLogprob, n: number, vocab: number): TokenLogprob {
  if (n <= 0) return t;
  const top: [number, number][] = [[t.id, t.logprob]];
  for (let k = 1; k < n; k++) top.push([(t.id + k) % vocab, t.logprob - k]);
  return { ...t, top };
}
