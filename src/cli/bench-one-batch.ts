// `tsglang bench-one-batch` (like sglang.bench_one_batch): one static batch, prefilled in one
// forward and decoded step by step, timed on the device. Prints prefill and decode throughput,
// per-step latency, and the achieved memory bandwidth beside the bandwidth bound (bytes a
// decode step must read ÷ measured copy bandwidth), as gpt-fast does.

import { parseArgs } from "node:util";
import { ContiguousBatch } from "../engine/sequence.js";
import type { Llama4Config } from "../model/config.js";
import { loadModel } from "../model/loader.js";
import { createBackend, cudaAttentionFor, gpuFor, parseAttentionBackend, parseDevice } from "../runtime/select.js";
import { loadParallel } from "../engine/parallel.js";
import type { ForwardModel } from "../model/llama4.js";
import type { GemmStats } from "../runtime/backend.js";
import { argmax } from "../engine/sampling.js";
import { warmupGemms } from "../engine/warmup.js";

const HELP = `usage: tsglang bench-one-batch --model-path DIR [flags]

  --model-path DIR          checkpoint directory (config.json is enough with --load-format dummy)
  --load-format auto|dummy  dummy = random weights made on the device (default auto)
  --batch-size N            sequences in the batch (default 1)
  --input-len N             prompt tokens per sequence (default 1024)
  --output-len N            generated tokens per sequence (default 16)
  --device auto|cuda|cpu    (default auto)
  --attention-backend NAME  auto|fa3|cuda|cpu (default auto)
  --tp N, --ep-size N       tensor / expert parallel ranks (GPUs with NCCL, else CPU threads)
  --no-warmup               time the process's first prefill (by default the GEMMs are planned
                            for every row count the run can meet, as launch does before serving,
                            reported as gemm_warmup_s; then one prefill of other prompts runs, as
                            sglang's bench_one_batch warms up, reported as prefill_cold_s)
  --prefill-runs N          timed prefills after the warm-up (default 5), each of new prompts into
                            fresh sequences; prefill_s is their median (the first runs at the
                            GPU's clocks after idling, which the later ones show are not the
                            kernels' speed), prefill_s_runs lists them all
  --chunked-prefill-size N  most prompt tokens per prefill forward (default 8192, as launch): whole
                            prompts are grouped up to it, longer ones are prefilled in chunks
  --host-logits             the prefill and decode steps download every logit row and take the argmax
                            on the host (default: greedy on the device where the model can, as SGLang
                            samples on the GPU; the next tokens are the same)
  --disable-overlap-schedule  each greedy decode step waits for the last one's tokens (default: as
                            launch serves, the next step is queued before the last one's tokens are
                            read, its input ids taken from that step's picks on the device; a step
                            is then the interval between successive steps' tokens)
  --json                    print one JSON object`;

/** The middle value (the upper one of an even count). */
function median(xs: readonly number[]): number {
  return [...xs].sort((a, b) => a - b)[xs.length >> 1];
}

/** Bytes one decode step must read: weights touched by B tokens plus the KV they attend to. */
export function decodeStepBytes(cfg: Llama4Config, batch: number, context: number, elementBytes: number): { weights: number; kv: number } {
  const d = cfg.hiddenSize;
  const attn = (cfg.numHeads * cfg.headDim * d) * 2 + 2 * cfg.numKvHeads * cfg.headDim * d;
  const kvPerToken = 2 * cfg.numKvHeads * cfg.headDim;
  let elems = cfg.vocabSize * d + batch * d; // lm_head + embedding rows
  let kv = 0;
  for (const l of cfg.layers) {
    elems += attn + 2 * d;
    if (l.moe) {
      const e = cfg.numExperts;
      const touched = e * (1 - Math.pow(1 - 1 / e, batch)); // expected distinct experts for uniform routing
      elems += e * d + (1 + touched) * 3 * d * cfg.intermediateSize;
    } else {
      elems += 3 * d * cfg.intermediateSizeMlp;
    }
    const span = l.chunkSize > 0 ? Math.min(context, (context % l.chunkSize) + 1) : context;
    kv += batch * span * kvPerToken;
  }
  return { weights: elems * elementBytes, kv: kv * elementBytes };
}

/** Matmul FLOPs of a prefill of `tokens` tokens per sequence (active experts only) plus causal attention. */
export function prefillFlops(cfg: Llama4Config, batch: number, tokens: number): number {
  const d = cfg.hiddenSize;
  const attnProj = 2 * ((cfg.numHeads * cfg.headDim * d) * 2 + 2 * cfg.numKvHeads * cfg.headDim * d);
  let perToken = 0;
  let attnFlops = 0;
  for (const l of cfg.layers) {
    perToken += attnProj + (l.moe ? 2 * (cfg.numExperts * d + 2 * 3 * d * cfg.intermediateSize) : 2 * 3 * d * cfg.intermediateSizeMlp);
    // QK^T and PV over the allowed keys: causal within a chunk (local) or the whole prompt.
    const chunk = l.chunkSize > 0 ? Math.min(l.chunkSize, tokens) : tokens;
    const full = Math.floor(tokens / chunk);
    const rest = tokens - full * chunk;
    const pairs = full * (chunk * (chunk + 1)) / 2 + (rest * (rest + 1)) / 2;
    attnFlops += 4 * pairs * cfg.numHeads * cfg.headDim;
  }
  return batch * (tokens * perToken + attnFlops + 2 * cfg.vocabSize * d); // lm_head for the last token only
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      "model-path": { type: "string" },
      "load-format": { type: "string", default: "auto" },
      "batch-size": { type: "string", default: "1" },
      "input-len": { type: "string", default: "1024" },
      "output-len": { type: "string", default: "16" },
      device: { type: "string", default: "auto" },
      "attention-backend": { type: "string", default: "auto" },
      tp: { type: "string", default: "1" },
      "ep-size": { type: "string", default: "1" },
      json: { type: "boolean" },
      "host-logits": { type: "boolean" },
      "disable-overlap-schedule": { type: "boolean" },
      "no-warmup": { type: "boolean" },
      "chunked-prefill-size": { type: "string", default: "8192" },
      "prefill-runs": { type: "string", default: "5" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (!values["model-path"]) throw new Error("--model-path is required");
  const int = (name: string, v: string, min: number) => {
    const x = Number(v);
    if (!Number.isInteger(x) || x < min) throw new Error(`--${name} must be an integer ≥ ${min}, got '${v}'`);
    return x;
  };
  const batch = int("batch-size", values["batch-size"]!, 1);
  const inputLen = int("input-len", values["input-len"]!, 1);
  const outputLen = int("output-len", values["output-len"]!, 2);
  const chunk = int("chunked-prefill-size", values["chunked-prefill-size"]!, 1);
  const runs = int("prefill-runs", values["prefill-runs"]!, 1);
  const lf = values["load-format"];
  if (lf !== "auto" && lf !== "dummy") throw new Error(`--load-format must be auto or dummy, got '${lf}'`);

  const tp = int("tp", values.tp!, 1);
  const ep = int("ep-size", values["ep-size"]!, 1);
  const device = parseDevice(values.device!);
  const t0 = performance.now();
  let model: ForwardModel;
  let description: string;
  let close = async () => {};
  if (tp > 1 || ep > 1) {
    const gpu = await gpuFor(device);
    const attention = parseAttentionBackend(values["attention-backend"]!);
    const cuda = gpu ? { attention: cudaAttentionFor(attention, gpu) } : undefined;
    const p = await loadParallel({ modelPath: values["model-path"], tp, ep, loadFormat: lf, device: gpu ? "cuda" : "cpu", cuda });
    model = p.model;
    close = () => p.model.close();
    description = `${gpu ? `cuda (${gpu.name}, ${cuda!.attention} attention)` : "cpu"} × ${tp} ranks${ep > 1 ? `, ep ${ep}` : ""}`;
  } else {
    const choice = await createBackend(device, parseAttentionBackend(values["attention-backend"]!));
    model = (await loadModel(values["model-path"], choice.backend, { loadFormat: lf })).model;
    description = choice.description;
    const be = choice.backend as { destroy?(): void };
    close = async () => be.destroy?.(); // frees the device (and writes TSGLANG_KERNEL_STAMPS' file)
  }
  const config = model.cfg;
  const be = model.backend;
  const loadS = (performance.now() - t0) / 1000;
  // Prompts: fixed pseudo-random ids, different per sequence and per timed prefill run.
  const promptsFor = (run: number) =>
    Array.from({ length: batch }, (_, b) => Array.from({ length: inputLen }, (_, i) => (b * 7919 + i * 104729 + run * 15485863) % config.vocabSize));
  const sync = () => be.synchronize?.();
  // Prefill in groups of whole prompts of at most `chunk` tokens, a longer prompt in chunks of it
  // (as the server's chunked prefill), keeping each sequence's last-token logits for the first
  // decode step.
  const group = Math.max(1, Math.floor(chunk / inputLen));
  // Warm-up (sglang's bench_one_batch does one too): one group of other prompts, so the timed
  // prefill meets new expert counts but no first-use costs (module loads, cuBLASLt handles and
  // planning of its shape buckets).
  let prefillColdS: number | null = null;
  let gemmWarmupS: number | null = null;
  if (!values["no-warmup"]) {
    const n = Math.min(batch, group);
    const warmLen = Math.min(inputLen, chunk); // one forward's worth is what the warm-up is for
    // Steps carry up to n prompts or one chunk (prefill) or `batch` rows (decode); logits for up to `batch` rows.
    gemmWarmupS = warmupGemms(model, { maxTokens: Math.max(n * warmLen, batch), maxLogitRows: batch })?.seconds ?? null;
    const warm = new ContiguousBatch(model, n, warmLen + 1);
    sync();
    const t0 = performance.now();
    warm.append(Array.from({ length: n }, (_, b) => Array.from({ length: warmLen }, (_, i) => ((b + batch) * 7919 + i * 104723 + 17) % config.vocabSize)));
    sync();
    prefillColdS = (performance.now() - t0) / 1000;
  }
  // Timed prefills: the last one's sequences go on to decode.
  const vocab = config.vocabSize;
  let seqs!: ContiguousBatch;
  let logits: Float32Array = new Float32Array(batch * vocab);
  // Greedy on the device where the model can (as sglang's bench_one_batch samples on the GPU):
  // the prefill's first tokens and every decode step come back as ids, not [rows, vocab] logits.
  const deviceGreedy = !values["host-logits"] && model.forwardArgmax !== undefined;
  const firstTokens = new Int32Array(batch);
  const prefillRuns: number[] = [];
  // GEMM planning inside each timed prefill (CUDA: cuBLASLt plans for new row counts, timed
  // algorithm choices); rank 0's backend under tensor parallelism.
  const planRuns: GemmStats[] = [];
  for (let run = 0; run < runs; run++) {
    const prompts = promptsFor(run);
    seqs = new ContiguousBatch(model, batch, inputLen + outputLen);
    sync();
    const before = be.gemmStats?.();
    const t = performance.now();
    for (let g = 0; g < batch; g += group) {
      // `group` whole prompts (then one chunk holds them), or one prompt's chunks: the last chunk's logits are its last token's.
      for (let at = 0; at < inputLen; at += chunk) {
        const lists = prompts.map((p, b) => (b >= g && b < g + group ? p.slice(at, at + chunk) : []));
        const last = at + chunk >= inputLen;
        if (deviceGreedy) {
          const ids = seqs.appendGreedy(lists); // one id per taking-part sequence: g, g + 1, …
          if (last) firstTokens.set(ids, g);
        } else {
          const out = seqs.append(lists);
          if (last) logits.set(out, g * vocab);
        }
      }
    }
    sync();
    prefillRuns.push((performance.now() - t) / 1000);
    const after = be.gemmStats?.();
    if (before && after) planRuns.push({ plans: after.plans - before.plans, timed: after.timed - before.timed, exact: after.exact - before.exact });
  }
  const prefillS = median(prefillRuns);
  const steps: number[] = [];
  const graphMs: number[] = []; // rank 0's device time of each replayed decode graph
  let next = Array.from({ length: batch }, (_, b) => [deviceGreedy ? firstTokens[b] : argmax(logits.subarray(b * vocab, (b + 1) * vocab))]);
  const firstIds = [next[0][0]]; // sequence 0's greedy tokens: a check that two runs computed the same thing
  // The overlap schedule: step s + 1 is queued (its ids: step s's picks, on the device) before
  // step s's tokens are read; a step's time is then the interval between two steps' tokens.
  const overlap = deviceGreedy && !values["disable-overlap-schedule"] && model.queueArgmax !== undefined;
  let picks = overlap && outputLen > 1 ? seqs.queueGreedy(next.map((n) => n[0])) : null;
  let tokensAt = performance.now();
  for (let s = 1; s < outputLen; s++) {
    const t = performance.now();
    if (picks) {
      const following = s + 1 < outputLen ? seqs.queueGreedy(picks) : null;
      const ids = picks.wait();
      const now = performance.now();
      steps.push((now - tokensAt) / 1000);
      tokensAt = now;
      next = Array.from(ids, (id) => [id]);
      if (following) picks = following;
    } else if (deviceGreedy) {
      const ids = seqs.appendGreedy(next);
      sync();
      steps.push((performance.now() - t) / 1000);
      const ms = be.lastReplayMs?.();
      if (ms != null) graphMs.push(ms);
      next = Array.from(ids, (id) => [id]);
    } else {
      logits = seqs.append(next);
      sync();
      steps.push((performance.now() - t) / 1000);
      next = Array.from({ length: batch }, (_, b) => [argmax(logits.subarray(b * vocab, (b + 1) * vocab))]);
    }
    firstIds.push(next[0][0]);
  }
  if (overlap) {
    // Queued steps overwrite the replay events: only the last replay's time can be read, once it is done.
    sync();
    const ms = be.lastReplayMs?.();
    if (ms != null) graphMs.push(ms);
  }
  // The first decode steps warm caches; report the median.
  const stepS = median(steps);
  const elementBytes = be.elementBytes ?? 2;
  // Each rank reads about 1/tp of the step's bytes, at the same time as the others.
  const all = decodeStepBytes(config, batch, inputLen + Math.floor(outputLen / 2), elementBytes);
  const bytes = { weights: all.weights / tp, kv: all.kv / tp };
  const copy = be.copyBandwidth?.() ?? { bytesPerS: NaN, bytes: 0 };
  const copyBw = copy.bytesPerS;
  const stepBytes = bytes.weights + bytes.kv;
  const result = {
    backend: description,
    tp,
    ep_size: ep,
    model: values["model-path"],
    load_format: lf,
    batch_size: batch,
    input_len: inputLen,
    output_len: outputLen,
    load_s: loadS,
    gemm_warmup_s: gemmWarmupS,
    prefill_s: prefillS,
    prefill_s_runs: prefillRuns,
    prefill_cold_s: prefillColdS,
    prefill_gemm_planning_runs: planRuns.length > 0 ? planRuns : null,
    prefill_tokens_per_s: (batch * inputLen) / prefillS,
    prefill_tflops: prefillFlops(config, batch, inputLen) / prefillS / 1e12,
    decode_sampling: deviceGreedy ? "greedy on the device" : "logits to the host",
    decode_overlap: overlap,
    decode_step_s_median: stepS,
    // The replayed graph's own device time: the step minus this is host work and launch gaps
    // (under tensor parallelism rank 0's graph also waits for the other ranks at each all-reduce).
    // With the overlap schedule: the last step's replay alone.
    decode_graph_gpu_s_median: graphMs.length > 0 ? median(graphMs) / 1000 : null,
    decode_tokens_per_s: batch / stepS,
    decode_step_bytes: stepBytes,
    decode_weight_bytes: bytes.weights,
    decode_kv_bytes: bytes.kv,
    achieved_bandwidth_gb_s: stepBytes / stepS / 1e9,
    copy_bandwidth_gb_s: copyBw / 1e9,
    copy_bandwidth_bytes: copy.bytes, // the copy it was measured with (source + destination)
    bound_tokens_per_s: (batch * copyBw) / stepBytes,
    fraction_of_bound: stepBytes / stepS / copyBw,
    first_sequence_ids: firstIds,
  };
  await close();
  if (values.json) console.log(JSON.stringify(result));
  else {
    for (const [k, v] of Object.entries(result)) console.log(`${k.padEnd(26)} ${typeof v === "number" ? Number(v.toPrecision(5)) : v}`);
  }
  return 0;
}
