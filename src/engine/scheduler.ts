// The scheduler: continuous batching over one model. Each step it admits waiting requests
// (prefix-cache lookup, chunked prefill under a token budget), adds one decode token for every
// running request, runs a single forward over the mixed batch, samples, and retires finished
// requests into the radix cache. Runs synchronously inside the engine worker.
//
// Where a request's tokens go: ids → match() in the radix cache (reused KV) → slots allocated
// from the pools for the rest → StepBatch → model.forward → logits → sampler → outputs.

import { type PendingPicks, SAMPLE_MAX_TOP, type SampleRow, type SeqSpan, type StepBatch } from "../runtime/backend.js";
import type { ForwardModel, ModelSample, PendingModelSample } from "../model/llama4.js";
import { ramp } from "../util/int_arrays.js";
import type { RadixCache, RadixNode } from "../cache/radix_cache.js";
import type { TokenPool } from "../cache/token_pool.js";
import { type LogitEdits, Rng, applyEdits, isGreedy, logSoftmax, logitEdits, sampleToken, topEntries } from "./sampling.js";
import { EngineBusyError, type EngineOutput, type EngineRequest, type EngineStats, type TokenLogprob } from "./types.js";

export interface SchedulerOptions {
  contextLength: number;
  maxRunningRequests: number;
  chunkedPrefillSize: number;
  schedulePolicy: "fcfs" | "lpm";
  maxQueuedRequests: number;
  /** Chunk size of local layers when they use the SWA pool; 0 = no hybrid cache. */
  swaChunkSize: number;
  /**
   * The overlap schedule (SGLang's default; off with --disable-overlap-schedule): decode steps
   * (greedy, or drawn without logit edits) are queued one ahead, the next step's input ids taken
   * from this one's picks on the device, so the host's bookkeeping runs while the device computes.
   */
  overlap?: boolean;
}

/** A growable slot list: the pool slot of each position of a sequence. */
class SlotList {
  data = new Int32Array(64).fill(-1);
  ensure(n: number): void {
    if (n <= this.data.length) return;
    const next = new Int32Array(Math.max(n, this.data.length * 2)).fill(-1);
    next.set(this.data);
    this.data = next;
  }
  set(at: number, slots: Int32Array): void {
    this.ensure(at + slots.length);
    this.data.set(slots, at);
  }
}

interface Req {
  r: EngineRequest;
  ids: number[];
  promptLen: number;
  full: SlotList;
  swa: SlotList;
  /** Positions whose KV is computed. */
  kvLen: number;
  /** Positions that have pool slots (≥ kvLen: a step allocates before it computes). */
  slotLen: number;
  /** Positions [0, cachedLen) belong to the radix tree (locked), not to this request. */
  cachedLen: number;
  /** Positions below this had their own SWA slots freed already. */
  swaFreedUpTo: number;
  /** The backends' slot-table row while running (SeqSpan.row), else -1. */
  row: number;
  /** Positions [0, synced) of the row hold this request's slots; a step carries the rest. */
  synced: number;
  node: RadixNode | null;
  rng: Rng;
  output: number[];
  promptLogprobs: (TokenLogprob | null)[] | null;
  sentFirst: boolean;
  aborted: boolean;
  /** editsFor's answer for the output length `at`. */
  edits?: { at: number; edits: LogitEdits | null };
}

/**
 * A queued decode step whose tokens are not accepted yet (the overlap schedule): row i is
 * reqs[i]'s; greedy picks, or `drawn` (queueSample: the ids with their logprobs).
 */
type InFlight = { reqs: Req[] } & ({ drawn: false; picks: PendingPicks } | { drawn: true; picks: PendingModelSample });

/** True when this request's next token is the plain argmax: greedy, no penalties, no logprobs. */
function onlyNeedsArgmax(req: Req): boolean {
  return !req.r.returnLogprob && isGreedy(req.r.sampling) && editsFor(req) === null;
}

/** Top logprobs within what the device sampler returns: its next token can be drawn there (forwardSample). */
function canSampleOnDevice(req: Req): boolean {
  return !req.r.returnLogprob || req.r.topLogprobsNum <= SAMPLE_MAX_TOP;
}

/**
 * A decode row that can be queued before the tokens before it are known (queueSample): drawn on
 * the device, with no penalties or min-new-tokens mask (they depend on those tokens).
 */
function canQueueDraw(req: Req): boolean {
  return canSampleOnDevice(req) && editsFor(req) === null;
}

/**
 * Penalties and the min-new-tokens stop-token mask of a request's next token, as logit edits.
 * They change only when a token is accepted, so they are made once per output length (a step
 * asks twice: onlyNeedsArgmax, then the sampling row).
 */
function editsFor(req: Req): LogitEdits | null {
  if (req.edits?.at !== req.output.length) {
    const mask = req.output.length < (req.r.minNewTokens ?? 0) ? req.r.stopTokenIds : [];
    req.edits = { at: req.output.length, edits: logitEdits(req.r.sampling, req.r.inputIds, req.output, mask) };
  }
  return req.edits.edits;
}

export class Scheduler {
  private waiting: Req[] = [];
  private running: Req[] = [];
  /** Slot-table rows not held by a running request (the model's tables have maxRunningRequests rows). */
  private readonly freeRows: number[];
  private readonly byRid = new Map<string, Req>();
  /** The overlap schedule's queued step (at most one). */
  private inflight: InFlight | null = null;
  private counters = { forwardTokens: 0, cachedTokens: 0, promptTokens: 0, generatedTokens: 0, preemptions: 0 };

  constructor(
    private readonly model: ForwardModel,
    private readonly cache: RadixCache,
    private readonly fullPool: TokenPool,
    private readonly swaPool: TokenPool | null,
    private readonly opts: SchedulerOptions,
    private readonly emit: (o: EngineOutput) => void,
  ) {
    this.freeRows = Array.from({ length: opts.maxRunningRequests }, (_, i) => opts.maxRunningRequests - 1 - i);
  }

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0 && this.inflight === null;
  }

  add(r: EngineRequest): void {
    if (this.waiting.length >= this.opts.maxQueuedRequests) {
      throw new EngineBusyError(`the waiting queue is full (${this.opts.maxQueuedRequests} requests)`);
    }
    if (this.byRid.has(r.rid)) throw new Error(`duplicate request id ${r.rid}`);
    if (r.inputIds.length === 0) throw new Error("empty prompt");
    if (r.inputIds.length >= this.opts.contextLength) {
      throw new Error(`prompt of ${r.inputIds.length} tokens does not fit the context length ${this.opts.contextLength}`);
    }
    const req: Req = {
      r,
      ids: [...r.inputIds],
      promptLen: r.inputIds.length,
      full: new SlotList(),
      swa: new SlotList(),
      kvLen: 0,
      slotLen: 0,
      cachedLen: 0,
      swaFreedUpTo: 0,
      row: -1,
      synced: 0,
      node: null,
      rng: new Rng(r.sampling.seed),
      output: [],
      promptLogprobs: null,
      sentFirst: false,
      aborted: false,
    };
    this.byRid.set(r.rid, req);
    this.waiting.push(req);
    this.counters.promptTokens += req.promptLen;
  }

  abort(rid: string): void {
    const req = this.byRid.get(rid);
    if (!req) return;
    req.aborted = true;
    const wi = this.waiting.indexOf(req);
    if (wi >= 0) {
      this.waiting.splice(wi, 1);
      this.finish(req, { reason: "abort" });
    }
    // Running requests are retired at the end of the current step.
  }

  /**
   * A step failed part-way (a kernel or model error): the running requests' KV may be half
   * written, so they end with `message` and their KV goes back to the pools; waiting requests
   * are untouched and the engine keeps serving.
   */
  abortRunning(message: string): void {
    this.inflight = null; // its picks may never come; its requests end here
    for (const req of [...this.running]) {
      this.freeOwned(req);
      this.leaveRunning(req);
      this.finish(req, { reason: "abort", message });
    }
  }

  flushCache(): boolean {
    if (!this.idle) return false;
    this.cache.reset();
    return true;
  }

  stats(): EngineStats {
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      fullPoolSize: this.fullPool.size,
      fullPoolUsed: this.fullPool.used,
      swaPoolSize: this.swaPool?.size ?? 0,
      swaPoolUsed: this.swaPool?.used ?? 0,
      ...this.counters,
    };
  }

  /** One scheduling step and forward pass. Returns false when there was nothing to do. */
  step(): boolean {
    if (this.inflight) {
      if (this.chainNext()) return true;
      const f = this.inflight;
      this.inflight = null;
      this.acceptPicks(f);
    }
    for (const req of [...this.running]) if (req.aborted) this.retire(req, { reason: "abort" });
    const work: { req: Req; n: number }[] = [];
    // Decode: one token for every request whose prompt is done.
    for (const req of [...this.running]) {
      if (req.kvLen < req.ids.length - 1) continue; // still prefilling
      if (!this.allocate(req, 1)) {
        this.preempt(req);
        continue;
      }
      work.push({ req, n: 1 });
    }
    // Prefill: continue partial prompts, then admit new ones, within the token budget.
    let budget = this.opts.chunkedPrefillSize;
    for (const req of [...this.running]) {
      if (req.kvLen >= req.ids.length - 1 || budget <= 0) continue;
      const n = Math.min(req.ids.length - req.kvLen, budget);
      if (!this.allocate(req, n)) {
        // A half-prefilled prompt that no longer fits would hold its KV forever: requeue it.
        this.preempt(req);
        continue;
      }
      work.push({ req, n });
      budget -= n;
    }
    if (this.opts.schedulePolicy === "lpm" && this.waiting.length > 1) this.sortLongestPrefix();
    while (budget > 0 && this.waiting.length > 0 && this.running.length < this.opts.maxRunningRequests) {
      const req = this.waiting[0];
      this.attachPrefix(req);
      const n = Math.min(req.ids.length - req.kvLen, budget);
      if (!this.allocate(req, n)) {
        this.detachPrefix(req);
        if (this.running.length === 0) {
          this.waiting.shift();
          this.finish(req, { reason: "abort", message: "not enough KV cache for this request" });
          continue;
        }
        break;
      }
      this.waiting.shift();
      this.enterRunning(req);
      work.push({ req, n });
      budget -= n;
    }
    if (work.length === 0) return false;
    this.forward(work);
    for (const req of [...this.running]) if (req.aborted) this.retire(req, { reason: "abort" });
    this.releaseOldSwa();
    return true;
  }

  private sortLongestPrefix(): void {
    const score = new Map<Req, number>();
    for (const w of this.waiting) score.set(w, this.cache.match(w.ids).length);
    this.waiting.sort((a, b) => score.get(b)! - score.get(a)!);
  }

  /** Reuses the longest cached prefix. Prompt logprobs need logits from logprobStartLen-1 on, so the match stops there. */
  private attachPrefix(req: Req): void {
    if (req.node || req.kvLen > 0) return;
    const m = this.cache.match(req.ids);
    let len = m.length;
    if (req.r.returnLogprob && req.r.logprobStartLen >= 0) len = Math.min(len, Math.max(0, req.r.logprobStartLen - 1));
    if (len < m.length && this.opts.swaChunkSize > 0) len -= len % this.opts.swaChunkSize; // keep SWA KV valid
    if (len === 0) return;
    this.cache.lock(m.node);
    req.node = m.node;
    req.full.set(0, m.fullSlots.subarray(0, len));
    req.swa.set(0, m.swaSlots.subarray(0, len));
    req.kvLen = req.slotLen = req.cachedLen = req.swaFreedUpTo = len;
    this.counters.cachedTokens += len;
  }

  private detachPrefix(req: Req): void {
    if (req.node) this.cache.unlock(req.node);
    req.node = null;
    this.counters.cachedTokens -= req.cachedLen;
    req.kvLen = req.slotLen = req.cachedLen = req.swaFreedUpTo = 0;
  }

  /** Slots for the next n positions in both pools, evicting cached prefixes if needed. */
  private allocate(req: Req, n: number): boolean {
    if (req.kvLen + n > this.opts.contextLength) return false;
    if (this.fullPool.available < n || (this.swaPool && this.swaPool.available < n)) {
      this.cache.evict(n, this.swaPool ? n : 0);
    }
    const full = this.fullPool.alloc(n);
    if (!full) return false;
    let swa: Int32Array | null = null;
    if (this.swaPool) {
      swa = this.swaPool.alloc(n);
      if (!swa) {
        this.fullPool.free(full);
        return false;
      }
    }
    req.full.set(req.kvLen, full);
    req.swa.set(req.kvLen, swa ?? full);
    req.slotLen = req.kvLen + n;
    return true;
  }

  /** Out of KV: give this request's slots back and queue it again from the start (recompute). */
  private preempt(req: Req): void {
    this.counters.preemptions++;
    this.freeOwned(req);
    this.leaveRunning(req);
    req.kvLen = req.slotLen = req.cachedLen = req.swaFreedUpTo = 0;
    req.full = new SlotList();
    req.swa = new SlotList();
    this.waiting.unshift(req);
  }

  /**
   * The overlap schedule's steady state: queues the in-flight step's requests' next decode step
   * before their tokens are known (its input ids are the in-flight picks, on the device), then
   * accepts those tokens while it runs. False, with nothing done, when the next step must see them
   * first: requests waiting to be admitted, an abort, a row with logit edits (penalties, the
   * min-new-tokens mask), or not enough free slots without eviction.
   */
  private chainNext(): boolean {
    const prev = this.inflight!;
    const reqs = prev.reqs;
    if (this.waiting.length > 0 || reqs.length !== this.running.length) return false;
    for (const req of reqs) {
      if (req.row < 0 || req.aborted || req.kvLen + 1 > this.opts.contextLength) return false;
    }
    // Greedy rows only: picks (under tensor parallelism merged from the ranks' shards); else draws.
    const greedy = reqs.every(onlyNeedsArgmax);
    if (greedy ? !this.model.queueArgmax : !this.model.queueSample || !reqs.every(canQueueDraw)) return false;
    if (this.fullPool.available < reqs.length || (this.swaPool && this.swaPool.available < reqs.length)) return false;
    const n = reqs.length;
    const seqs: SeqSpan[] = [];
    const positions = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const req = reqs[i];
      if (!this.allocate(req, 1)) throw new Error("scheduler: a slot counted free could not be allocated");
      positions[i] = req.kvLen;
      seqs.push(this.span(req, i, req.kvLen, 1));
    }
    const batch: StepBatch = { ids: new Int32Array(n), positions, seqs, logitRows: ramp(0, n).slice() };
    this.inflight = greedy ? { reqs, drawn: false, picks: this.model.queueArgmax!(batch, prev.picks) } : this.queueDraws(reqs, batch, prev.picks);
    for (const req of reqs) req.kvLen++;
    this.counters.forwardTokens += n;
    this.acceptPicks(prev);
    this.releaseOldSwa();
    return true;
  }

  /** The overlap schedule's first queued step: its rows' positions count as computed now; their tokens are accepted with the next step. */
  private queueAhead(work: { req: Req }[], f: InFlight): void {
    for (const { req } of work) req.kvLen++;
    this.inflight = f;
  }

  /** A sampled decode step of `reqs` (row i is reqs[i]'s next token) queued with their draws (canQueueDraw). */
  private queueDraws(reqs: Req[], batch: StepBatch, after: PendingPicks | null): InFlight {
    return { reqs, drawn: true, picks: this.model.queueSample!(batch, reqs.map((req) => this.sampleRow(req, true)), after) };
  }

  /** An in-flight step's tokens, for the requests still running (one that finished or was aborted meanwhile drops its pick). */
  private acceptPicks(f: InFlight): void {
    const drawn = f.drawn ? f.picks.sampled() : undefined;
    const ids = drawn?.ids ?? f.picks.wait();
    f.reqs.forEach((req, i) => {
      if (req.row < 0 || req.aborted) return;
      this.accept(req, ids[i], null, drawn && this.drawnLogprob(drawn, req, i));
    });
  }

  /** Row r of a device draw as the token's logprob entry (with its top logprobs where asked). */
  private drawnLogprob(drawn: ModelSample, req: Req, r: number): TokenLogprob {
    const lp: TokenLogprob = { id: drawn.ids[r], logprob: drawn.logprobs[r] };
    if (req.r.topLogprobsNum > 0 && drawn.top) lp.top = drawn.top[r];
    return lp;
  }

  /** The sampling row of `req`'s next token; `takes`: this row yields a token (its draw and edits then count). */
  private sampleRow(req: Req, takes: boolean): SampleRow {
    const p = req.r.sampling;
    return {
      temperature: p.temperature,
      topP: p.topP,
      topK: p.topK,
      minP: p.minP,
      u: takes && !isGreedy(p) ? req.rng.next() : 0,
      topN: req.r.returnLogprob ? req.r.topLogprobsNum : 0,
      edits: takes ? editsFor(req) : null,
    };
  }

  /** The step's view of `req` computing positions [start, start + n) at batch row `qStart` (its slots not yet in the device table ride along). */
  private span(req: Req, qStart: number, start: number, n: number): SeqSpan {
    const kvLen = start + n;
    const from = Math.min(req.synced, start);
    req.synced = kvLen; // a failed step aborts the request, and its row starts over
    return {
      qStart,
      qLen: n,
      kvLen,
      row: req.row,
      slotsFrom: from,
      fullSlots: req.full.data.subarray(from, kvLen),
      swaSlots: (this.swaPool ? req.swa : req.full).data.subarray(from, kvLen),
    };
  }

  private forward(work: { req: Req; n: number }[]): void {
    const total = work.reduce((a, w) => a + w.n, 0);
    const ids = new Int32Array(total);
    const positions = new Int32Array(total);
    const seqs: SeqSpan[] = [];
    const logitRows: number[] = [];
    /** Per work item: the logit row index of its first returned row and which positions those rows are. */
    const rowInfo: { first: number; fromPos: number; count: number; promptRows: boolean }[] = [];
    let row = 0;
    for (const { req, n } of work) {
      const start = req.kvLen;
      ids.set(req.ids.slice(start, start + n), row); // builtins, not a loop per token (util/int_arrays.ts)
      positions.set(ramp(start, start + n), row);
      const kvLen = start + n;
      seqs.push(this.span(req, row, start, n));
      // Rows to project: the last one when it yields a new token, plus prompt rows for prompt logprobs.
      const wantsToken = kvLen === req.ids.length;
      const wantsPrompt = req.r.returnLogprob && req.r.logprobStartLen >= 0 && start < req.promptLen - 1;
      const firstTarget = Math.max(1, req.r.logprobStartLen);
      const fromPos = wantsPrompt ? Math.max(start, firstTarget - 1) : kvLen - 1;
      const lastPos = wantsToken ? kvLen - 1 : wantsPrompt ? Math.min(kvLen - 1, req.promptLen - 2) : fromPos - 1;
      const count = Math.max(0, lastPos - fromPos + 1);
      rowInfo.push({ first: logitRows.length, fromPos, count, promptRows: wantsPrompt });
      for (let p = fromPos; p <= lastPos; p++) logitRows.push(row + (p - start));
      row += n;
    }
    const batch: StepBatch = { ids, positions, seqs, logitRows: Int32Array.from(logitRows) };
    this.counters.forwardTokens += total;
    // Every row one decode token (what the overlap schedule queues ahead).
    const decodeOnly = work.every(({ req, n }) => n === 1 && req.kvLen + 1 === req.ids.length);
    // Greedy steps with nothing to report but the token pick it where the logits are (on a GPU:
    // an argmax kernel), instead of bringing every row of logits to the host.
    if (this.model.forwardArgmax && work.every(({ req }) => onlyNeedsArgmax(req))) {
      // A decode-only step under the overlap schedule is queued, its tokens accepted next step.
      if (this.opts.overlap && this.model.queueArgmax && decodeOnly) {
        this.queueAhead(work, { reqs: work.map(({ req }) => req), drawn: false, picks: this.model.queueArgmax(batch, null) });
        return;
      }
      const ids = this.model.forwardArgmax(batch);
      work.forEach(({ req, n }, wi) => {
        req.kvLen += n;
        if (req.kvLen === req.ids.length && !req.aborted) this.accept(req, ids[rowInfo[wi].first], null);
      });
      return;
    }
    // Sampled steps without prompt logprobs: the draw (one u per non-greedy request from its
    // seeded Rng, as sampleToken takes it) after the request's penalties and masks (logit edits),
    // logprobs and top logprobs come from forwardSample.
    if (
      this.model.forwardSample &&
      work.every(({ req, n }, wi) => !rowInfo[wi].promptRows && (req.kvLen + n !== req.ids.length || canSampleOnDevice(req)))
    ) {
      // A decode-only step of draws that need no accepted token first is queued (overlap schedule).
      if (this.opts.overlap && this.model.queueSample && decodeOnly && work.every(({ req }) => canQueueDraw(req))) {
        this.queueAhead(work, this.queueDraws(work.map(({ req }) => req), batch, null));
        return;
      }
      const rows: SampleRow[] = [];
      work.forEach(({ req, n }, wi) => {
        if (rowInfo[wi].count === 0) return;
        rows.push(this.sampleRow(req, req.kvLen + n === req.ids.length && !req.aborted)); // takes: this row yields a token
      });
      const sampled = this.model.forwardSample(batch, rows);
      work.forEach(({ req, n }, wi) => {
        req.kvLen += n;
        if (req.kvLen !== req.ids.length || req.aborted) return;
        const r = rowInfo[wi].first;
        this.accept(req, sampled.ids[r], null, this.drawnLogprob(sampled, req, r));
      });
      return;
    }
    const logits = this.model.forward(batch);
    const vocab = this.model.cfg.vocabSize;

    work.forEach(({ req, n }, wi) => {
      req.kvLen += n;
      const info = rowInfo[wi];
      const rowOf = (p: number) => logits.subarray((info.first + p - info.fromPos) * vocab, (info.first + p - info.fromPos + 1) * vocab);
      if (req.r.returnLogprob && req.r.logprobStartLen >= 0) this.collectPromptLogprobs(req, info, rowOf);
      if (req.kvLen === req.ids.length && !req.aborted) this.sampleNext(req, rowOf(req.kvLen - 1));
    });
  }

  private collectPromptLogprobs(req: Req, info: { fromPos: number; count: number }, rowOf: (p: number) => Float32Array): void {
    req.promptLogprobs ??= new Array(req.promptLen).fill(null);
    const start = Math.max(1, req.r.logprobStartLen);
    for (let p = info.fromPos; p < info.fromPos + info.count; p++) {
      const target = p + 1;
      if (target < start || target >= req.promptLen) continue;
      req.promptLogprobs[target] = this.tokenLogprob(rowOf(p), req.ids[target], req.r.topLogprobsNum);
    }
  }

  private tokenLogprob(row: Float32Array, id: number, topN: number): TokenLogprob {
    const lp = logSoftmax(row);
    const out: TokenLogprob = { id, logprob: lp[id] };
    if (topN > 0) out.top = topEntries(lp, topN);
    return out;
  }

  private sampleNext(req: Req, row: Float32Array): void {
    const edits = editsFor(req);
    let logits = row;
    if (edits) applyEdits((logits = new Float32Array(row)), edits);
    this.accept(req, sampleToken(logits, req.r.sampling, req.rng), row);
  }

  /** Appends the chosen token, emits it (with logprobs from `row` when asked) and checks stops. */
  private accept(req: Req, tok: number, row: Float32Array | null, logprob?: TokenLogprob): void {
    if (req.r.maxNewTokens <= 0) {
      // Prompt-only requests (echo + logprobs with max_tokens 0): the prefill was the work.
      this.emit({ rid: req.r.rid, tokens: [], cachedTokens: req.cachedLen, promptLogprobs: req.promptLogprobs ?? undefined, finish: { reason: "length" } });
      this.retire(req, null);
      return;
    }
    const out: EngineOutput = { rid: req.r.rid, tokens: [tok] };
    // Logprobs are of the model's distribution (before penalties), as SGLang and OpenAI report them.
    if (req.r.returnLogprob && logprob) out.logprobs = [logprob];
    else if (req.r.returnLogprob && row) out.logprobs = [this.tokenLogprob(row, tok, req.r.topLogprobsNum)];
    if (!req.sentFirst) {
      out.cachedTokens = req.cachedLen;
      if (req.promptLogprobs) out.promptLogprobs = req.promptLogprobs;
      req.sentFirst = true;
    }
    req.ids.push(tok);
    req.output.push(tok);
    this.counters.generatedTokens++;
    if (req.output.length >= (req.r.minNewTokens ?? 0) && req.r.stopTokenIds.includes(tok)) {
      out.finish = { reason: "stop", matchedStop: tok };
    } else if (req.output.length >= req.r.maxNewTokens || req.ids.length >= this.opts.contextLength) {
      out.finish = { reason: "length" };
    }
    this.emit(out);
    if (out.finish) this.retire(req, null);
  }

  /** Local layers only look back to the chunk start: free this request's SWA slots before it. */
  private releaseOldSwa(): void {
    const chunk = this.opts.swaChunkSize;
    if (!this.swaPool || chunk <= 0) return;
    for (const req of this.running) {
      const keepFrom = req.kvLen - (req.kvLen % chunk);
      const from = Math.max(req.swaFreedUpTo, req.cachedLen);
      if (keepFrom <= from) continue;
      const slots = req.swa.data.subarray(from, keepFrom);
      this.swaPool.free(slots);
      slots.fill(-1);
      req.swaFreedUpTo = keepFrom;
    }
  }

  /** Hands a finished request's KV to the radix cache and removes it. */
  private retire(req: Req, finish: EngineOutput["finish"] | null): void {
    if (req.row >= 0) this.leaveRunning(req); // a row exactly while running
    // Under the overlap schedule a queued step may hold a position whose token is not accepted yet.
    const len = Math.min(req.kvLen, req.ids.length);
    // Slots allocated for positions never computed go straight back.
    this.fullPool.free(req.full.data.subarray(len, req.slotLen));
    this.swaPool?.free(req.swa.data.subarray(len, req.slotLen));
    const full = req.full.data.slice(0, len);
    const swa = this.swaPool ? req.swa.data.slice(0, len) : null;
    // The tree owns [0, cachedLen) already; insert hands over the rest and frees duplicates.
    this.cache.insert(req.ids.slice(0, len), full, swa);
    if (req.node) this.cache.unlock(req.node);
    req.node = null;
    if (finish) this.finish(req, finish);
    else this.byRid.delete(req.r.rid);
  }

  /** Joins the running set with a slot-table row of its own (free: running < maxRunningRequests). */
  private enterRunning(req: Req): void {
    const row = this.freeRows.pop();
    if (row === undefined) throw new Error("scheduler: no free slot-table row for a running request");
    req.row = row;
    req.synced = 0;
    this.running.push(req);
  }

  private leaveRunning(req: Req): void {
    this.running.splice(this.running.indexOf(req), 1);
    this.freeRows.push(req.row);
    req.row = -1;
  }

  private freeOwned(req: Req): void {
    // Everything past the shared prefix is this request's, including slots of a step that
    // allocated but never computed.
    this.fullPool.free(req.full.data.subarray(req.cachedLen, req.slotLen));
    if (this.swaPool) this.swaPool.free(req.swa.data.subarray(Math.max(req.cachedLen, req.swaFreedUpTo), req.slotLen));
    if (req.node) this.cache.unlock(req.node);
    req.node = null;
  }

  private finish(req: Req, finish: NonNullable<EngineOutput["finish"]>): void {
    this.byRid.delete(req.r.rid);
    const out: EngineOutput = { rid: req.r.rid, tokens: [], finish };
    if (!req.sentFirst) out.cachedTokens = req.cachedLen;
    this.emit(out);
  }
}
