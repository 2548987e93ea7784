// Loading one tensor/expert-parallel rank from the real tiny fixtures: every weight a rank
// uploads must be exactly its slice of the whole checkpoint tensor, and the rank must read
// exactly those bytes from the file (its share plus the replicated tensors), as counted by the
// reader and reported through loading progress.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type RefSelection, selectRef } from "../../test/model/select_ref.js";
import type { HostTensor, Tensor } from "../runtime/backend.js";
import { CpuBackend } from "../runtime/cpu.js";
import { dtypeBytes } from "../runtime/dtype.js";
import { fixturePath } from "../util/repo.js";
import { type Llama4Config, loadConfig } from "./config.js";
import { Checkpoint } from "./safetensors.js";
import { loadWeights, type ModelWeights, tensorNames } from "./weights.js";

/** A CPU backend that remembers the host bytes of every weight uploaded to it. */
class RecordingBackend extends CpuBackend {
  readonly uploads = new Map<Tensor, { host: HostTensor; transpose: boolean }>();

  override weight(h: HostTensor, opts: { transpose?: boolean } = {}) {
    const t = super.weight(h, opts);
    this.uploads.set(t, { host: h, transpose: opts.transpose ?? false });
    return t;
  }
}

/** What rank `rank` keeps, stated from SGLang's cut (sglang-notes.md §1.7), not from shard.ts. */
function share(cfg: Llama4Config, tp: number, ep: number, rank: number) {
  const hd = cfg.headDim;
  const heads = cfg.numHeads / tp;
  // Fewer KV heads than ranks: each KV head is replicated on tp / numKvHeads consecutive ranks.
  const kvHeads = cfg.numKvHeads >= tp ? cfg.numKvHeads / tp : 1;
  const kvStart = cfg.numKvHeads >= tp ? rank * kvHeads : Math.floor(rank / (tp / cfg.numKvHeads));
  const f = cfg.intermediateSize;
  const experts = cfg.numExperts / ep;
  const width = ep > 1 ? f : f / tp; // expert parallelism keeps whole experts
  const shared = f / tp;
  const mlp = cfg.intermediateSizeMlp / tp;
  const vocab = cfg.vocabSize / tp;
  return {
    q: [rank * heads * hd, heads * hd] as [number, number],
    kv: [kvStart * hd, kvHeads * hd] as [number, number],
    experts: [ep > 1 ? rank * experts : 0, experts] as [number, number],
    width: [ep > 1 ? 0 : rank * width, width] as [number, number],
    shared: [rank * shared, shared] as [number, number],
    mlp: [rank * mlp, mlp] as [number, number],
    vocab: [rank * vocab, vocab] as [number, number],
  };
}

/** Bytes rank `rank` must read, from the config's dimensions alone. */
function shareBytes(cfg: Llama4Config, tp: number, ep: number, rank: number, elem: number): number {
  const s = share(cfg, tp, ep, rank);
  const d = cfg.hiddenSize;
  let n = 2 * s.vocab[1] * d + d; // embed + lm_head rows, final norm
  for (const layer of cfg.layers) {
    n += 2 * d; // norms
    n += s.q[1] * d + 2 * s.kv[1] * d + d * s.q[1]; // q, k, v rows; o columns
    if (layer.moe) {
      n += cfg.numExperts * d; // router
      n += s.experts[1] * d * 2 * s.width[1] + s.experts[1] * s.width[1] * d; // gate_up, down
      n += 2 * s.shared[1] * d + d * s.shared[1];
    } else {
      n += 2 * s.mlp[1] * d + d * s.mlp[1];
    }
  }
  return n * elem;
}

const layouts = [
  { tp: 1, ep: 1 },
  { tp: 2, ep: 1 },
  { tp: 4, ep: 1 },
  { tp: 2, ep: 2 },
  { tp: 4, ep: 4 },
  { tp: 8, ep: 1 }, // fewer KV heads than ranks
];

for (const fixture of ["scout-tiny", "maverick-tiny"]) {
  describe(`rank shares of ${fixture}`, () => {
    const dir = fixturePath(fixture);
    const cfg = loadConfig(dir);
    const names = tensorNames(cfg);
    let whole: Checkpoint;
    before(async () => {
      whole = await Checkpoint.open(dir);
    });
    after(async () => {
      await whole.close();
    });

    /** The expected host bytes of `name` for a selection, from the whole tensor. */
    async function expected(name: string, sel: RefSelection = {}): Promise<Uint8Array> {
      const info = whole.info(name);
      return selectRef(await whole.read(name), info.shape, dtypeBytes(info.dtype), sel);
    }

    /** Every uploaded weight, with what it must equal. */
    async function checks(w: ModelWeights, tp: number, ep: number, rank: number) {
      const s = share(cfg, tp, ep, rank);
      const out: { what: string; got: Tensor; want: Uint8Array; transpose: boolean }[] = [];
      const add = async (what: string, got: Tensor | undefined, want: Promise<Uint8Array>, transpose = false) => {
        assert.ok(got, `${what} was loaded`);
        out.push({ what, got, want: await want, transpose });
      };
      // Row blocks of several tensors, stacked in order (gate then up; q, k, v).
      const stacked = async (...parts: [string, [number, number]][]) => {
        const blocks: Uint8Array[] = [];
        for (const [name, rows] of parts) blocks.push(await expected(name, { 0: [rows] }));
        return Buffer.concat(blocks);
      };
      await add(names.embed, w.embed, expected(names.embed, { 0: [s.vocab] }));
      await add(names.lmHead, w.lmHead, expected(names.lmHead, { 0: [s.vocab] }));
      await add(names.norm, w.norm, expected(names.norm));
      for (const layer of cfg.layers) {
        const p = names.layer(layer.index);
        const lw = w.layers[layer.index]!;
        await add(`${p}input_layernorm.weight`, lw.inputNorm, expected(`${p}input_layernorm.weight`));
        await add(`${p}post_attention_layernorm.weight`, lw.postAttnNorm, expected(`${p}post_attention_layernorm.weight`));
        // q, k and v are uploaded as one stacked tensor and used as its views (CpuBackend.splitRows).
        await add(`${p}self_attn q+k+v`, lw.qkv,
          stacked([`${p}self_attn.q_proj.weight`, s.q], [`${p}self_attn.k_proj.weight`, s.kv], [`${p}self_attn.v_proj.weight`, s.kv]));
        assert.deepEqual([lw.q, lw.k, lw.v].map((t) => t.shape), [[s.q[1], cfg.hiddenSize], [s.kv[1], cfg.hiddenSize], [s.kv[1], cfg.hiddenSize]], `${p} q/k/v views`);
        await add(`${p}self_attn.o_proj.weight`, lw.o, expected(`${p}self_attn.o_proj.weight`, { 1: [s.q] }));
        const m = `${p}feed_forward.`;
        if (layer.moe) {
          const f = cfg.intermediateSize;
          const [ws, wn] = s.width;
          await add(`${m}router.weight`, lw.router, expected(`${m}router.weight`));
          await add(`${m}experts.gate_up_proj`, lw.expertsGateUp,
            expected(`${m}experts.gate_up_proj`, { 0: [s.experts], 2: [[ws, wn], [f + ws, wn]] }), true);
          await add(`${m}experts.down_proj`, lw.expertsDown, expected(`${m}experts.down_proj`, { 0: [s.experts], 1: [s.width] }), true);
          await add(`${m}shared_expert gate+up`, lw.sharedGateUp,
            stacked([`${m}shared_expert.gate_proj.weight`, s.shared], [`${m}shared_expert.up_proj.weight`, s.shared]));
          await add(`${m}shared_expert.down_proj.weight`, lw.sharedDown, expected(`${m}shared_expert.down_proj.weight`, { 1: [s.shared] }));
        } else {
          await add(`${m}gate+up`, lw.mlpGateUp, stacked([`${m}gate_proj.weight`, s.mlp], [`${m}up_proj.weight`, s.mlp]));
          await add(`${m}down_proj.weight`, lw.mlpDown, expected(`${m}down_proj.weight`, { 1: [s.mlp] }));
        }
      }
      return out;
    }

    for (const { tp, ep } of layouts) {
      test(`--tp ${tp} --ep-size ${ep}: each rank holds its slices and reads exactly their bytes`, async () => {
        const elem = dtypeBytes(whole.info(names.embed).dtype);
        const perRank: number[] = [];
        for (let rank = 0; rank < tp; rank++) {
          const backend = new RecordingBackend();
          let progress = -1;
          const w = await loadWeights(dir, cfg, backend, { shard: { rank, tp, ep }, onProgress: (p) => (progress = p.bytes) });
          for (const { what, got, want, transpose } of await checks(w, tp, ep, rank)) {
            const up = backend.uploads.get(got);
            assert.ok(up, `rank ${rank}: ${what} was uploaded`);
            assert.equal(up.transpose, transpose, `rank ${rank}: ${what} transpose`);
            assert.ok(Buffer.from(up.host.data).equals(want), `rank ${rank}: ${what} is its slice of the whole tensor`);
          }
          // Embeddings, lm_head and the final norm load before the first layer, so the last
          // progress report is everything this rank read.
          assert.equal(progress, shareBytes(cfg, tp, ep, rank, elem), `rank ${rank}: bytes read`);
          perRank.push(progress);
        }
        // Across ranks: every split tensor once, replicated ones (norms, routers) on each rank.
        if (cfg.numKvHeads >= tp) {
          let split = 0;
          let replicated = 0;
          for (const name of whole.names()) {
            const n = whole.info(name).byteLength;
            if (/norm\.weight$|router\.weight$/.test(name)) replicated += n;
            else split += n;
          }
          assert.equal(perRank.reduce((a, b) => a + b, 0), split + tp * replicated);
        }
      });
    }
  });
}
