// Attention over the paged KV pools, prefill and decode alike (the simple, correct version).
// One block per (query row, query head); its 4 warps stride over the allowed keys with an
// online softmax in fp32 (lanes split the head dim, ≤ 128), then merge through shared memory.
// Allowed keys for a query at position p: [lo, p] with lo = 0 (global) or p − p mod C
// (chunked-local, absolute chunk boundaries). Key u lives at slot slotTable[slotBase + u].
// GQA: query head h reads KV head h / (Hq / Hkv).
// Roofline: decode is memory-bound on K/V (2·kvLen·D·sizeof T per KV head, re-read by the G
// query heads of a group through L2); prefill is compute-bound and this kernel does it with
// scalar FMAs and a warp reduction per key — far from the tensor-core bound. The tiled
// FlashAttention-style kernels (attention_fa.cu, mma.sync) replace it; this one is the reference.
#include <math_constants.h>

#include "common.cuh"

constexpr int ATTN_WARPS = 4;
constexpr int ATTN_MAX_DIM = 128;

template <typename T>
__device__ void attention(const T* __restrict__ q, const T* __restrict__ kPool, const T* __restrict__ vPool,
                          const int* __restrict__ slotTable, const int* __restrict__ rowSlotBase,
                          const int* __restrict__ rowPos, T* __restrict__ out, int hq, int hkv, int dim, int chunk,
                          float scale) {
  const int r = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int pos = rowPos[r];
  const int lo = chunk > 0 ? pos - pos % chunk : 0;
  const int* slots = slotTable + rowSlotBase[r];
  const int kvh = h / (hq / hkv);
  const size_t kvStride = (size_t)hkv * dim;

  float qv[4], acc[4];
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int d = lane + 32 * j;
    qv[j] = d < dim ? toF(q[((size_t)r * hq + h) * dim + d]) * scale : 0.f;
    acc[j] = 0.f;
  }
  float m = -CUDART_INF_F, l = 0.f;
  for (int u = lo + warp; u <= pos; u += ATTN_WARPS) {
    const size_t base = (size_t)slots[u] * kvStride + (size_t)kvh * dim;
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int d = lane + 32 * j;
      if (d < dim) s += qv[j] * toF(kPool[base + d]);
    }
    s = warpSum(s);
    const float mNew = fmaxf(m, s);
    const float correction = expf(m - mNew);  // exp(-inf) = 0 on the first key
    const float p = expf(s - mNew);
    l = l * correction + p;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * correction + (d < dim ? p * toF(vPool[base + d]) : 0.f);
    }
    m = mNew;
  }

  // Merge the warps' partial softmaxes; a warp that saw no key has m = -inf and weight 0.
  __shared__ float sm[ATTN_WARPS], sl[ATTN_WARPS], sacc[ATTN_WARPS][ATTN_MAX_DIM];
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int d = lane + 32 * j;
    if (d < dim) sacc[warp][d] = acc[j];
  }
  __syncthreads();
  float mAll = -CUDART_INF_F;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) mAll = fmaxf(mAll, sm[w]);
  float lAll = 0.f;
  float weight[ATTN_WARPS];
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) {
    weight[w] = sm[w] == -CUDART_INF_F ? 0.f : expf(sm[w] - mAll);
    lAll += sl[w] * weight[w];
  }
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) o += sacc[w][d] * weight[w];
    out[((size_t)r * hq + h) * dim + d] = fromF<T>(o / lAll);
  }
}

#define ATTN_KERNEL(TN, T)                                                                                       \
  extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_##TN(                                 \
      const T* q, const T* kPool, const T* vPool, const int* slotTable, const int* rowSlotBase, const int* rowPos, \
      T* out, int hq, int hkv, int dim, int chunk, float scale) {                                                \
    gridDependencyWait();                                                                                        \
    gridDependencyLaunchDependents();                                                                            \
    attention<T>(q, kPool, vPool, slotTable, rowSlotBase, rowPos, out, hq, hkv, dim, chunk, scale);              \
  }

ATTN_KERNEL(bf16, bf16)
ATTN_KERNEL(f32, float)
