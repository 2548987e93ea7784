// The CPU backend: plain TypeScript over Float32Array, fp32 everywhere (weights widened from
// bf16 at load). It is the numerical reference the CUDA backend is checked against, and the
// zero-setup default for small models, so it favours clarity over speed except in `matmul`.

import type {
  AttentionParams,
  AttentionSpec,
  Backend,
  HostTensor,
  KvPoolSizes,
  MoeWeights,
  PendingPicks,
  StepBatch,
  Tensor,
  CopyBandwidth,
} from "./backend.js";
import { SlotTables } from "./slot_tables.js";
import { argmax } from "../engine/sampling.js";
import { toFloat32 } from "./dtype.js";
import { Rng } from "../util/rng.js";
import type { Collective } from "./collective.js";

export class CpuTensor implements Tensor {
  constructor(
    readonly shape: number[],
    readonly data: Float32Array,
  ) {}
}

function t(x: Tensor): CpuTensor {
  if (!(x instanceof CpuTensor)) throw new Error("cpu backend got a tensor from another backend");
  return x;
}

/**
 * y[n, out] = x[n, in] · w[out, in]ᵀ. Blocks of 4 rows × 4 outputs keep 16 sums in registers,
 * so each loaded x and w value feeds four multiply-adds (about 2× a row-at-a-time loop in V8).
 */
export function matmul(x: Float32Array, n: number, w: Float32Array, out: number, inDim: number, y?: Float32Array): Float32Array {
  y ??= new Float32Array(n * out);
  let r = 0;
  for (; r + 4 <= n; r += 4) {
    const x0 = r * inDim, x1 = x0 + inDim, x2 = x1 + inDim, x3 = x2 + inDim;
    let o = 0;
    for (; o + 4 <= out; o += 4) {
      const w0 = o * inDim, w1 = w0 + inDim, w2 = w1 + inDim, w3 = w2 + inDim;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let i = 0; i < inDim; i++) {
        const a0 = x[x0 + i], a1 = x[x1 + i], a2 = x[x2 + i], a3 = x[x3 + i];
        const b0 = w[w0 + i], b1 = w[w1 + i], b2 = w[w2 + i], b3 = w[w3 + i];
        s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
        s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
        s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
        s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
      }
      const y0 = r * out + o, y1 = y0 + out, y2 = y1 + out, y3 = y2 + out;
      y[y0] = s00; y[y0 + 1] = s01; y[y0 + 2] = s02; y[y0 + 3] = s03;
      y[y1] = s10; y[y1 + 1] = s11; y[y1 + 2] = s12; y[y1 + 3] = s13;
      y[y2] = s20; y[y2 + 1] = s21; y[y2 + 2] = s22; y[y2 + 3] = s23;
      y[y3] = s30; y[y3 + 1] = s31; y[y3 + 2] = s32; y[y3 + 3] = s33;
    }
    for (; o < out; o++) {
      const wo = o * inDim;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < inDim; i++) {
        const wv = w[wo + i];
        s0 += x[x0 + i] * wv; s1 += x[x1 + i] * wv; s2 += x[x2 + i] * wv; s3 += x[x3 + i] * wv;
      }
      y[r * out + o] = s0; y[(r + 1) * out + o] = s1; y[(r + 2) * out + o] = s2; y[(r + 3) * out + o] = s3;
    }
  }
  for (; r < n; r++) {
    const xr = r * inDim;
    let o = 0;
    for (; o + 4 <= out; o += 4) {
      const w0 = o * inDim, w1 = w0 + inDim, w2 = w1 + inDim, w3 = w2 + inDim;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < inDim; i++) {
        const a = x[xr + i];
        s0 += a * w[w0 + i]; s1 += a * w[w1 + i]; s2 += a * w[w2 + i]; s3 += a * w[w3 + i];
      }
      y[r * out + o] = s0; y[r * out + o + 1] = s1; y[r * out + o + 2] = s2; y[r * out + o + 3] = s3;
    }
    for (; o < out; o++) {
      const wo = o * inDim;
      let s = 0;
      for (let i = 0; i < inDim; i++) s += x[xr + i] * w[wo + i];
      y[r * out + o] = s;
    }
  }
  return y;
}

function rmsNormRow(src: Float32Array, off: number, dim: number, w: Float32Array | null, eps: number, dst: Float32Array, dOff: number): void {
  let ss = 0;
  for (let i = 0; i < dim; i++) ss += src[off + i] * src[off + i];
  const inv = 1 / Math.sqrt(ss / dim + eps);
  if (w) for (let i = 0; i < dim; i++) dst[dOff + i] = src[off + i] * inv * w[i];
  else for (let i = 0; i < dim; i++) dst[dOff + i] = src[off + i] * inv;
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

interface LayerKv {
  k: Float32Array;
  v: Float32Array;
}

export class CpuBackend implements Backend {
  readonly name = "cpu";
  readonly elementBytes = 4;
  private params: AttentionParams | null = null;
  private kv: LayerKv[] = [];
  private tables: SlotTables | null = null;

  /** `collective` connects tensor-parallel ranks (threads sharing memory); none for one rank. */
  constructor(private readonly collective?: Collective) {}

  weight(h: HostTensor, opts: { transpose?: boolean } = {}): CpuTensor {
    const data = toFloat32(h.data, h.dtype);
    if (!opts.transpose) return new CpuTensor([...h.shape], data);
    if (h.shape.length < 2) throw new Error("transpose needs at least 2 dims");
    const rows = h.shape[h.shape.length - 2];
    const cols = h.shape[h.shape.length - 1];
    const batch = data.length / (rows * cols);
    const out = new Float32Array(data.length);
    for (let b = 0; b < batch; b++) {
      const base = b * rows * cols;
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[base + c * rows + r] = data[base + r * cols + c];
    }
    return new CpuTensor([...h.shape.slice(0, -2), cols, rows], out);
  }

  free(_x: Tensor): void {
    // Garbage collected.
  }

  embedding(table: Tensor, ids: Int32Array, vocabStart = 0): CpuTensor {
    const tb = t(table);
    const [rows, d] = tb.shape;
    const out = new Float32Array(ids.length * d);
    ids.forEach((id, r) => {
      const local = id - vocabStart;
      if (local >= 0 && local < rows) out.set(tb.data.subarray(local * d, (local + 1) * d), r * d);
      else if (!this.collective) throw new Error(`token id ${id} is outside the vocabulary [0, ${rows})`);
    });
    return new CpuTensor([ids.length, d], out);
  }

  rmsNorm(x: Tensor, w: Tensor, eps: number): CpuTensor {
    const xt = t(x);
    const d = xt.shape[1];
    const n = xt.shape[0];
    const out = new Float32Array(n * d);
    for (let r = 0; r < n; r++) rmsNormRow(xt.data, r * d, d, t(w).data, eps, out, r * d);
    return new CpuTensor([n, d], out);
  }

  add(residual: Tensor, x: Tensor): void {
    const r = t(residual).data;
    const xd = t(x).data;
    for (let i = 0; i < r.length; i++) r[i] += xd[i];
  }

  addRmsNorm(residual: Tensor, x: Tensor, w: Tensor, eps: number): CpuTensor {
    this.add(residual, x);
    return this.rmsNorm(residual, w, eps);
  }

  /** Backend.splitRows: views (subarrays) of consecutive row blocks of one weight. */
  splitRows(w: Tensor, counts: number[]): CpuTensor[] {
    const wt = t(w);
    const [total, inDim] = wt.shape;
    if (wt.shape.length !== 2 || counts.reduce((a, c) => a + c, 0) !== total) throw new Error(`splitRows: [${counts}] rows of a [${wt.shape}] weight`);
    let at = 0;
    return counts.map((c) => {
      const v = new CpuTensor([c, inDim], wt.data.subarray(at * inDim, (at + c) * inDim));
      at += c;
      return v;
    });
  }

  linear(x: Tensor, w: Tensor): CpuTensor {
    const xt = t(x);
    const wt = t(w);
    const [out, inDim] = wt.shape;
    if (xt.shape[1] !== inDim) throw new Error(`linear: x has ${xt.shape[1]} columns, weight expects ${inDim}`);
    const n = xt.shape[0];
    return new CpuTensor([n, out], matmul(xt.data, n, wt.data, out, inDim));
  }

  siluMul(gateUp: Tensor): CpuTensor {
    const g = t(gateUp);
    const [n, twoF] = g.shape;
    const f = twoF / 2;
    const out = new Float32Array(n * f);
    for (let r = 0; r < n; r++) {
      const base = r * twoF;
      for (let i = 0; i < f; i++) out[r * f + i] = silu(g.data[base + i]) * g.data[base + f + i];
    }
    return new CpuTensor([n, f], out);
  }

  allocKv(params: AttentionParams, layers: AttentionSpec[], sizes: KvPoolSizes): void {
    this.params = params;
    const width = params.numKvHeads * params.headDim;
    this.tables = new SlotTables(sizes, [...new Set(layers.map((l) => l.pool))]);
    this.kv = layers.map((l) => {
      const slots = l.pool === "full" ? sizes.full : sizes.swa;
      return { k: new Float32Array(slots * width), v: new Float32Array(slots * width) };
    });
  }

  attention(layer: number, spec: AttentionSpec, q: Tensor, k: Tensor, v: Tensor, batch: StepBatch): CpuTensor {
    const p = this.params;
    const tables = this.tables;
    if (!p || !tables) throw new Error("attention before allocKv");
    tables.apply(batch);
    const { numHeads: hq, numKvHeads: hkv, headDim: hd } = p;
    const qd = new Float32Array(t(q).data); // copies: RoPE and norms modify them
    const kd = new Float32Array(t(k).data);
    const vd = t(v).data;
    const n = batch.ids.length;
    const qw = hq * hd;
    const kw = hkv * hd;

    for (let r = 0; r < n; r++) {
      const pos = batch.positions[r];
      if (spec.rope) {
        for (let h = 0; h < hq; h++) rotate(qd, r * qw + h * hd, hd, pos, p.invFreq);
        for (let h = 0; h < hkv; h++) rotate(kd, r * kw + h * hd, hd, pos, p.invFreq);
      }
      if (spec.qkNorm) {
        for (let h = 0; h < hq; h++) rmsNormRow(qd, r * qw + h * hd, hd, null, p.eps, qd, r * qw + h * hd);
        for (let h = 0; h < hkv; h++) rmsNormRow(kd, r * kw + h * hd, hd, null, p.eps, kd, r * kw + h * hd);
      }
      if (spec.temperatureTuning) {
        const tau = Math.fround(1 + p.attnScale * Math.log(Math.floor((pos + 1) / p.floorScale) + 1));
        for (let i = 0; i < qw; i++) qd[r * qw + i] *= tau;
      }
    }

    const cache = this.kv[layer];
    const out = new Float32Array(n * qw);
    const scale = 1 / Math.sqrt(hd);
    const group = hq / hkv;
    for (const s of batch.seqs) {
      const slots = tables.slots(spec.pool, s.row);
      const first = s.kvLen - s.qLen;
      for (let i = 0; i < s.qLen; i++) {
        const slot = slots[first + i];
        if (slot < 0) throw new Error(`layer ${layer}: no KV slot for position ${first + i}`);
        cache.k.set(kd.subarray((s.qStart + i) * kw, (s.qStart + i + 1) * kw), slot * kw);
        cache.v.set(vd.subarray((s.qStart + i) * kw, (s.qStart + i + 1) * kw), slot * kw);
      }
      const scores = new Float32Array(s.kvLen);
      for (let i = 0; i < s.qLen; i++) {
        const row = s.qStart + i;
        const pos = first + i;
        const lo = spec.chunkSize > 0 ? pos - (pos % spec.chunkSize) : 0;
        for (let h = 0; h < hq; h++) {
          const qo = row * qw + h * hd;
          const ko = Math.floor(h / group) * hd;
          let max = -Infinity;
          for (let u = lo; u <= pos; u++) {
            const slot = slots[u];
            if (slot < 0) throw new Error(`layer ${layer}: KV for position ${u} is gone`);
            const kb = slot * kw + ko;
            let dot = 0;
            for (let j = 0; j < hd; j++) dot += qd[qo + j] * cache.k[kb + j];
            const sc = dot * scale;
            scores[u] = sc;
            if (sc > max) max = sc;
          }
          let sum = 0;
          for (let u = lo; u <= pos; u++) {
            const e = Math.exp(scores[u] - max);
            scores[u] = e;
            sum += e;
          }
          const oo = row * qw + h * hd;
          for (let u = lo; u <= pos; u++) {
            const wgt = scores[u] / sum;
            const vb = slots[u] * kw + ko;
            for (let j = 0; j < hd; j++) out[oo + j] += wgt * cache.v[vb + j];
          }
        }
      }
    }
    return new CpuTensor([n, qw], out);
  }

  moe(x: Tensor, w: MoeWeights): CpuTensor {
    const xt = t(x);
    const [n, d] = xt.shape;
    const logits = t(this.linear(x, w.router)).data;
    const e = w.numExperts;
    // Top-1 over the raw logits (lowest index wins ties); the sigmoid score scales the expert input.
    const byExpert: number[][] = Array.from({ length: e }, () => []);
    const score = new Float32Array(n);
    for (let r = 0; r < n; r++) {
      let best = 0;
      for (let j = 1; j < e; j++) if (logits[r * e + j] > logits[r * e + best]) best = j;
      byExpert[best].push(r);
      score[r] = 1 / (1 + Math.exp(-logits[r * e + best]));
    }
    const out = t(this.linear(this.siluMul(this.linear(x, w.sharedGateUp)), w.sharedDown));
    const gu = t(w.gateUp);
    const dn = t(w.down);
    const twoF = gu.shape[1];
    const f = twoF / 2;
    // Under expert parallelism this rank holds experts [expertStart, expertStart + local).
    for (let j = 0; j < gu.shape[0]; j++) {
      const rows = byExpert[(w.expertStart ?? 0) + j];
      if (rows.length === 0) continue;
      const xin = new Float32Array(rows.length * d);
      rows.forEach((r, i) => {
        for (let c = 0; c < d; c++) xin[i * d + c] = xt.data[r * d + c] * score[r];
      });
      const h = matmul(xin, rows.length, gu.data.subarray(j * twoF * d, (j + 1) * twoF * d), twoF, d);
      const act = t(this.siluMul(new CpuTensor([rows.length, twoF], h))).data;
      const y = matmul(act, rows.length, dn.data.subarray(j * d * f, (j + 1) * d * f), d, f);
      rows.forEach((r, i) => {
        for (let c = 0; c < d; c++) out.data[r * d + c] += y[i * d + c];
      });
    }
    return out;
  }

  randomWeight(shape: number[], std: number, seed: number, fill = 0): CpuTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (std === 0) data.fill(fill);
    else {
      const rng = new Rng(seed);
      for (let i = 0; i < n; i += 2) {
        // Box-Muller: two normals per pair of uniforms.
        const r = Math.sqrt(-2 * Math.log(1 - rng.next())) * std;
        const a = 2 * Math.PI * rng.next();
        data[i] = r * Math.cos(a);
        if (i + 1 < n) data[i + 1] = r * Math.sin(a);
      }
    }
    return new CpuTensor([...shape], data);
  }

  copyBandwidth(bytes = 2 ** 28): CopyBandwidth {
    const src = new Float32Array(bytes / 8);
    const dst = new Float32Array(src.length);
    dst.set(src); // warm up
    const reps = 5;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) dst.set(src);
    return { bytesPerS: (reps * 2 * src.byteLength) / ((performance.now() - t0) / 1000), bytes: 2 * src.byteLength };
  }

  allReduce(x: Tensor): void {
    this.collective?.allReduce(t(x).data);
  }

  allGatherColumns(x: Tensor): CpuTensor {
    const xt = t(x);
    const c = this.collective;
    if (!c || c.size === 1) return xt;
    const [rows, cols] = xt.shape;
    const all = c.allGather(xt.data);
    const out = new Float32Array(rows * cols * c.size);
    for (let r = 0; r < c.size; r++) {
      for (let i = 0; i < rows; i++) out.set(all.subarray((r * rows + i) * cols, (r * rows + i + 1) * cols), (i * c.size + r) * cols);
    }
    return new CpuTensor([rows, cols * c.size], out);
  }

  toHost(x: Tensor): Float32Array {
    return t(x).data;
  }

  /** Greedy picks at once (nothing is queued on the host): the pipelined decoding path runs here too. */
  queueGreedy(x: Tensor, split?: { vocabStart: number }): PendingPicks {
    const all = split ? this.allGatherColumns(x) : t(x);
    const [rows, cols] = all.shape;
    const ids = Int32Array.from({ length: rows }, (_, r) => argmax(all.data.subarray(r * cols, (r + 1) * cols)));
    return { rows, wait: () => ids };
  }

  gatherRows(x: Tensor, rows: Int32Array): CpuTensor {
    const xt = t(x);
    const d = xt.shape[1];
    const out = new Float32Array(rows.length * d);
    rows.forEach((r, i) => out.set(xt.data.subarray(r * d, (r + 1) * d), i * d));
    return new CpuTensor([rows.length, d], out);
  }
}

/** Interleaved-pair RoPE on one head: (x[2i], x[2i+1]) rotated by pos·f_i, angle in fp32. */
function rotate(x: Float32Array, off: number, hd: number, pos: number, invFreq: Float32Array): void {
  for (let i = 0; i < hd / 2; i++) {
    const angle = Math.fround(pos * invFreq[i]);
    const c = Math.fround(Math.cos(angle));
    const s = Math.fround(Math.sin(angle));
    const a = x[off + 2 * i];
    const b = x[off + 2 * i + 1];
    x[off + 2 * i] = a * c - b * s;
    x[off + 2 * i + 1] = a * s + b * c;
  }
}
