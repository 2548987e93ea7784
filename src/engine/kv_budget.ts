// KV pool sizes by SGLang's hybrid cell formula (sglang-notes.md §2): one "token" costs
// B·n_full + r·B·n_swa bytes; the full pool gets budget / cell tokens and the SWA pool r times
// as many. The budget is the device memory left after the weights (GPU), or a fixed host
// budget (CPU). The GPU plan (`tsglang plan`) checks --context-length before weights load.

import type { AttentionSpec } from "../runtime/backend.js";
import type { Llama4Config } from "../model/config.js";

export interface KvBudgetOptions {
  contextLength?: number;
  maxTotalTokens?: number;
  swaFullTokensRatio?: number;
  /** Bytes for KV (default: 256 MiB on the host). */
  kvBytes?: number;
  /** Bytes per stored KV element (fp32 on the CPU: 4; bf16: 2). */
  elementBytes?: number;
}

export interface KvPlan {
  fullTokens: number;
  swaTokens: number;
  contextLength: number;
}

export function planKvPools(cfg: Llama4Config, layers: AttentionSpec[], o: KvBudgetOptions, kvHeads = cfg.numKvHeads): KvPlan {
  const perLayer = 2 * kvHeads * cfg.headDim * (o.elementBytes ?? 4); // K and V
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
