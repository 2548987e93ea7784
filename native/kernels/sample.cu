// Sampling on the device: per logit row, temperature / top-k / top-p / min-p filtering and one
// seeded draw, plus the chosen token's logprob and the top-N (N ≤ 20) logprobs, so a sampled
// decode step downloads a few floats per row instead of vocab × 4 bytes.
//
// One block of 1024 threads per row. Passes over the row (each a strided, coalesced read; passes
// 1–3 in 16-byte vectors, several in flight: forEachLogit):
//   0. (rows with penalties or masks) logit_edit_rows first writes an fp32 edited copy: the draw
//      and greedy use it, the reported logprobs stay those of the raw logits;
//   1. max, its lowest index (greedy rows), and Σ exp(x − max) (online) → log_softmax at T = 1;
//   2. top_k (0 < k < cols): radix select of the k-th largest logit (4 passes of 8 bits over an
//      order-preserving uint key), threshold key_k; ties at the threshold are all kept;
//   3. top_p (< 1): a weighted radix select (4 passes, fp32 histograms of w = exp((x − max)/T)
//      over x ≥ key_k): the largest key t with mass(x ≥ t) ≥ top_p · mass(x ≥ key_k) — the
//      smallest nucleus, ties kept together;
//   4. min_p: kept iff w ≥ min_p (probability ≥ min_p × the max probability);
//   5. the draw: kept tokens in plain index order (warp w owns a contiguous segment; lanes read
//      it coalesced), r = u · Σ kept w, the token where the running sum first exceeds r;
//   6. top-N (when asked): radix select of the N-th largest, then one pass gathering the
//      larger ones and the lowest-index ties.
// Roofline: every pass reads the row once: 202048 × 4 B = 808 KB per row; the chat default
// (top_p only) makes 6 reads, ≈ 4.8 MB per row, 310 MB at batch 64 (≈ 0.1 ms at 3 TB/s, much of
// it from L2), against 52 MB of logits over PCIe per step (~2 ms pinned). Bandwidth-bound; the
// histogram scans (warp 0, 256 bins) add a few µs of latency per select pass.
#include <math_constants.h>

#include "common.cuh"

#define SAMPLE_MAX_TOP 20
// Per row in: temperature, top_p, top_k, min_p, u, top_n, edited-row slot (or -1), unused (8 floats).
#define SAMPLE_PARAMS 8
// Per row out (floats): id, logprob, then top_n pairs (id, logprob) at stride 2 + 2·20.
#define SAMPLE_OUT_STRIDE (2 + 2 * SAMPLE_MAX_TOP)

__device__ __forceinline__ unsigned keyOf(float v) {
  const unsigned k = __float_as_uint(v);
  return (k & 0x80000000u) ? ~k : (k | 0x80000000u);
}

// A logit as the passes see it: NaN is −inf (never kept, never the max).
__device__ __forceinline__ float logitOf(float v) { return v != v ? -CUDART_INF_F : v; }

template <typename T>
__device__ __forceinline__ float logitAt(const T* row, int j) {
  return logitOf(toF(row[j]));
}

// f(v, j) over the thread's strided share of a row, v as logitAt gives it, in increasing j
// (rowStats' ties rely on it): four 16-byte vectors in flight a thread (forEachInRow).
template <typename T, typename F>
__device__ __forceinline__ void forEachLogit(const T* row, int cols, F f) {
  forEachInRow<4>(row, cols, [&](float x, int j) { f(logitOf(x), j); });
}

struct SampleShared {
  float hist[256];
  unsigned cnt[256];
  float wf[32];
  int wi[32];
  float wm[32];
  unsigned bin;
  int chosen;
  int ngt;
  float topV[SAMPLE_MAX_TOP];
  int topI[SAMPLE_MAX_TOP];
  int eqIds[SAMPLE_MAX_TOP];
  int eqWarp[33];
};

// Warp 0: the highest bin b such that Σ_{bins ≥ b} h ≥ target (from the top), with the sum of
// bins above b in *above; when no bin gets there (fp32 rounding of a mass), the lowest bin with
// anything in it. Lane l covers bins 255 − 8l .. 248 − 8l.
template <typename H>
__device__ unsigned pickBin(const H* h, H target, H* above) {
  const int lane = threadIdx.x & 31;
  H part[8];
  H s = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    part[i] = h[255 - 8 * lane - i];
    s += part[i];
  }
  // inclusive scan from lane 0 (the top bins) upwards
  H incl = s;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const H t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  const H excl = incl - s;
  const unsigned hit = __ballot_sync(0xffffffffu, incl >= target && s > 0);
  unsigned b;
  H ab;
  if (hit) {
    const int L = __ffs(hit) - 1;
    H acc = __shfl_sync(0xffffffffu, excl, L);
    b = 0;
    ab = acc;
    if (lane == L) {
      // the crossing bin, or (fp32 rounding between the two sums) the lane's lowest non-empty one
      int bb = 255 - 8 * L;
      H abb = acc;
      for (int i = 0; i < 8; i++) {
        if (part[i] > 0) {
          bb = 255 - 8 * L - i;
          abb = acc;
          if (acc + part[i] >= target) break;
        }
        acc += part[i];
      }
      b = bb;
      ab = abb;
    }
    b = __shfl_sync(0xffffffffu, b, L);
    ab = __shfl_sync(0xffffffffu, ab, L);
  } else {
    const unsigned any = __ballot_sync(0xffffffffu, s > 0);
    const int L = any ? 31 - __clz(any) : 31;
    b = 0;
    ab = 0;
    if (lane == L) {
      H acc = excl;
      int last = 255 - 8 * L;
      for (int i = 0; i < 8; i++) {
        if (part[i] > 0) {
          last = 255 - 8 * L - i;
          ab = acc;
        }
        acc += part[i];
      }
      b = last;
    }
    b = __shfl_sync(0xffffffffu, b, L);
    ab = __shfl_sync(0xffffffffu, ab, L);
  }
  *above = ab;
  return b;
}

// The key of the k-th largest element (1 ≤ k ≤ cols) and how many are strictly larger.
template <typename T>
__device__ unsigned selectCount(const T* row, int cols, int k, SampleShared& sh, int* greater) {
  unsigned prefix = 0, mask = 0;
  unsigned rem = (unsigned)k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.cnt[b] = 0;
    __syncthreads();
    forEachLogit(row, cols, [&](float v, int) {
      const unsigned key = keyOf(v);
      if ((key & mask) == prefix) atomicAdd(&sh.cnt[(key >> shift) & 255u], 1u);
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      unsigned above;
      const unsigned b = pickBin<unsigned>(sh.cnt, rem, &above);
      if (threadIdx.x == 0) {
        sh.bin = b;
        sh.chosen = (int)(rem - above);
      }
    }
    __syncthreads();
    prefix |= sh.bin << shift;
    mask |= 255u << shift;
    rem = (unsigned)sh.chosen;
    __syncthreads();
  }
  *greater = k - (int)rem;
  return prefix;
}

// top_p: the largest key t (≥ keyK) with mass(key ≥ t) ≥ topP · mass(key ≥ keyK).
template <typename T>
__device__ unsigned selectMass(const T* row, int cols, unsigned keyK, float mx, float invT, float topP, SampleShared& sh) {
  unsigned prefix = 0, mask = 0;
  float target = 0.f;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.hist[b] = 0.f;
    __syncthreads();
    forEachLogit(row, cols, [&](float v, int) {
      const unsigned key = keyOf(v);
      if (key >= keyK && (key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255u], expf((v - mx) * invT));
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      if (shift == 24) {
        float s = 0.f;
        for (int i = 0; i < 8; i++) s += sh.hist[8 * threadIdx.x + i];
        s = warpSum(s);
        target = topP * s;
      }
      float above;
      const unsigned b = pickBin<float>(sh.hist, target, &above);
      target -= above;
      if (threadIdx.x == 0) sh.bin = b;
    }
    __syncthreads();
    prefix |= sh.bin << shift;
    mask |= 255u << shift;
    __syncthreads();
  }
  return prefix;
}

// Merges (max, Σ exp(x − max), argmax) across a warp: every lane ends with the warp's triple.
__device__ __forceinline__ void warpMergeStats(float& m, float& s, int& mi) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, m, off);
    const float os = __shfl_xor_sync(0xffffffffu, s, off);
    const int oi = __shfl_xor_sync(0xffffffffu, mi, off);
    const float nm = fmaxf(m, om);
    s = (m == -CUDART_INF_F ? 0.f : s * expf(m - nm)) + (om == -CUDART_INF_F ? 0.f : os * expf(om - nm));
    if (om > m || (om == m && oi < mi)) mi = oi;
    m = nm;
  }
}

// Pass 1 over a row: its max (lowest index among equal maxima) and log Σ exp(x), online.
template <typename T>
__device__ void rowStats(const T* row, int cols, SampleShared& sh, float* maxOut, float* lseOut, int* argmaxOut) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float m = -CUDART_INF_F, s = 0.f;
  int mi = 0x7fffffff;
  forEachLogit(row, cols, [&](float v, int j) {
    if (v == -CUDART_INF_F) return;
    if (v > m) {
      s = s * expf(m - v) + 1.f;
      m = v;
      mi = j;
    } else {
      s += expf(v - m);
    }
  });
  warpMergeStats(m, s, mi);
  if (lane == 0) {
    sh.wm[warp] = m;
    sh.wf[warp] = s;
    sh.wi[warp] = mi;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sh.wm[lane] : -CUDART_INF_F;
    s = lane < warps ? sh.wf[lane] : 0.f;
    mi = lane < warps ? sh.wi[lane] : 0x7fffffff;
    warpMergeStats(m, s, mi);
    if (lane == 0) {
      sh.wm[0] = m;
      sh.wf[0] = s;
      sh.wi[0] = mi;
    }
  }
  __syncthreads();
  *maxOut = sh.wm[0];
  *lseOut = sh.wm[0] == -CUDART_INF_F ? 0.f : sh.wm[0] + logf(sh.wf[0]);
  *argmaxOut = sh.wi[0] == 0x7fffffff ? 0 : sh.wi[0];
  __syncthreads();
}

// One row: draw from `row` (the logits, or their penalised copy), report logprobs of `raw` (the
// model's distribution, as OpenAI and SGLang report them). rawIsRow skips the second pass 1.
template <typename S, typename R>
__device__ void sampleCore(const S* row, const R* raw, bool rawIsRow, int cols, const float* p, float* o, SampleShared& sh) {
  const float temperature = p[0], topP = p[1], minP = fminf(p[3], 1.f), u = p[4];
  const int topK = (int)p[2];
  const int topN = min(min((int)p[5], SAMPLE_MAX_TOP), cols);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  // 1. max, argmax and log-sum-exp of what is drawn from, and of the raw logits when they differ.
  float mx, lse, lseRaw;
  int argmaxId;
  rowStats(row, cols, sh, &mx, &lse, &argmaxId);
  if (rawIsRow) {
    lseRaw = lse;
  } else {
    float mr;
    int ir;
    rowStats(raw, cols, sh, &mr, &lseRaw, &ir);
  }

  int chosen;
  if (temperature <= 0.f || topK == 1 || mx == -CUDART_INF_F) {
    chosen = argmaxId;  // greedy (and all -inf/NaN rows: token 0, as the host argmax)
  } else {
    const float invT = 1.f / temperature;
    int greater;
    const unsigned keyK = topK > 0 && topK < cols ? selectCount(row, cols, topK, sh, &greater) : 0u;
    const unsigned keyP = topP < 1.f ? selectMass(row, cols, keyK, mx, invT, topP, sh) : 0u;
    const unsigned thr = max(keyK, keyP);

    // 5. the draw over kept tokens in index order: warp w owns [w·seg, (w+1)·seg).
    const int seg = (cols + warps - 1) / warps;
    const int lo = min(warp * seg, cols), hi = min(lo + seg, cols);
    float ws = 0.f;
    for (int j = lo + lane; j < hi; j += 32) {
      const float v = logitAt(row, j);
      const float w = expf((v - mx) * invT);
      if (keyOf(v) >= thr && w >= minP) ws += w;
    }
    ws = warpSum(ws);
    if (lane == 0) sh.wf[warp] = ws;
    if (threadIdx.x == 0) sh.chosen = -1;
    __syncthreads();
    // exclusive prefix over the warps (every warp computes it; 32 values)
    float prefix = 0.f, total = 0.f;
    int lastWarp = -1;
    for (int w = 0; w < warps; w++) {
      const float x = sh.wf[w];
      if (w < warp) prefix += x;
      total += x;
      if (x > 0.f) lastWarp = w;
    }
    const float r = u * total;
    const bool owner = ws > 0.f && ((prefix <= r && r < prefix + ws) || (warp == lastWarp && r >= prefix + ws));
    if (owner) {
      float acc = prefix;
      int last = -1, pick = -1;
      for (int base = lo; base < hi && pick < 0; base += 32) {
        const int j = base + lane;
        float w = 0.f;
        if (j < hi) {
          const float v = logitAt(row, j);
          w = expf((v - mx) * invT);
          if (!(keyOf(v) >= thr && w >= minP)) w = 0.f;
        }
        float incl = w;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const float t = __shfl_up_sync(0xffffffffu, incl, off);
          if (lane >= off) incl += t;
        }
        const unsigned hit = __ballot_sync(0xffffffffu, w > 0.f && r < acc + incl);
        const unsigned kept = __ballot_sync(0xffffffffu, w > 0.f);
        if (hit) pick = base + __ffs(hit) - 1;
        if (kept) last = base + 31 - __clz(kept);
        acc += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (lane == 0) sh.chosen = pick >= 0 ? pick : last;
    }
    __syncthreads();
    chosen = sh.chosen >= 0 ? sh.chosen : argmaxId;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    o[0] = (float)chosen;
    o[1] = logitAt(raw, chosen) - lseRaw;
  }
  if (topN <= 0) return;

  // 6. top-N of the raw logits: the N-th largest key, every larger element (fewer than N), then
  // the lowest-index ties.
  int greater;
  const unsigned keyN = selectCount(raw, cols, topN, sh, &greater);
  const int needEq = topN - greater;
  if (threadIdx.x == 0) sh.ngt = 0;
  __syncthreads();
  int eqTaken = 0;
  for (int base = 0; base < cols; base += blockDim.x) {
    const int j = base + threadIdx.x;
    unsigned key = 0;
    float v = -CUDART_INF_F;
    if (j < cols) {
      v = logitAt(raw, j);
      key = keyOf(v);
    }
    const bool gt = j < cols && key > keyN;
    const bool eq = j < cols && key == keyN;
    if (gt) {
      const int slot = atomicAdd(&sh.ngt, 1);
      if (slot < SAMPLE_MAX_TOP) {
        sh.topV[slot] = v;
        sh.topI[slot] = j;
      }
    }
    const unsigned bal = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) sh.eqWarp[warp] = __popc(bal);
    __syncthreads();
    const int ngtNow = sh.ngt;  // stable between the two barriers: every thread sees the same
    if (eq && eqTaken < needEq) {
      int rank = eqTaken + __popc(bal & ((1u << lane) - 1u));
      for (int w = 0; w < warp; w++) rank += sh.eqWarp[w];
      if (rank < needEq) sh.eqIds[rank] = j;
    }
    int tileEq = 0;
    for (int w = 0; w < warps; w++) tileEq += sh.eqWarp[w];
    eqTaken += tileEq;
    __syncthreads();
    if (ngtNow >= greater && eqTaken >= needEq) break;  // uniform: all found
  }
  if (threadIdx.x == 0) {
    const int ng = min(sh.ngt, SAMPLE_MAX_TOP);
    // insertion sort of the larger ones: value descending, index ascending
    for (int a = 1; a < ng; a++) {
      const float v = sh.topV[a];
      const int i = sh.topI[a];
      int b = a - 1;
      while (b >= 0 && (sh.topV[b] < v || (sh.topV[b] == v && sh.topI[b] > i))) {
        sh.topV[b + 1] = sh.topV[b];
        sh.topI[b + 1] = sh.topI[b];
        b--;
      }
      sh.topV[b + 1] = v;
      sh.topI[b + 1] = i;
    }
    for (int a = 0; a < topN; a++) {
      const int id = a < ng ? sh.topI[a] : sh.eqIds[a - ng];
      o[2 + 2 * a] = (float)id;
      o[3 + 2 * a] = logitAt(raw, id) - lseRaw;
    }
  }
}

// params: SAMPLE_PARAMS floats per row; p[6] is the row's slot in `edited` (fp32 penalised
// copies made by logit_edit_rows), or < 0 to draw from the logits themselves.
template <typename T>
__device__ void sampleRow(const T* __restrict__ logits, int cols, const float* __restrict__ params, const float* __restrict__ edited, float* __restrict__ out) {
  __shared__ SampleShared sh;
  const T* raw = logits + (size_t)blockIdx.x * cols;
  const float* p = params + SAMPLE_PARAMS * blockIdx.x;
  float* o = out + (size_t)blockIdx.x * SAMPLE_OUT_STRIDE;
  const int slot = (int)p[6];
  if (slot >= 0) sampleCore(edited + (size_t)slot * cols, raw, false, cols, p, o, sh);
  else sampleCore(raw, raw, true, cols, p, o, sh);
}

extern "C" __global__ void __launch_bounds__(1024) sample_rows_f32(const float* x, int cols, const float* params, const float* edited, float* out) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  sampleRow(x, cols, params, edited, out);
}
extern "C" __global__ void __launch_bounds__(1024) sample_rows_bf16(const bf16* x, int cols, const float* params, const float* edited, float* out) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  sampleRow(x, cols, params, edited, out);
}

// Penalties and masks (what the host's applyPenalties and the min-new-tokens mask do), one block
// per edited row: copy logits row rows[b] into edited[b] as fp32, then each of its entries
// [offsets[b], offsets[b+1]) — {id, flags, sub, repetition} — becomes
//   v' = (flags & 1 ? (v > 0 ? v / repetition : v · repetition) : v) − sub,  or −inf if flags & 2.
// Reads and writes one row (≈ 1.6 MB at vocab 202048 in fp32): a few µs, and only for the rows
// whose requests ask for penalties.
template <typename T>
__device__ void editRow(const T* __restrict__ logits, int cols, const int* __restrict__ rows, const int* __restrict__ offsets, const int4* __restrict__ entries, float* __restrict__ edited) {
  const T* src = logits + (size_t)rows[blockIdx.x] * cols;
  float* dst = edited + (size_t)blockIdx.x * cols;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) dst[j] = toF(src[j]);
  __syncthreads();
  for (int e = offsets[blockIdx.x] + threadIdx.x; e < offsets[blockIdx.x + 1]; e += blockDim.x) {
    const int4 en = entries[e];
    if (en.x < 0 || en.x >= cols) continue;
    float v = dst[en.x];
    if (en.y & 1) {
      const float rep = __int_as_float(en.w);
      v = v > 0.f ? v / rep : v * rep;
    }
    v -= __int_as_float(en.z);
    dst[en.x] = (en.y & 2) ? -CUDART_INF_F : v;
  }
}

extern "C" __global__ void logit_edit_rows_f32(const float* x, int cols, const int* rows, const int* offsets, const int4* entries, float* edited) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  editRow(x, cols, rows, offsets, entries, edited);
}
extern "C" __global__ void logit_edit_rows_bf16(const bf16* x, int cols, const int* rows, const int* offsets, const int4* entries, float* edited) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  editRow(x, cols, rows, offsets, entries, edited);
}

// The drawn ids of sample_rows' output (column 0 of `stride` floats a row) as int32: the pick
// buffer a pipelined step's input ids are copied from.
extern "C" __global__ void sample_ids(const float* __restrict__ out, int stride, int n, int* __restrict__ ids) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < n) ids[r] = (int)out[(size_t)r * stride];
}
