// Llama 4 text configuration: parse Hugging Face config.json (both the nested
// Llama4ForConditionalGeneration form and the flat Llama4ForCausalLM / llama4_text form,
// hub-style `rope_theta` + `rope_scaling` or transformers-5 `rope_parameters`) and derive the
// per-layer schedule of llama4-spec.md §1.2. Every odd or contradictory value is an error that
// names the field: a wrong schedule would silently produce a different model.

import { readFileSync } from "node:fs";
import { join } from "node:path";

export interface RopeScaling {
  type: "llama3";
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface LayerSpec {
  index: number;
  /** RoPE layers use chunked-local attention; NoPE layers use global attention. */
  rope: boolean;
  /** Chunk size for chunked-local attention, or 0 for global attention. */
  chunkSize: number;
  qkNorm: boolean;
  /** Attention temperature tuning of the query (NoPE layers only). */
  temperatureTuning: boolean;
  moe: boolean;
}

export interface Llama4Config {
  /** "conditional" = Llama4ForConditionalGeneration (tensors under `language_model.`); "causal" = flat. */
  layout: "conditional" | "causal";
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  intermediateSize: number;
  intermediateSizeMlp: number;
  numExperts: number;
  expertsPerToken: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  attentionChunkSize: number;
  floorScale: number;
  attnScale: number;
  maxPositionEmbeddings: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
  tieWordEmbeddings: boolean;
  torchDtype: string;
  layers: LayerSpec[];
}

export class ConfigError extends Error {
  constructor(field: string, message: string) {
    super(`config.json: field '${field}': ${message}`);
    this.name = "ConfigError";
  }
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Reads `dir/config.json` and parses it; a missing or malformed file names the path. */
export function loadConfig(dir: string): Llama4Config {
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(json)) throw new Error(`${path} must hold a JSON object`);
  return parseConfig(json);
}

export function parseConfig(root: Json): Llama4Config {
  let layout: Llama4Config["layout"];
  let text: Json;
  let prefix = "";
  const archs = root.architectures;
  if (archs !== undefined && !(Array.isArray(archs) && archs.every((a) => typeof a === "string"))) {
    throw new ConfigError("architectures", "must be a list of strings");
  }
  if (root.model_type === "llama4" || isObject(root.text_config)) {
    if (!isObject(root.text_config)) throw new ConfigError("text_config", "missing for model_type 'llama4'");
    layout = "conditional";
    text = root.text_config;
    prefix = "text_config.";
  } else if (root.model_type === "llama4_text") {
    layout = "causal";
    text = root;
  } else {
    throw new ConfigError(
      "model_type",
      `expected 'llama4' or 'llama4_text', got ${JSON.stringify(root.model_type)}`,
    );
  }
  if (text.model_type !== undefined && text.model_type !== "llama4_text") {
    throw new ConfigError(`${prefix}model_type`, `expected 'llama4_text', got ${JSON.stringify(text.model_type)}`);
  }
  const f = new FieldReader(text, prefix);

  const hiddenSize = f.int("hidden_size", { min: 1 });
  const numHeads = f.int("num_attention_heads", { min: 1 });
  const numKvHeads = f.int("num_key_value_heads", { min: 1, default: numHeads });
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`${prefix}num_key_value_heads`, `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  }
  const headDim = f.int("head_dim", { min: 1, default: Math.floor(hiddenSize / numHeads) });
  if (headDim % 2 !== 0) throw new ConfigError(`${prefix}head_dim`, `must be even for RoPE, got ${headDim}`);
  const numLayers = f.int("num_hidden_layers", { min: 1 });
  const numExperts = f.int("num_local_experts", { min: 1, default: 16 });
  const expertsPerToken = f.int("num_experts_per_tok", { min: 1, default: 1 });
  if (expertsPerToken > numExperts) {
    throw new ConfigError(`${prefix}num_experts_per_tok`, `${expertsPerToken} exceeds num_local_experts ${numExperts}`);
  }
  if (expertsPerToken !== 1) {
    throw new ConfigError(`${prefix}num_experts_per_tok`, `only top-1 routing (as in Llama 4) is supported, got ${expertsPerToken}`);
  }
  const hiddenAct = text.hidden_act ?? "silu";
  if (hiddenAct !== "silu") throw new ConfigError(`${prefix}hidden_act`, `only 'silu' is supported, got ${JSON.stringify(hiddenAct)}`);
  if (text.attention_bias === true) throw new ConfigError(`${prefix}attention_bias`, "biased attention projections are not part of Llama 4");

  const { theta, scaling } = parseRope(text, prefix);

  const chunk = f.int("attention_chunk_size", { min: 1, default: 8192 });
  const useQkNorm = f.bool("use_qk_norm", true);
  const tt = text.attn_temperature_tuning;
  // HF configs ship `attn_temperature_tuning: 4` (truthy means on); booleans and numbers accepted.
  if (tt !== undefined && typeof tt !== "boolean" && typeof tt !== "number") {
    throw new ConfigError(`${prefix}attn_temperature_tuning`, `must be a boolean or number, got ${JSON.stringify(tt)}`);
  }
  const temperatureTuning = tt === undefined ? true : Boolean(tt);
  const floorScale = f.num("floor_scale", { min: Number.MIN_VALUE, default: 8192 });
  const attnScale = f.num("attn_scale", { default: 0.1 });

  const ropeLayers = parseNoRopeLayers(text, prefix, numLayers);
  const moeLayers = parseMoeLayers(text, prefix, numLayers);

  const layers: LayerSpec[] = [];
  for (let i = 0; i < numLayers; i++) {
    const rope = ropeLayers[i];
    layers.push({
      index: i,
      rope,
      chunkSize: rope ? chunk : 0,
      qkNorm: useQkNorm && rope,
      temperatureTuning: temperatureTuning && !rope,
      moe: moeLayers.has(i),
    });
  }

  const vocabSize = f.int("vocab_size", { min: 1 });
  const tie = (text.tie_word_embeddings ?? root.tie_word_embeddings ?? false) as unknown;
  if (typeof tie !== "boolean") throw new ConfigError("tie_word_embeddings", "must be a boolean");
  const eos = text.eos_token_id ?? root.eos_token_id;
  const eosTokenIds = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos];
  if (!eosTokenIds.every((x) => Number.isInteger(x) && (x as number) >= 0)) {
    throw new ConfigError(`${prefix}eos_token_id`, "must be an integer or a list of integers");
  }
  const optId = (name: string): number | null => {
    const v = text[name] ?? root[name];
    if (v === undefined || v === null) return null;
    if (!Number.isInteger(v) || (v as number) < 0) throw new ConfigError(`${prefix}${name}`, "must be a non-negative integer");
    return v as number;
  };

  return {
    layout,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    intermediateSize: f.int("intermediate_size", { min: 1 }),
    intermediateSizeMlp: f.int("intermediate_size_mlp", { min: 1, default: 16384 }),
    numExperts,
    expertsPerToken,
    rmsNormEps: f.num("rms_norm_eps", { min: 0, default: 1e-5 }),
    ropeTheta: theta,
    ropeScaling: scaling,
    attentionChunkSize: chunk,
    floorScale,
    attnScale,
    maxPositionEmbeddings: f.int("max_position_embeddings", { min: 1, default: 4096 * 32 }),
    bosTokenId: optId("bos_token_id"),
    eosTokenIds: eosTokenIds as number[],
    padTokenId: optId("pad_token_id"),
    tieWordEmbeddings: tie,
    torchDtype: String(text.torch_dtype ?? text.dtype ?? root.torch_dtype ?? root.dtype ?? "bfloat16"),
    layers,
  };
}

class FieldReader {
  constructor(private readonly obj: Json, private readonly prefix: string) {}

  num(name: string, o: { min?: number; default?: number } = {}): number {
    const v = this.obj[name];
    if (v === undefined || v === null) {
      if (o.default !== undefined) return o.default;
      throw new ConfigError(this.prefix + name, "missing");
    }
    if (typeof v !== "number" || !Number.isFinite(v)) throw new ConfigError(this.prefix + name, `must be a number, got ${JSON.stringify(v)}`);
    if (o.min !== undefined && v < o.min) throw new ConfigError(this.prefix + name, `must be ≥ ${o.min}, got ${v}`);
    return v;
  }

  int(name: string, o: { min?: number; default?: number } = {}): number {
    const v = this.num(name, o);
    if (!Number.isInteger(v)) throw new ConfigError(this.prefix + name, `must be an integer, got ${v}`);
    return v;
  }

  bool(name: string, dflt: boolean): boolean {
    const v = this.obj[name];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "boolean") throw new ConfigError(this.prefix + name, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }
}

function parseRope(text: Json, prefix: string): { theta: number; scaling: RopeScaling | null } {
  // transformers 5 folds theta and scaling into `rope_parameters`; the hub files use rope_theta +
  // rope_scaling. If both are present they must agree.
  let params: Json | null = null;
  let field = "rope_scaling";
  if (isObject(text.rope_parameters)) {
    params = text.rope_parameters;
    field = "rope_parameters";
  } else if (text.rope_parameters !== undefined && text.rope_parameters !== null) {
    throw new ConfigError(prefix + "rope_parameters", "must be an object");
  }
  let theta = typeof text.rope_theta === "number" ? text.rope_theta : undefined;
  if (text.rope_theta !== undefined && typeof text.rope_theta !== "number") {
    throw new ConfigError(prefix + "rope_theta", "must be a number");
  }
  if (params && params.rope_theta !== undefined) {
    if (typeof params.rope_theta !== "number") throw new ConfigError(prefix + "rope_parameters.rope_theta", "must be a number");
    if (theta !== undefined && theta !== params.rope_theta) {
      throw new ConfigError(prefix + "rope_theta", `${theta} contradicts rope_parameters.rope_theta ${params.rope_theta}`);
    }
    theta = params.rope_theta;
  }
  theta ??= 500000;
  if (!(theta > 0)) throw new ConfigError(prefix + "rope_theta", `must be positive, got ${theta}`);

  let scaling: Json | null = params;
  if (isObject(text.rope_scaling)) {
    if (params && (params.rope_type ?? "default") !== "default" && params.rope_type !== (text.rope_scaling.rope_type ?? text.rope_scaling.type)) {
      throw new ConfigError(prefix + "rope_scaling", "contradicts rope_parameters");
    }
    scaling = text.rope_scaling;
    field = "rope_scaling";
  } else if (text.rope_scaling !== undefined && text.rope_scaling !== null) {
    throw new ConfigError(prefix + "rope_scaling", "must be an object or null");
  }
  if (!scaling) return { theta, scaling: null };
  const type = scaling.rope_type ?? scaling.type ?? "default";
  if (type === "default") return { theta, scaling: null };
  if (type !== "llama3") throw new ConfigError(`${prefix}${field}.rope_type`, `only 'llama3' or 'default' are supported, got ${JSON.stringify(type)}`);
  const r = new FieldReader(scaling, `${prefix}${field}.`);
  const s: RopeScaling = {
    type: "llama3",
    factor: r.num("factor", { min: Number.MIN_VALUE }),
    lowFreqFactor: r.num("low_freq_factor", { min: Number.MIN_VALUE }),
    highFreqFactor: r.num("high_freq_factor", { min: Number.MIN_VALUE }),
    originalMaxPositionEmbeddings: r.int("original_max_position_embeddings", { min: 1 }),
  };
  if (s.highFreqFactor < s.lowFreqFactor) {
    throw new ConfigError(`${prefix}${field}.high_freq_factor`, `${s.highFreqFactor} is below low_freq_factor ${s.lowFreqFactor}`);
  }
  return { theta, scaling: s };
}

/** Returns, per layer, whether it uses RoPE. HF's `no_rope_layers` is inverted: 1 = uses RoPE. */
function parseNoRopeLayers(text: Json, prefix: string, n: number): boolean[] {
  const list = text.no_rope_layers;
  if (Array.isArray(list) && list.length > 0) {
    if (list.length !== n) throw new ConfigError(prefix + "no_rope_layers", `has ${list.length} entries for ${n} layers`);
    return list.map((v, i) => {
      if (v !== 0 && v !== 1 && v !== true && v !== false) {
        throw new ConfigError(`${prefix}no_rope_layers[${i}]`, `must be 0 or 1, got ${JSON.stringify(v)}`);
      }
      return Boolean(v);
    });
  }
  if (list !== undefined && list !== null && !Array.isArray(list)) throw new ConfigError(prefix + "no_rope_layers", "must be a list");
  const r = new FieldReader(text, prefix);
  const interval = r.int("no_rope_layer_interval", { min: 1, default: 4 });
  return Array.from({ length: n }, (_, i) => (i + 1) % interval !== 0);
}

function parseMoeLayers(text: Json, prefix: string, n: number): Set<number> {
  const list = text.moe_layers;
  const r = new FieldReader(text, prefix);
  const step = r.int("interleave_moe_layer_step", { min: 0, default: 1 });
  // `moe_layers` wins over the step rule when both exist (llama4-spec.md §7.18).
  if (Array.isArray(list)) {
    const set = new Set<number>();
    for (const v of list) {
      if (!Number.isInteger(v) || v < 0 || v >= n) throw new ConfigError(prefix + "moe_layers", `entry ${JSON.stringify(v)} is not a layer index below ${n}`);
      set.add(v);
    }
    return set;
  }
  if (list !== undefined && list !== null) throw new ConfigError(prefix + "moe_layers", "must be a list");
  const set = new Set<number>();
  if (step === 0) return set;
  for (let i = 0; i < n; i++) if ((i + 1) % step === 0) set.add(i);
  return set;
}

/** Inverse RoPE frequencies f_i for pairs i = 0..headDim/2-1, with llama3 scaling (fp32 like the references). */
export function ropeInvFreq(cfg: Pick<Llama4Config, "headDim" | "ropeTheta" | "ropeScaling">): Float32Array {
  const half = cfg.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    // torch: 1 / theta ** (arange(0, dim, 2).float() / dim), computed in fp32.
    const exponent = Math.fround((2 * i) / cfg.headDim);
    out[i] = Math.fround(1 / Math.fround(Math.pow(cfg.ropeTheta, exponent)));
  }
  const s = cfg.ropeScaling;
  if (!s) return out;
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const f = out[i];
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) {
      out[i] = Math.fround(f / s.factor);
      continue;
    }
    // Middle band only (empty when low == high, so no division by zero there).
    const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    out[i] = Math.fround((1 - smooth) * (f / s.factor) + smooth * f);
  }
  return out;
}

/** Query temperature τ(p) for NoPE layers (llama4-spec.md §1.5.5). */
export function attentionTemperature(cfg: Pick<Llama4Config, "floorScale" | "attnScale">, position: number): number {
  return Math.fround(1 + cfg.attnScale * Math.log(Math.floor((position + 1) / cfg.floorScale) + 1));
}
