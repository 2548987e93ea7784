// Maps a Hugging Face Llama 4 checkpoint (llama4-spec.md §3) onto the tensors the model uses,
// checking every shape against the config before anything is uploaded, so a wrong checkpoint
// fails with the tensor and file named rather than deep inside a kernel.
//
// Under tensor/expert parallelism each rank loads only its share: shard.ts says which heads,
// widths, experts and vocabulary rows a rank keeps, loadWeights turns that into a selection per
// tensor, and Checkpoint.readSelection (safetensors.ts) reads just those bytes from the file.

import type { Backend, HostTensor, Tensor } from "../runtime/backend.js";
import type { Llama4Config } from "./config.js";
import { Checkpoint, type Selection } from "./safetensors.js";
import { NO_SHARD, type Shard, shardDims } from "./shard.js";

export interface LayerWeights {
  inputNorm: Tensor;
  postAttnNorm: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** q, k and v side by side, when the backend stores them so (Backend.splitRows): q, k, v are its views. */
  qkv?: Tensor;
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

/** A tensor's name, its full [out, in] shape in the checkpoint, and the rows [start, count] to take. */
type StackedPart = [name: string, shape: number[], rows: [number, number]];

/** The [Σ rows, in] shape of parts stacked by loadStacked. */
function stackedShape(parts: StackedPart[]): number[] {
  return [parts.reduce((a, [, , rows]) => a + rows[1], 0), parts[0][1][1]];
}

interface LoadSpec {
  /** Swap the last two dims after selecting ([.., in, out] → [.., out, in]). */
  transpose?: boolean;
  select?: Selection;
}

/** Where weights come from: a checkpoint, or random values for `--load-format dummy`. */
interface WeightSource {
  /** `shape` is the full shape in the checkpoint; `select` cuts this rank's share of it. */
  load(name: string, shape: number[], spec?: LoadSpec): Promise<Tensor>;
  /** Row blocks of several tensors stacked into one [Σ rows, in] tensor (each `shape` is [out, in] in the checkpoint). */
  loadStacked(parts: StackedPart[]): Promise<Tensor>;
  has(name: string): boolean;
}

function selectedShape(shape: number[], select: Selection = {}): number[] {
  return shape.map((d, i) => (select[i] ? select[i].reduce((a, [, n]) => a + n, 0) : d));
}

class CheckpointSource implements WeightSource {
  constructor(
    private readonly ckpt: Checkpoint,
    private readonly backend: Backend,
  ) {}

  has(name: string): boolean {
    return this.ckpt.has(name);
  }

  /** This rank's part of a tensor; only its bytes are read from the file, whichever dims are cut. */
  private async host(name: string, shape: number[], select: Selection = {}): Promise<HostTensor> {
    const info = this.ckpt.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`tensor ${name} in ${info.file} has shape [${info.shape}], expected [${shape}] from config.json`);
    }
    return this.ckpt.readSelection(name, select);
  }

  async load(name: string, shape: number[], spec: LoadSpec = {}): Promise<Tensor> {
    return this.backend.weight(await this.host(name, shape, spec.select), { transpose: spec.transpose });
  }

  async loadStacked(parts: StackedPart[]): Promise<Tensor> {
    const names = parts.map(([n]) => n).join(", ");
    if (parts.some(([, shape]) => shape[1] !== parts[0][1][1])) throw new Error(`tensors ${names} have different input widths`); // before any read
    const hs: HostTensor[] = [];
    for (const [name, shape, rows] of parts) hs.push(await this.host(name, shape, { 0: [rows] }));
    if (hs.some((h) => h.dtype !== hs[0].dtype)) throw new Error(`tensors ${names} have different dtypes`);
    const data = new Uint8Array(hs.reduce((a, h) => a + h.data.byteLength, 0));
    let at = 0;
    for (const h of hs) {
      data.set(new Uint8Array(h.data.buffer, h.data.byteOffset, h.data.byteLength), at);
      at += h.data.byteLength;
    }
    return this.backend.weight({ dtype: hs[0].dtype, shape: stackedShape(parts), data });
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

  async load(name: string, shape: number[], spec: LoadSpec = {}): Promise<Tensor> {
    const s = selectedShape(shape, spec.select);
    return this.make(name, spec.transpose ? [...s.slice(0, -2), s[s.length - 1], s[s.length - 2]] : s);
  }

  async loadStacked(parts: StackedPart[]): Promise<Tensor> {
    return this.make(parts[0][0], stackedShape(parts));
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
  /** This rank's share under tensor/expert parallelism (default: everything). */
  shard?: Shard;
  /** After each layer: layers done, of all, and checkpoint bytes this rank has read so far. */
  onProgress?: (p: LoadProgress) => void;
}

export interface LoadProgress {
  layers: number;
  totalLayers: number;
  bytes: number;
}

export async function loadWeights(dir: string, cfg: Llama4Config, backend: Backend, opts: LoadOptions = {}): Promise<ModelWeights> {
  const sd = shardDims(cfg, opts.shard ?? NO_SHARD);
  const ckpt = opts.loadFormat === "dummy" ? null : await Checkpoint.open(dir);
  try {
    const r: WeightSource = ckpt ? new CheckpointSource(ckpt, backend) : new DummySource(backend);
    const names = tensorNames(cfg);
    const d = cfg.hiddenSize;
    const hd = cfg.headDim;
    const f = cfg.intermediateSize;
    const e = cfg.numExperts;
    const vocabRows: Selection = { 0: [[sd.vocabStart, sd.vocab]] };
    const embed = await r.load(names.embed, [cfg.vocabSize, d], { select: vocabRows });
    const norm = await r.load(names.norm, [d]);
    let lmHead: Tensor;
    if (r.has(names.lmHead)) lmHead = await r.load(names.lmHead, [cfg.vocabSize, d], { select: vocabRows });
    else if (cfg.tieWordEmbeddings) lmHead = embed;
    else throw new Error(`tensor ${names.lmHead} is missing from ${dir} and tie_word_embeddings is false`);

    const qRows: [number, number] = [sd.headStart * hd, sd.heads * hd];
    const kvRows: [number, number] = [sd.kvHeadStart * hd, sd.kvHeads * hd];
    const layers: LayerWeights[] = [];
    for (const spec of cfg.layers) {
      const p = names.layer(spec.index);
      const inputNorm = await r.load(`${p}input_layernorm.weight`, [d]);
      const postAttnNorm = await r.load(`${p}post_attention_layernorm.weight`, [d]);
      // q, k and v side by side in one tensor where the backend can view it in parts (its
      // prefill then runs the three projections as one GEMM, linearMany); else three tensors.
      const qkv: StackedPart[] = [
        [`${p}self_attn.q_proj.weight`, [cfg.numHeads * hd, d], qRows],
        [`${p}self_attn.k_proj.weight`, [cfg.numKvHeads * hd, d], kvRows],
        [`${p}self_attn.v_proj.weight`, [cfg.numKvHeads * hd, d], kvRows],
      ];
      const parts: Tensor[] = [];
      const stacked = backend.splitRows ? await r.loadStacked(qkv) : undefined;
      if (stacked) parts.push(...backend.splitRows!(stacked, qkv.map(([, , rows]) => rows[1])));
      else for (const [name, shape, rows] of qkv) parts.push(await r.load(name, shape, { select: { 0: [rows] } }));
      const [q, k, v] = parts;
      const lw: LayerWeights = {
        inputNorm,
        postAttnNorm,
        q,
        k,
        v,
        ...(stacked && { qkv: stacked }),
        o: await r.load(`${p}self_attn.o_proj.weight`, [d, cfg.numHeads * hd], { select: { 1: [qRows] } }),
      };
      const m = `${p}feed_forward.`;
      if (spec.moe) {
        lw.router = await r.load(`${m}router.weight`, [e, d]);
        // Fused expert tensors are stored [E, in, out] with gate and up as the two halves of
        // `out`; the ops want [E, out, in] with this rank's gate rows then its up rows.
        const experts: [number, number] = [sd.expertStart, sd.experts];
        const w = sd.expertWidth;
        const ws = sd.expertWidthStart;
        lw.expertsGateUp = await r.load(`${m}experts.gate_up_proj`, [e, d, 2 * f], {
          select: { 0: [experts], 2: [[ws, w], [f + ws, w]] },
          transpose: true,
        });
        lw.expertsDown = await r.load(`${m}experts.down_proj`, [e, f, d], { select: { 0: [experts], 1: [[ws, w]] }, transpose: true });
        const shared: [number, number] = [sd.sharedWidthStart, sd.sharedWidth];
        lw.sharedGateUp = await r.loadStacked([
          [`${m}shared_expert.gate_proj.weight`, [f, d], shared],
          [`${m}shared_expert.up_proj.weight`, [f, d], shared],
        ]);
        lw.sharedDown = await r.load(`${m}shared_expert.down_proj.weight`, [d, f], { select: { 1: [shared] } });
      } else {
        const fm = cfg.intermediateSizeMlp;
        const mlp: [number, number] = [sd.mlpWidthStart, sd.mlpWidth];
        lw.mlpGateUp = await r.loadStacked([
          [`${m}gate_proj.weight`, [fm, d], mlp],
          [`${m}up_proj.weight`, [fm, d], mlp],
        ]);
        lw.mlpDown = await r.load(`${m}down_proj.weight`, [d, fm], { select: { 1: [mlp] } });
      }
      layers.push(lw);
      opts.onProgress?.({ layers: spec.index + 1, totalLayers: cfg.numLayers, bytes: ckpt?.bytesRead ?? 0 });
    }
    return { embed, norm, lmHead, layers };
  } finally {
    await ckpt?.close();
  }
}
