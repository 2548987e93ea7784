// KV pool sizes for the CPU backend, by SGLang's hybrid cell formula (sglang-notes.md §2):
// one "token" costs B·n_full + r·B·n_swa bytes; the full pool gets budget / cell tokens and the
// SWA pool r times as many. GPU runs size pools with the memory planner instead.

import type { AttentionSpec } from "../runtime/backend.js";
import type { Llama4Config } from "../model/config.js";

export interface KvBudgetOptions {
  contextLength?: number;
  maxTotalTokens?: number;
  swaFullTokensRatio?: number;
  /** Bytes for KV on the CPU backend (fp32). */
  kvBytes?: number;
}

export interface KvPlan {
  fullTokens: number;
  swaTokens: number;
  contextLength: number;
}

export function planCpuKv(cfg: Llama4Config, layers: AttentionSpec[], o: KvBudgetOptions): KvPlan {
  const perLayer = 2 * cfg.numKvHeads * cfg.headDim * 4; // K and V, fp32
  const nFull = layers.filter((l) => l.pool === "full").length;
  const nSwa = layers.length - nFull;
  const ratio = o.swaFullTokensRatio ?? 0.8;
  if (!(ratio > 0 && ratio <= 1)) throw new Error(`--swa-full-tokens-ratio must be in (0, 1], got ${ratio}`);
  const cell = perLayer * nFull + (nSwa > 0 ? ratio : 0) * perLayer * nSwa;
  const budget = o.kvBytes ?? 256 * 2 ** 20;
  let fullTokens = Math.floor(budget / cell);
  if (o.maxTotalTokens !== undefined) fullTokens = Math.min(fullTokens, o.maxTotalTokens);
  const swaTokens = nSwa > 0 ? Math.floor(fullTokens * ratio) : 0;
  const limit = Math.min(fullTokens, cfg.maxPositionEmbeddings);
  if (o.contextLength !== undefined && o.contextLength > limit) {
    throw new Error(
      `--context-length ${o.contextLength} does not fit: the largest that fits with these settings is ${limit} ` +
        `(KV pool ${fullTokens} tokens, max_position_embeddings ${cfg.maxPositionEmbeddings})`,
    );
  }
  return { fullTokens, swaTokens, contextLength: o.contextLength ?? limit };
}
