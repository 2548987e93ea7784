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
  StepBatch,
  Tensor,
} from "./backend.js";
import { toFloat32 } from "./dtype.js";
import { Rng } from "../util/rng.js";

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

/** y[n, out] = x[n, in] · w[out, in]ᵀ. Four rows of x share each weight row read. */
export function matmul(x: Float32Array, n: number, w: Float32Array, out: number, inDim: number, y?: Float32Array): Float32Array {
  y ??= new Float32Array(n * out);
  let r = 0;
  for (; r + 4 <= n; r += 4) {
    const x0 = r * inDim, x1 = x0 + inDim, x2 = x1 + inDim, x3 = x2 + inDim;
    for (let o = 0; o < out; o++) {
      const wo = o * inDim;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < inDim; i++) {
        const wv = w[wo + i];
        s0 += x[x0 + i] * wv;
        s1 += x[x1 + i] * wv;
        s2 += x[x2 + i] * wv;
        s3 += x[x3 + i] * wv;
      }
      y[r * out + o] = s0;
      y[(r + 1) * out + o] = s1;
      y[(r + 2) * out + o] = s2;
      y[(r + 3) * out + o] = s3;
    }
  }
  for (; r < n; r++) {
    const xr = r * inDim;
    for (let o = 0; o < out; o++) {
      const wo = o * inDim;
      let s0 = 0, s1 = 0;
      let i = 0;
      for (; i + 2 <= inDim; i += 2) {
        s0 += x[xr + i] * w[wo + i];
        s1 += x[xr + i + 1] * w[wo + i + 1];
      }
      if (i < inDim) s0 += x[xr + i] * w[wo + i];
      y[r * out + o] = s0 + s1;
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

  embedding(table: Tensor, ids: Int32Array): CpuTensor {
    const tb = t(table);
    const [vocab, d] = tb.shape;
    const out = new Float32Array(ids.length * d);
    ids.forEach((id, r) => {
      if (id < 0 || id >= vocab) throw new Error(`token id ${id} is outside the vocabulary [0, ${vocab})`);
      out.set(tb.data.subarray(id * d, (id + 1) * d), r * d);
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
    this.kv = layers.map((l) => {
      const slots = l.pool === "full" ? sizes.full : sizes.swa;
      return { k: new Float32Array(slots * width), v: new Float32Array(slots * width) };
    });
  }

  attention(layer: number, spec: AttentionSpec, q: Tensor, k: Tensor, v: Tensor, batch: StepBatch): CpuTensor {
    const p = this.params;
    if (!p) throw new Error("attention before allocKv");
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
      const slots = spec.pool === "full" ? s.fullSlots : s.swaSlots;
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
    for (let j = 0; j < e; j++) {
      const rows = byExpert[j];
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

  copyBandwidth(bytes: number): number {
    const src = new Float32Array(bytes / 8);
    const dst = new Float32Array(src.length);
    dst.set(src); // warm up
    const reps = 5;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) dst.set(src);
    return (reps * 2 * src.byteLength) / ((performance.now() - t0) / 1000);
  }

  toHost(x: Tensor): Float32Array {
    return t(x).data;
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
