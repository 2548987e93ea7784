// The scheduler in-process on the fixtures: batching must not change any request's tokens,
// prefixes must be reused, and the hybrid SWA pool must stay small and drain to empty.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { RadixCache } from "../cache/radix_cache.js";
import { TokenPool } from "../cache/token_pool.js";
import { loadModel } from "../model/loader.js";
import type { ForwardModel } from "../model/llama4.js";
import { readGolden } from "../model/golden.js";
import { CpuBackend } from "../runtime/cpu.js";
import { fixturePath } from "../util/repo.js";
import { GREEDY, type SamplingParams, argmax } from "./sampling.js";
import { Scheduler, type SchedulerOptions } from "./scheduler.js";
import { SingleSequence } from "./sequence.js";
import type { EngineOutput, EngineRequest } from "./types.js";

const FIXTURE = fixturePath("scout-tiny");
const golden = readGolden(FIXTURE);

interface Harness {
  sched: Scheduler;
  outputs: Map<string, EngineOutput[]>;
  full: TokenPool;
  swa: TokenPool | null;
  cache: RadixCache;
  chunk: number;
  /** Runs steps until idle; calls `each` after every step. */
  drain(each?: () => void): void;
}

interface HarnessOptions extends Partial<SchedulerOptions> {
  hybrid?: boolean;
  radix?: boolean;
  poolTokens?: number;
  wrap?: (m: ForwardModel) => ForwardModel;
  /** Hide the model's forwardSample (the scheduler's host sampling path only). */
  hostSampling?: boolean;
  /** Called on every forwardSample step. */
  onSample?: () => void;
  /** Called on every queueSample step (chained: its ids are the queued step's picks). */
  onQueueSample?: (chained: boolean) => void;
}

/** The model with only forward() (no argmax or sampling shortcuts), replaced by `forward`. */
function withForward(m: ForwardModel, forward: ForwardModel["forward"]): ForwardModel {
  return { cfg: m.cfg, backend: m.backend, attention: m.attention, kvElementBytes: m.kvElementBytes, kvMemoryBytes: () => m.kvMemoryBytes(), allocKv: (sizes) => m.allocKv(sizes), forward };
}

async function harness(o: HarnessOptions = {}): Promise<Harness> {
  const loaded = await loadModel(FIXTURE, new CpuBackend(), { hybridKv: o.hybrid ?? true });
  const config = loaded.config;
  // A view of the model with forwardSample / queueSample hidden or counted (the prototype keeps everything else).
  const view: typeof loaded.model = Object.create(loaded.model);
  const define = (key: string, value: unknown) => Object.defineProperty(view, key, { value });
  if (o.hostSampling) {
    define("forwardSample", undefined);
    define("queueSample", undefined);
  } else {
    if (o.onSample) {
      const inner = loaded.model.forwardSample.bind(loaded.model);
      define("forwardSample", (...a: Parameters<typeof inner>) => (o.onSample!(), inner(...a)));
    }
    if (o.onQueueSample) {
      const inner = loaded.model.queueSample.bind(view);
      define("queueSample", (...a: Parameters<typeof inner>) => (o.onQueueSample!(a[2] !== null), inner(...a)));
    }
  }
  const model = o.wrap ? o.wrap(view) : view;
  const hybrid = model.attention.some((a) => a.pool === "swa");
  const size = o.poolTokens ?? 4096;
  const full = new TokenPool(size);
  const swa = hybrid ? new TokenPool(size) : null;
  model.allocKv({ full: size, swa: size, rows: o.maxRunningRequests ?? 64, context: o.contextLength ?? 1024 });
  const chunk = hybrid ? config.attentionChunkSize : 0;
  const cache = new RadixCache({ full, swa, chunkSize: chunk, disabled: o.radix === false });
  const outputs = new Map<string, EngineOutput[]>();
  const sched = new Scheduler(
    model,
    cache,
    full,
    swa,
    {
      contextLength: o.contextLength ?? 1024,
      maxRunningRequests: o.maxRunningRequests ?? 64,
      chunkedPrefillSize: o.chunkedPrefillSize ?? 8192,
      schedulePolicy: o.schedulePolicy ?? "fcfs",
      maxQueuedRequests: 1000,
      swaChunkSize: chunk,
      overlap: o.overlap ?? false,
    },
    (out) => {
      const list = outputs.get(out.rid) ?? [];
      list.push(out);
      outputs.set(out.rid, list);
    },
  );
  return {
    sched,
    outputs,
    full,
    swa,
    cache,
    chunk,
    drain(each) {
      for (let i = 0; i < 100000 && !sched.idle; i++) {
        sched.step();
        each?.();
      }
      assert.ok(sched.idle, "scheduler did not finish");
    },
  };
}

function request(rid: string, ids: number[], maxNewTokens: number, extra: Partial<EngineRequest> = {}): EngineRequest {
  return { rid, inputIds: ids, sampling: GREEDY, maxNewTokens, stopTokenIds: [], returnLogprob: false, logprobStartLen: -1, topLogprobsNum: 0, ...extra };
}

function tokens(h: Harness, rid: string): number[] {
  return (h.outputs.get(rid) ?? []).flatMap((o) => o.tokens);
}

/** Greedy continuation of one prompt alone, on the contiguous cache. */
async function alone(ids: number[], n: number): Promise<number[]> {
  const { model } = await loadModel(FIXTURE, new CpuBackend());
  const seq = new SingleSequence(model, ids.length + n);
  let logits = seq.append(ids);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    out.push(argmax(logits));
    if (i + 1 < n) logits = seq.append([out[i]]);
  }
  return out;
}

function prompts(count: number): number[][] {
  // Different lengths (several local-attention chunks), sharing some prefixes.
  const base = golden.prompts[2].prompt_ids;
  return Array.from({ length: count }, (_, i) => {
    const len = 5 + ((i * 7) % 60);
    const p = base.slice(0, len);
    if (i % 3 === 0) p.push((i * 37) % 500);
    return p;
  });
}

describe("scheduler", () => {
  test("32 concurrent greedy requests give exactly what each gives alone (hybrid on, small prefill chunks)", async () => {
    const ps = prompts(32);
    const lens = ps.map((_, i) => 3 + (i % 9));
    const want = await Promise.all(ps.map((p, i) => alone(p, lens[i])));
    for (const [hybrid, chunked, overlap] of [[true, 13, false], [false, 8192, false], [true, 13, true]] as const) {
      const h = await harness({ hybrid, chunkedPrefillSize: chunked, overlap });
      ps.forEach((p, i) => h.sched.add(request(`r${i}`, p, lens[i])));
      h.drain();
      ps.forEach((_, i) => assert.deepEqual(tokens(h, `r${i}`), want[i], `request ${i} (hybrid ${hybrid}, overlap ${overlap})`));
      assert.ok(h.sched.flushCache());
      assert.equal(h.full.used, 0);
    }
  });

  test("a repeated long prefix is served from the cache and skips its prefill", async () => {
    const h = await harness();
    const prefix = golden.prompts[2].prompt_ids.slice(0, 60);
    h.sched.add(request("a", [...prefix, 7], 4));
    h.drain();
    const before = h.sched.stats().forwardTokens;
    h.sched.add(request("b", [...prefix, 9, 10], 4));
    h.drain();
    const cached = h.outputs.get("b")![0].cachedTokens!;
    assert.ok(cached >= 48, `cached ${cached}`); // at least the whole chunks of the shared prefix
    const forwarded = h.sched.stats().forwardTokens - before;
    assert.equal(forwarded, 62 - cached + 3, "only the uncached prompt tokens and the decode steps run");
    assert.deepEqual(tokens(h, "b"), await alone([...prefix, 9, 10], 4));
  });

  test("hybrid SWA pool: at most one chunk per running request, empty at the end, aborts included", async () => {
    const h = await harness({ hybrid: true, chunkedPrefillSize: 16 });
    const ps = prompts(8).map((p) => [...p, ...golden.prompts[1].prompt_ids]);
    ps.forEach((p, i) => h.sched.add(request(`s${i}`, p, 20)));
    let steps = 0;
    h.drain(() => {
      steps++;
      const st = h.sched.stats();
      assert.ok(h.swa!.used <= st.running * h.chunk + h.cache.cachedTokens, `swa used ${h.swa!.used} with ${st.running} running`);
      if (steps === 5) h.sched.abort("s3");
    });
    assert.equal(h.outputs.get("s3")!.at(-1)!.finish!.reason, "abort");
    assert.ok(h.sched.flushCache());
    assert.equal(h.full.used, 0);
    assert.equal(h.swa!.used, 0);
  });

  test("seeded sampling (with logprobs) is unchanged by forwardSample (the CPU fallback draws the same u)", async () => {
    const ps = prompts(10);
    const sampling = (i: number): SamplingParams => ({
      ...GREEDY,
      temperature: i % 5 === 4 ? 0 : [0.6, 1, 1.3, 0.8][i % 4],
      topP: [0.9, 1, 0.5, 0.95][i % 4],
      topK: [-1, 40, 5, 1][i % 4],
      minP: [0, 0.05, 0, 0.1][i % 4],
      seed: 1000 + i,
    });
    let chainedDraws = 0;
    const run = async (hostSampling: boolean, overlap = false, count = ps.length) => {
      let sampledSteps = 0;
      const h = await harness({ hostSampling, overlap, chunkedPrefillSize: 24, onSample: () => sampledSteps++, onQueueSample: (chained) => (chainedDraws += chained ? 1 : 0) });
      ps.slice(0, count).forEach((p, i) =>
        h.sched.add(
          request(`q${i}`, p, 6 + (i % 4), {
            sampling: sampling(i),
            returnLogprob: i % 3 === 0,
            topLogprobsNum: i % 3 === 0 ? 3 : 0,
            // penalties and min-new-tokens masking go to forwardSample as logit edits
            ...(i === 7 ? { sampling: { ...sampling(i), frequencyPenalty: 0.5, repetitionPenalty: 1.3 } } : {}),
            ...(i === 8 ? { minNewTokens: 3, stopTokenIds: [golden.prompts[0].prompt_ids[0]] } : {}),
            ...(i === 9 ? { sampling: { ...sampling(i), presencePenalty: 2, repetitionPenalty: 0.8 } } : {}),
          }),
        ),
      );
      h.drain();
      return { outs: ps.slice(0, count).map((_, i) => h.outputs.get(`q${i}`)!), sampledSteps };
    };
    const host = await run(true);
    const dev = await run(false);
    assert.equal(host.sampledSteps, 0);
    assert.ok(dev.sampledSteps > 0, "forwardSample was used");
    ps.forEach((_, i) => assert.deepEqual(dev.outs[i], host.outs[i], `request ${i}`));
    // The overlap schedule queues draws one step ahead: the same tokens and logprobs. With the
    // penalised and min-new-tokens requests (7–9) every step waits for the last one's tokens;
    // without them the steps chain.
    const overlapped = await run(false, true);
    ps.forEach((_, i) => assert.deepEqual(overlapped.outs[i], host.outs[i], `request ${i} (overlap)`));
    const chained = await run(false, true, 7);
    assert.ok(chainedDraws > 0, "sampled steps were chained");
    chained.outs.forEach((out, i) => assert.deepEqual(out, host.outs[i], `request ${i} (overlap, chained)`));
    // a penalised request samples every step through forwardSample too
    let steps = 0;
    const h2 = await harness({ onSample: () => steps++ });
    h2.sched.add(request("only", ps[0], 5, { sampling: { ...sampling(0), frequencyPenalty: 1, repetitionPenalty: 1.2 } }));
    h2.drain();
    assert.equal(steps, 5, "the prefill step and every decode step");
  });

  test("logit_bias: +100 forces a token and -100 bans the greedy one, on the host path and through forwardSample", async () => {
    const p = prompts(1)[0];
    const base = await alone(p, 3);
    for (const hostSampling of [true, false]) {
      const h = await harness({ hostSampling });
      h.sched.add(request("force", p, 4, { sampling: { ...GREEDY, logitBias: [[11, 100]] } }));
      h.sched.add(request("ban", p, 1, { sampling: { ...GREEDY, logitBias: [[base[0], -100]] } }));
      h.drain();
      assert.deepEqual(tokens(h, "force"), [11, 11, 11, 11], `hostSampling ${hostSampling}`);
      const banned = tokens(h, "ban");
      assert.equal(banned.length, 1);
      assert.notEqual(banned[0], base[0], `hostSampling ${hostSampling}`);
    }
  });

  test("prompt logprobs equal the float64 reference", async () => {
    const h = await harness({ chunkedPrefillSize: 10 });
    const p = golden.prompts[1];
    h.sched.add(request("lp", p.prompt_ids, 1, { returnLogprob: true, logprobStartLen: 0, topLogprobsNum: 2 }));
    h.drain();
    const first = h.outputs.get("lp")![0];
    const lps = first.promptLogprobs!;
    assert.equal(lps.length, p.prompt_ids.length);
    assert.equal(lps[0], null);
    const vocab = golden.vocabSize;
    for (let i = 1; i < lps.length; i++) {
      const ref = p.logprobs[(i - 1) * vocab + p.prompt_ids[i]];
      assert.ok(Math.abs(lps[i]!.logprob - ref) < 1e-3, `position ${i}: ${lps[i]!.logprob} vs ${ref}`);
      assert.equal(lps[i]!.top!.length, 2);
    }
  });

  test("max_new_tokens 0 returns prompt logprobs and no tokens", async () => {
    const h = await harness();
    const p = golden.prompts[0];
    h.sched.add(request("z", p.prompt_ids, 0, { returnLogprob: true, logprobStartLen: 0, topLogprobsNum: 0 }));
    h.drain();
    const outs = h.outputs.get("z")!;
    assert.equal(outs.length, 1);
    assert.deepEqual(outs[0].tokens, []);
    assert.equal(outs[0].finish!.reason, "length");
    assert.equal(outs[0].promptLogprobs!.length, p.prompt_ids.length);
  });

  test("radix cache disabled and lpm policy keep outputs and drain the pools", async () => {
    const h = await harness({ radix: false, schedulePolicy: "lpm", maxRunningRequests: 4 });
    const ps = prompts(10);
    ps.forEach((p, i) => h.sched.add(request(`d${i}`, p, 3)));
    h.drain();
    for (let i = 0; i < ps.length; i++) assert.deepEqual(tokens(h, `d${i}`), await alone(ps[i], 3));
    assert.equal(h.full.used, 0);
    assert.equal(h.swa!.used, 0);
  });

  test("long prompts prefilled in chunks into a pool that runs out are requeued, not stuck", async () => {
    const h = await harness({ poolTokens: 160, hybrid: false, chunkedPrefillSize: 16 });
    const ps = [0, 1, 2, 3].map((i) => [...golden.prompts[2].prompt_ids.slice(0, 60), i]);
    ps.forEach((p, i) => h.sched.add(request(`c${i}`, p, 8)));
    h.drain();
    for (let i = 0; i < ps.length; i++) assert.deepEqual(tokens(h, `c${i}`), await alone(ps[i], 8), `request ${i}`);
    assert.ok(h.sched.flushCache());
    assert.equal(h.full.used, 0);
  });

  test("a step that throws ends only the requests in it; waiting requests still complete", async () => {
    let calls = 0;
    const h = await harness({
      maxRunningRequests: 2,
      // The third forward fails, as a kernel error would.
      wrap: (m) =>
        withForward(m, (b) => {
          if (++calls === 3) throw new Error("injected fault");
          return m.forward(b);
        }),
    });
    const ps = prompts(4);
    ps.forEach((p, i) => h.sched.add(request(`f${i}`, p, 5)));
    for (let i = 0; i < 1000 && !h.sched.idle; i++) {
      try {
        h.sched.step();
      } catch (e) {
        h.sched.abortRunning(`engine step failed: ${(e as Error).message}`); // what the worker does
      }
    }
    assert.ok(h.sched.idle);
    for (const i of [0, 1]) {
      const last = h.outputs.get(`f${i}`)!.at(-1)!;
      assert.equal(last.finish!.reason, "abort");
      assert.match(last.finish!.message!, /injected fault/);
    }
    for (const i of [2, 3]) assert.deepEqual(tokens(h, `f${i}`), await alone(ps[i], 5), `request ${i}`);
    assert.ok(h.sched.flushCache());
    assert.equal(h.full.used, 0);
    assert.equal(h.swa!.used, 0);
  });

  test("a step carries only the slots its sequences gain (one per decode row), a new row's from 0", async () => {
    const seen: { qLen: number; kvLen: number; slotsFrom: number; carried: number }[] = [];
    const h = await harness({
      chunkedPrefillSize: 16,
      wrap: (m) =>
        withForward(m, (b) => {
          for (const q of b.seqs) seen.push({ qLen: q.qLen, kvLen: q.kvLen, slotsFrom: q.slotsFrom, carried: q.fullSlots.length });
          return m.forward(b);
        }),
    });
    const p = golden.prompts[2].prompt_ids.slice(0, 40);
    h.sched.add(request("first", p, 6));
    h.drain();
    h.sched.add(request("again", [...p, 7], 6)); // its first 40 positions come from the radix cache
    h.drain();
    assert.deepEqual(tokens(h, "again"), await alone([...p, 7], 6));
    for (const q of seen) assert.equal(q.carried, q.kvLen - q.slotsFrom);
    const decode = seen.filter((q) => q.qLen === 1 && q.kvLen > p.length + 1);
    assert.ok(decode.length >= 8 && decode.every((q) => q.carried === 1), "decode rows carry one slot each");
    const cachedStart = seen.find((q) => q.slotsFrom === 0 && q.kvLen - q.qLen > 0);
    assert.ok(cachedStart, "the cached prefix's slots travel with the new row's first step");
  });

  test("overlap schedule: decode steps chain on the queued picks; stops, lengths and aborts land on the same tokens", async () => {
    const ps = prompts(6);
    const want = await Promise.all(ps.map((p) => alone(p, 12)));
    // Request i stops at its greedy token 4 + i (as a stop token), or runs to max_new_tokens.
    const stopAt = (i: number) => (i % 2 === 0 ? [want[i][4 + i]] : []);
    const expected = ps.map((_, i) => {
      const stop = stopAt(i)[0];
      const end = stop === undefined ? 12 : want[i].indexOf(stop) + 1;
      return want[i].slice(0, end);
    });
    let chained = 0;
    let queued = 0;
    const h = await harness({
      overlap: true,
      wrap: (m) => {
        const view: ForwardModel = Object.create(m);
        Object.defineProperty(view, "queueArgmax", {
          value: (b: Parameters<NonNullable<ForwardModel["queueArgmax"]>>[0], after: Parameters<NonNullable<ForwardModel["queueArgmax"]>>[1]) => {
            if (after) chained++;
            queued++;
            return m.queueArgmax!(b, after);
          },
        });
        return view;
      },
    });
    ps.forEach((p, i) => h.sched.add(request(`o${i}`, p, 12, { stopTokenIds: stopAt(i) })));
    h.sched.add(request("aborted", ps[0], 40));
    let steps = 0;
    h.drain(() => {
      if (++steps === 8) h.sched.abort("aborted");
    });
    ps.forEach((_, i) => {
      assert.deepEqual(tokens(h, `o${i}`), expected[i], `request ${i}`);
      assert.equal(h.outputs.get(`o${i}`)!.at(-1)!.finish!.reason, stopAt(i).length > 0 ? "stop" : "length");
    });
    const cut = h.outputs.get("aborted")!;
    assert.equal(cut.at(-1)!.finish!.reason, "abort");
    assert.deepEqual(tokens(h, "aborted"), (await alone(ps[0], 40)).slice(0, tokens(h, "aborted").length));
    // A chain restarts only where the running set changed (a request ended or the abort landed).
    assert.ok(chained >= 5 && queued - chained <= ps.length + 2, `${chained} of ${queued} queued steps chained on the picks before them`);
    // What the requests computed, the in-flight positions included, went to the cache or back to the pools.
    h.sched.add(request("again", [...ps[1], ...expected[1].slice(0, 5)], 3));
    h.drain();
    assert.ok(h.outputs.get("again")![0].cachedTokens! > 0);
    assert.deepEqual(tokens(h, "again"), expected[1].slice(5, 8));
    assert.ok(h.sched.flushCache());
    assert.equal(h.full.used, 0);
    assert.equal(h.swa!.used, 0);
  });

  test("a pool too small for everyone preempts and recomputes without changing outputs", async () => {
    const h = await harness({ poolTokens: 200, hybrid: false });
    const ps = prompts(12);
    ps.forEach((p, i) => h.sched.add(request(`p${i}`, p, 12)));
    h.drain();
    assert.ok(h.sched.stats().preemptions > 0, "the pool was meant to run out");
    for (let i = 0; i < ps.length; i++) assert.deepEqual(tokens(h, `p${i}`), await alone(ps[i], 12), `request ${i}`);
  });
});
