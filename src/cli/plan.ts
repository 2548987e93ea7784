// `tsglang plan`: prints the per-GPU memory plan (weights, KV pools, context-sized buffers,
// reserve) and the longest context that fits, with no GPU present. Same flags as `launch` where
// they overlap (SGLang's names). A context length that does not fit is a one-line error that
// states the largest value that does.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadConfig, parseConfig, type Llama4Config } from "../model/config.js";
import { GPUS, PlanError, fmtGiB, gpuFromBytes, planMemory, visionParamCount, type GpuName, type MemoryPlan, type PlanInput } from "../runtime/planner.js";
import { ArgsError, formatHelp, parseArgs } from "./args.js";

const FLAGS = {
  "model-path": { type: "string", help: "model directory holding config.json", metavar: "DIR" },
  "model-config": { type: "string", help: "a config.json file (instead of --model-path)", metavar: "FILE" },
  tp: { type: "int", min: 1, default: 1, alias: ["tp-size"], help: "tensor-parallel size (GPUs)" },
  ep: { type: "int", min: 1, default: 1, alias: ["ep-size"], help: "expert-parallel size (divides --tp)" },
  gpu: { type: "string", choices: ["h100", "h200"], help: "GPU kind: h100 (81559 MiB) or h200 (143771 MiB)" },
  "gpu-memory-bytes": { type: "number", min: 1, help: "GPU memory in bytes as nvidia-smi reports it (instead of --gpu)" },
  "context-length": { type: "int", min: 1, help: "tokens one request may hold [default: the config's, lowered to what fits]" },
  "disable-hybrid-swa-memory": { type: "boolean", help: "keep every token in every layer (no SWA pool for the chunked-local layers)" },
  "swa-full-tokens-ratio": { type: "number", keywords: ["auto"], default: 0.8, help: "SWA-layer pool tokens / full-layer pool tokens, in (0, 1]; auto picks the largest ≤ 0.8 that fits" },
  "mem-fraction-static": { type: "number", help: "fraction of free GPU memory for weights, KV pools and tables [default: SGLang's rule]" },
  "chunked-prefill-size": { type: "int", help: "tokens per prefill chunk, -1 disables [default: 8192 on H100/H200]" },
  "max-prefill-tokens": { type: "int", min: 1, default: 16384, help: "token budget of one prefill batch" },
  "max-running-requests": { type: "int", min: 1, help: "requests decoded at once [default: SGLang's, lowered to what fits]" },
  "cuda-graph-max-bs": { type: "int", min: 0, help: "largest decode batch captured in a CUDA graph [default: 512 at tp ≥ 4 on H100/H200]" },
  "disable-cuda-graph": { type: "boolean", help: "no decode CUDA graphs (and no graph buffers)" },
  "page-size": { type: "int", min: 1, default: 1, help: "tokens per KV page" },
  "kv-cache-dtype": { type: "string", choices: ["auto", "bf16", "bfloat16", "fp8_e4m3"], default: "auto", help: "KV cache dtype (auto = bf16)" },
  json: { type: "boolean", help: "print one JSON object instead of the table" },
} as const;

const SUMMARY =
  "Print the per-GPU memory plan of a Llama 4 model (SGLang's formula, see docs/MEMORY.md) and the\n" +
  "longest context that fits. No GPU is needed. Exits 1 with one line when the plan does not fit.";

export async function main(argv: string[]): Promise<number> {
  try {
    const { values: v, help, given } = parseArgs(FLAGS, argv);
    if (help) {
      console.log(formatHelp("plan", SUMMARY, FLAGS));
      return 0;
    }
    if ((v["model-path"] === undefined) === (v["model-config"] === undefined)) throw new ArgsError("give exactly one of --model-path DIR or --model-config FILE");
    if ((v.gpu === undefined) === (v["gpu-memory-bytes"] === undefined)) throw new ArgsError("give exactly one of --gpu h100|h200 or --gpu-memory-bytes N");
    const ratio = v["swa-full-tokens-ratio"];
    if (ratio !== "auto" && !(ratio > 0 && ratio <= 1)) throw new ArgsError(`--swa-full-tokens-ratio must be in (0, 1] or 'auto', got ${ratio}`);

    const { config, raw, source } = readModel(v["model-path"], v["model-config"]);
    if (raw.quantization_config !== undefined || (isObject(raw.text_config) && raw.text_config.quantization_config !== undefined)) {
      throw new PlanError(`${source}: quantized checkpoints (quantization_config) are not planned yet; only bf16 weights`);
    }
    const gpu = v.gpu !== undefined ? GPUS[v.gpu as GpuName] : gpuFromBytes(v["gpu-memory-bytes"] as number);
    const input: PlanInput = {
      config,
      visionParams: visionParamCount(raw.vision_config, config.hiddenSize),
      tp: v.tp,
      ep: v.ep,
      gpu,
      memFractionStatic: v["mem-fraction-static"],
      chunkedPrefillSize: v["chunked-prefill-size"],
      maxPrefillTokens: v["max-prefill-tokens"],
      maxRunningRequests: v["max-running-requests"],
      cudaGraphMaxBs: v["disable-cuda-graph"] ? 0 : v["cuda-graph-max-bs"],
      pageSize: v["page-size"],
      contextLength: v["context-length"],
      hybrid: !v["disable-hybrid-swa-memory"],
      swaFullTokensRatio: given.has("swa-full-tokens-ratio") ? ratio : undefined,
      kvCacheDtype: v["kv-cache-dtype"] === "fp8_e4m3" ? "fp8_e4m3" : "bf16",
    };
    const plan = planMemory(input);
    if (!plan.fits) {
      console.error(`tsglang plan: error: ${plan.error}`);
      return 1;
    }
    console.log(v.json ? JSON.stringify(toJson(plan, source)) : formatPlan(plan, source, config));
    return 0;
  } catch (e) {
    if (e instanceof ArgsError) {
      console.error(`tsglang plan: error: ${e.message} (see tsglang plan --help)`);
      return 2;
    }
    console.error(`tsglang plan: error: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function readModel(dir: string | undefined, file: string | undefined): { config: Llama4Config; raw: Record<string, unknown>; source: string } {
  const path = dir !== undefined ? join(dir, "config.json") : (file as string);
  if (dir !== undefined) {
    const config = loadConfig(dir); // names the path on a missing or malformed file
    return { config, raw: JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>, source: path };
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(raw)) throw new Error(`${path} must hold a JSON object`);
  return { config: parseConfig(raw), raw, source: path };
}

/** The --json object: snake_case, bytes per GPU, token counts. */
export function toJson(p: MemoryPlan, model?: string): Record<string, unknown> {
  return {
    model,
    gpu: p.gpu.name,
    gpu_memory_mib: p.gpu.memoryMiB,
    tp: p.tp,
    ep: p.ep,
    fits: p.fits,
    context_length: p.contextLength,
    context_length_source: p.contextLengthSource,
    max_context_length: p.maxContextLength,
    memory_max_context_length: p.memoryMaxContextLength,
    hybrid_swa_memory: p.hybrid,
    swa_full_tokens_ratio: p.swaFullTokensRatio,
    swa_full_tokens_ratio_source: p.swaFullTokensRatioSource,
    mem_fraction_static: p.memFractionStatic,
    chunked_prefill_size: p.chunkedPrefillSize,
    max_prefill_tokens: p.maxPrefillTokens,
    max_running_requests: p.maxRunningRequests,
    cuda_graph_max_bs: p.cudaGraphMaxBs,
    page_size: p.pageSize,
    kv_cache_dtype: p.kvCacheDtype,
    full_pool_tokens: p.fullPoolTokens,
    swa_pool_tokens: p.swaPoolTokens,
    global_layers: p.globalLayers,
    local_layers: p.localLayers,
    attention_window: p.attentionWindow,
    kv_bytes_per_token_per_layer: p.kvBytesPerTokenPerLayer,
    kv_bytes_per_token_global: p.kvBytesPerTokenGlobal,
    kv_bytes_per_token_local: p.kvBytesPerTokenLocal,
    swa_tokens_per_request: p.swaTokensPerRequest,
    swa_tokens_in_flight: p.swaTokensInFlight,
    gpu_memory_bytes: p.gpuMemoryBytes,
    runtime_overhead_bytes: p.runtimeOverheadBytes,
    free_before_load_bytes: p.preBytes,
    static_bytes: p.staticBytes,
    weights_bytes_per_gpu: p.weightsBytesPerGpu,
    weights_params_per_gpu: p.weights.totalParams,
    vision_params_per_gpu: p.weights.visionParams,
    kv_budget_bytes: p.kvBudgetBytes,
    req_to_token_bytes: p.reqToTokenBytes,
    graph_buffer_bytes: p.graphBufferBytes,
    full_pool_bytes: p.fullPoolBytes,
    swa_pool_bytes: p.swaPoolBytes,
    unused_bytes: p.unusedBytes,
    reserve_bytes: p.reserveBytes,
    activation_bytes: p.activationBytes,
    notes: p.notes,
  };
}

const int = (n: number): string => Math.round(n).toLocaleString("en-US");

export function formatPlan(p: MemoryPlan, source: string, cfg: Llama4Config): string {
  const moeLayers = cfg.layers.filter((l) => l.moe).length;
  const head = [
    `model   ${source}: ${cfg.numLayers} layers (${p.globalLayers} global, ${p.localLayers} chunked-local ${p.attentionWindow}), ${cfg.numExperts} experts in ${moeLayers} MoE layers`,
    `machine ${p.tp} × ${p.gpu.name} (${int(p.gpu.memoryMiB)} MiB), tp ${p.tp}, ep ${p.ep}`,
    "",
  ];
  const rows: [string, string, string][] = [
    ["GPU memory (nvidia-smi)", fmtGiB(p.gpuMemoryBytes), ""],
    ["driver, CUDA context, NCCL", fmtGiB(p.runtimeOverheadBytes), ""],
    ["free before load (pre)", fmtGiB(p.preBytes), ""],
    ["mem_fraction_static", String(p.memFractionStatic), "weights + KV pools + tables ≤ f·pre"],
    ["  weights", fmtGiB(p.weightsBytesPerGpu), `${int(p.weights.totalParams)} params, vision ${int(p.weights.visionParams)} replicated`],
    ["  req_to_token table", fmtGiB(p.reqToTokenBytes), `int32 [${int(p.maxRunningRequests + 1)}, ${int(p.contextLength + 4)}]`],
    ["  decode graph buffers", fmtGiB(p.graphBufferBytes), `page tables for ${p.cudaGraphMaxBs} graph rows × ${int(p.contextLength)} tokens`],
    ["  full KV pool", fmtGiB(p.fullPoolBytes), `${int(p.fullPoolTokens)} tokens × ${int(p.hybrid ? p.kvBytesPerTokenGlobal : p.kvBytesPerTokenGlobal + p.kvBytesPerTokenLocal)} B (${p.hybrid ? `${p.globalLayers} global layers` : "all layers"})`],
    ["  SWA KV pool", fmtGiB(p.swaPoolBytes), p.hybrid ? `${int(p.swaPoolTokens)} tokens × ${int(p.kvBytesPerTokenLocal)} B (${p.localLayers} local layers)` : "off"],
    ["  unused", fmtGiB(p.unusedBytes), ""],
    ["reserve (1−f)·pre", fmtGiB(p.reserveBytes), `activations, logits, graph pools: estimate ${fmtGiB(p.activationBytes)}`],
  ];
  const w0 = Math.max(...rows.map((r) => r[0].length)) + 2;
  const w1 = Math.max(...rows.map((r) => r[1].length)) + 2;
  const table = rows.map(([a, b, c]) => `${a.padEnd(w0)}${b.padStart(w1 - 2).padEnd(w1)}${c}`.trimEnd());
  const settings = [
    "",
    `context_length           ${int(p.contextLength)} (${p.contextLengthSource === "flag" ? "--context-length" : p.contextLengthSource === "config" ? "config max_position_embeddings" : "lowered to fit"})`,
    `max_context_length       ${int(p.maxContextLength)}${p.memoryMaxContextLength > p.maxContextLength ? ` (memory alone: ${int(p.memoryMaxContextLength)}; capped by max_position_embeddings)` : ""}`,
    `hybrid SWA memory        ${p.hybrid ? `on, --swa-full-tokens-ratio ${p.swaFullTokensRatio}${p.swaFullTokensRatioSource === "auto" ? " (auto)" : ""}` : "off"}`,
    `max_running_requests     ${int(p.maxRunningRequests)}`,
    `cuda_graph_max_bs        ${p.cudaGraphMaxBs}`,
    `chunked_prefill_size     ${p.chunkedPrefillSize}`,
    `KV per token per GPU     ${int(p.kvBytesPerTokenGlobal)} B global + ${int(p.kvBytesPerTokenLocal)} B local (${p.kvCacheDtype})`,
  ];
  const notes = p.notes.map((n) => `note: ${n}`);
  return [...head, ...table, ...settings, ...(notes.length ? ["", ...notes] : [])].join("\n");
}
