// Opens a checkpoint directory: config, weights on a backend, and the model. The one place
// that turns `--model-path` into something that computes.

import { existsSync, statSync } from "node:fs";
import type { Backend } from "../runtime/backend.js";
import { type Llama4Config, loadConfig } from "./config.js";
import { Llama4Model } from "./llama4.js";
import { type LoadOptions, loadWeights } from "./weights.js";

export interface LoadedModel {
  dir: string;
  config: Llama4Config;
  model: Llama4Model;
}

export async function loadModel(dir: string, backend: Backend, opts: LoadOptions & { hybridKv?: boolean } = {}): Promise<LoadedModel> {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`model path ${dir} is not a directory`);
  const config = loadConfig(dir);
  const weights = await loadWeights(dir, config, backend, opts);
  return { dir, config, model: new Llama4Model(config, weights, backend, { hybridKv: opts.hybridKv, shard: opts.shard }) };
}
