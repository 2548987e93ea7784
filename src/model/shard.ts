// How one tensor-parallel rank's share of Llama 4 is cut, as SGLang cuts it:
// - q/k/v column-parallel by head (KV heads replicated when there are fewer than ranks);
// - o_proj and every down projection row-parallel, summed by an all-reduce;
// - routed and shared experts and dense MLPs split along their intermediate width, or with
//   expert parallelism (ep = tp) whole experts per rank;
// - embedding and lm_head split by vocabulary (lookup all-reduced, logits all-gathered);
// - norms and the router replicated.

import type { Llama4Config } from "./config.js";

export interface Shard {
  rank: number;
  /** Tensor-parallel size. */
  tp: number;
  /** Expert-parallel size: 1, or equal to tp (whole experts per rank). */
  ep: number;
}

export const NO_SHARD: Shard = { rank: 0, tp: 1, ep: 1 };

export interface ShardDims {
  heads: number;
  headStart: number;
  kvHeads: number;
  kvHeadStart: number;
  /** Routed-expert width held by this rank, and where it starts in the full width. */
  expertWidth: number;
  expertWidthStart: number;
  /** Routed experts held by this rank. */
  experts: number;
  expertStart: number;
  sharedWidth: number;
  sharedWidthStart: number;
  mlpWidth: number;
  mlpWidthStart: number;
  vocab: number;
  vocabStart: number;
}

function split(total: number, parts: number, rank: number, what: string): [number, number] {
  if (total % parts !== 0) throw new Error(`${what} (${total}) is not divisible by ${parts} ranks`);
  const n = total / parts;
  return [n, rank * n];
}

export function shardDims(cfg: Llama4Config, s: Shard): ShardDims {
  if (!(Number.isInteger(s.tp) && s.tp >= 1)) throw new Error(`--tp must be a positive integer, got ${s.tp}`);
  if (s.ep !== 1 && s.ep !== s.tp) throw new Error(`--ep-size must be 1 or equal to --tp (${s.tp}), got ${s.ep}`);
  const [heads, headStart] = split(cfg.numHeads, s.tp, s.rank, "num_attention_heads");
  let kvHeads: number, kvHeadStart: number;
  if (cfg.numKvHeads >= s.tp) [kvHeads, kvHeadStart] = split(cfg.numKvHeads, s.tp, s.rank, "num_key_value_heads");
  else {
    if (s.tp % cfg.numKvHeads !== 0) throw new Error(`--tp ${s.tp} is not a multiple of num_key_value_heads ${cfg.numKvHeads}`);
    [kvHeads, kvHeadStart] = [1, Math.floor((s.rank * cfg.numKvHeads) / s.tp)];
  }
  const [sharedWidth, sharedWidthStart] = split(cfg.intermediateSize, s.tp, s.rank, "intermediate_size");
  const ep = s.ep > 1;
  const [experts, expertStart] = ep ? split(cfg.numExperts, s.ep, s.rank, "num_local_experts") : [cfg.numExperts, 0];
  const [expertWidth, expertWidthStart] = ep ? [cfg.intermediateSize, 0] : [sharedWidth, sharedWidthStart];
  const hasDense = cfg.layers.some((l) => !l.moe);
  const [mlpWidth, mlpWidthStart] = hasDense ? split(cfg.intermediateSizeMlp, s.tp, s.rank, "intermediate_size_mlp") : [0, 0];
  const [vocab, vocabStart] = split(cfg.vocabSize, s.tp, s.rank, "vocab_size");
  return { heads, headStart, kvHeads, kvHeadStart, expertWidth, expertWidthStart, experts, expertStart, sharedWidth, sharedWidthStart, mlpWidth, mlpWidthStart, vocab, vocabStart };
}
