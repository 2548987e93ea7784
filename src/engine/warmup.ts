// GEMM warm-up at load: every weight the forward multiplies, at every row count a step can pass
// it, planned and run once before the first request (SGLang also warms up before serving). On
// the CUDA backend this chooses each cuBLASLt bucket's algorithm (timed, blaslt.cc) and loads its
// kernels, which a 1 × 2048 prefill otherwise paid for inside its first steps.

import type { GemmWarmup } from "../runtime/backend.js";
import { type ForwardModel, Llama4Model } from "../model/llama4.js";

export interface WarmupLimits {
  /** The most tokens one forward step carries (chunked-prefill budget plus decode rows). */
  maxTokens: number;
  /** The most logit rows of one step (sequences per step). */
  maxLogitRows: number;
}

/** The GEMMs of Llama4Model.logits on one rank: which weight, at how many rows at most. */
export function gemmWarmups(model: Llama4Model, limits: WarmupLimits): GemmWarmup[] {
  const tokens = Math.max(1, Math.floor(limits.maxTokens));
  const specs: GemmWarmup[] = [];
  const add = (w: GemmWarmup["weight"] | undefined) => {
    if (w) specs.push({ weight: w, maxRows: tokens });
  };
  for (const l of model.weights.layers) {
    // q, k and v run as one GEMM over their stacked tensor where they have one (linearMany).
    for (const w of l.qkv ? [l.qkv, l.o] : [l.q, l.k, l.v, l.o]) add(w);
    // MoE: a routed expert can get any number of the step's rows, so every count up to them all.
    for (const w of [l.router, l.sharedGateUp, l.sharedDown, l.expertsGateUp, l.expertsDown, l.mlpGateUp, l.mlpDown]) add(w);
  }
  specs.push({ weight: model.weights.lmHead, maxRows: Math.max(1, Math.min(tokens, Math.floor(limits.maxLogitRows))), outF32: model.shard.tp === 1 });
  return specs;
}

/** One rank's warm-up on its own backend (its shards' shapes); null where the backend has none. */
export function warmupRank(model: ForwardModel, limits: WarmupLimits): { gemms: number; shapes: number } | null {
  if (!(model instanceof Llama4Model)) return null;
  return model.backend.prepareGemms?.(gemmWarmups(model, limits)) ?? null;
}

/**
 * Runs the GEMM warm-up where the backend has one (prepareGemms): on a lone rank here; under
 * tensor parallelism every rank on its own thread (ForwardModel.warmupGemms; the counts and time
 * are rank 0's). Null where there is none (the CPU backend).
 */
export function warmupGemms(model: ForwardModel, limits: WarmupLimits): { gemms: number; shapes: number; seconds: number } | null {
  const t0 = performance.now();
  const r = model.warmupGemms ? model.warmupGemms(limits) : warmupRank(model, limits);
  return r && { ...r, seconds: (performance.now() - t0) / 1000 };
}
