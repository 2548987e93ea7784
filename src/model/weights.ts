// Maps a Hugging Face Llama 4 checkpoint (llama4-spec.md §3) onto the tensors the model uses,
// checking every shape against the config before anything is uploaded, so a wrong checkpoint
// fails with the tensor and file named rather than deep inside a kernel.

import type { Backend, HostTensor, Tensor } from "../runtime/backend.js";
import type { Llama4Config } from "./config.js";
import { Checkpoint } from "./safetensors.js";

export interface LayerWeights {
  inputNorm: Tensor;
  postAttnNorm: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  /** MoE layers. */
  router?: Tensor;
  expertsGateUp?: Tensor;
  expertsDown?: Tensor;
  sharedGateUp?: Tensor;
  sharedDown?: Tensor;
  /** Dense layers. */
  mlpGateUp?: Tensor;
  mlpDown?: Tensor;
}

export interface ModelWeights {
  embed: Tensor;
  norm: Tensor;
  lmHead: Tensor;
  layers: LayerWeights[];
}

/** Tensor names of the text model, with the `language_model.` prefix of the conditional layout. */
export function tensorNames(cfg: Llama4Config) {
  const p = cfg.layout === "conditional" ? "language_model." : "";
  const layer = (i: number) => `${p}model.layers.${i}.`;
  return {
    embed: `${p}model.embed_tokens.weight`,
    norm: `${p}model.norm.weight`,
    lmHead: `${p}lm_head.weight`,
    layer,
  };
}

/** Where weights come from: a checkpoint, or random values for `--load-format dummy`. */
interface WeightSource {
  load(name: string, shape: number[], opts?: { transpose?: boolean }): Promise<Tensor>;
  /** Two [rows, in] matrices as one [2·rows, in] tensor (gate then up). */
  loadStacked(a: string, b: string, shape: number[]): Promise<Tensor>;
  has(name: string): boolean;
}

class CheckpointSource implements WeightSource {
  constructor(
    private readonly ckpt: Checkpoint,
    private readonly backend: Backend,
  ) {}

  has(name: string): boolean {
    return this.ckpt.has(name);
  }

  private async host(name: string, shape: number[]): Promise<HostTensor> {
    const info = this.ckpt.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`tensor ${name} in ${info.file} has shape [${info.shape}], expected [${shape}] from config.json`);
    }
    return { dtype: info.dtype, shape: info.shape, data: await this.ckpt.read(name) };
  }

  async load(name: string, shape: number[], opts?: { transpose?: boolean }): Promise<Tensor> {
    return this.backend.weight(await this.host(name, shape), opts);
  }

  async loadStacked(a: string, b: string, shape: number[]): Promise<Tensor> {
    const ha = await this.host(a, shape);
    const hb = await this.host(b, shape);
    if (ha.dtype !== hb.dtype) throw new Error(`tensors ${a} and ${b} have different dtypes`);
    const data = new Uint8Array(ha.data.length + hb.data.length);
    data.set(ha.data, 0);
    data.set(hb.data, ha.data.length);
    return this.backend.weight({ dtype: ha.dtype, shape: [shape[0] * 2, shape[1]], data });
  }
}

/** Random weights generated on the backend: norms are 1, everything else normal(0, 0.02). */
class DummySource implements WeightSource {
  constructor(private readonly backend: Backend) {
    if (!backend.randomWeight) throw new Error(`the ${backend.name} backend cannot make dummy weights`);
  }

  has(): boolean {
    return true;
  }

  private make(name: string, shape: number[]): Tensor {
    const norm = name.endsWith("norm.weight");
    return this.backend.randomWeight!(shape, norm ? 0 : 0.02, hash(name), 1);
  }

  async load(name: string, shape: number[], opts?: { transpose?: boolean }): Promise<Tensor> {
    const s = opts?.transpose ? [...shape.slice(0, -2), shape[shape.length - 1], shape[shape.length - 2]] : shape;
    return this.make(name, s);
  }

  async loadStacked(a: string, _b: string, shape: number[]): Promise<Tensor> {
    return this.make(a, [shape[0] * 2, shape[1]]);
  }
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

export interface LoadOptions {
  /** "dummy" makes random weights from config.json alone (benchmarks), like SGLang's flag. */
  loadFormat?: "auto" | "dummy";
  onProgress?: (done: number, total: number) => void;
}

export async function loadWeights(dir: string, cfg: Llama4Config, backend: Backend, opts: LoadOptions = {}): Promise<ModelWeights> {
  const ckpt = opts.loadFormat === "dummy" ? null : await Checkpoint.open(dir);
  try {
    const r: WeightSource = ckpt ? new CheckpointSource(ckpt, backend) : new DummySource(backend);
    const names = tensorNames(cfg);
    const d = cfg.hiddenSize;
    const hd = cfg.headDim;
    const f = cfg.intermediateSize;
    const e = cfg.numExperts;
    const embed = await r.load(names.embed, [cfg.vocabSize, d]);
    const norm = await r.load(names.norm, [d]);
    let lmHead: Tensor;
    if (r.has(names.lmHead)) lmHead = await r.load(names.lmHead, [cfg.vocabSize, d]);
    else if (cfg.tieWordEmbeddings) lmHead = embed;
    else throw new Error(`tensor ${names.lmHead} is missing from ${dir} and tie_word_embeddings is false`);

    const layers: LayerWeights[] = [];
    for (const spec of cfg.layers) {
      const p = names.layer(spec.index);
      const lw: LayerWeights = {
        inputNorm: await r.load(`${p}input_layernorm.weight`, [d]),
        postAttnNorm: await r.load(`${p}post_attention_layernorm.weight`, [d]),
        q: await r.load(`${p}self_attn.q_proj.weight`, [cfg.numHeads * hd, d]),
        k: await r.load(`${p}self_attn.k_proj.weight`, [cfg.numKvHeads * hd, d]),
        v: await r.load(`${p}self_attn.v_proj.weight`, [cfg.numKvHeads * hd, d]),
        o: await r.load(`${p}self_attn.o_proj.weight`, [d, cfg.numHeads * hd]),
      };
      if (spec.moe) {
        const m = `${p}feed_forward.`;
        lw.router = await r.load(`${m}router.weight`, [e, d]);
        // Fused expert tensors are stored [E, in, out]; the ops want [E, out, in].
        lw.expertsGateUp = await r.load(`${m}experts.gate_up_proj`, [e, d, 2 * f], { transpose: true });
        lw.expertsDown = await r.load(`${m}experts.down_proj`, [e, f, d], { transpose: true });
        lw.sharedGateUp = await r.loadStacked(`${m}shared_expert.gate_proj.weight`, `${m}shared_expert.up_proj.weight`, [f, d]);
        lw.sharedDown = await r.load(`${m}shared_expert.down_proj.weight`, [d, f]);
      } else {
        const m = `${p}feed_forward.`;
        const fm = cfg.intermediateSizeMlp;
        lw.mlpGateUp = await r.loadStacked(`${m}gate_proj.weight`, `${m}up_proj.weight`, [fm, d]);
        lw.mlpDown = await r.load(`${m}down_proj.weight`, [d, fm]);
      }
      layers.push(lw);
      opts.onProgress?.(spec.index + 1, cfg.numLayers);
    }
    return { embed, norm, lmHead, layers };
  } finally {
    await ckpt?.close();
  }
}
