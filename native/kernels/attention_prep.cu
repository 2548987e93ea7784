// Attention prologue, one fused pass per token row (spec §1.5 steps 2–5):
//   q, k: RoPE on interleaved pairs (fp32 angle pos·f_i, accurate sincosf — no fast math),
//         then weightless per-head RMS norm (qk-norm) when enabled;
//   q:    NoPE temperature tuning τ(p) = 1 + a·ln(⌊(p+1)/F⌋ + 1) when enabled;
//   k, v: written into the layer's KV pool at the row's slot.
// q, k and v rows are ldq / ldk / ldv elements apart: separate tensors, or column blocks of one
// [n, (Hq + 2·Hkv)·D] output when the three projections ran as one GEMM.
// Roofline: memory-bound, reads q/k/v once and writes q' + the KV slot once; (Hq + 2·Hkv)·D
// elements per row (Scout prefill of 2048 rows: 58 MB, ~20 µs at 2.95 TB/s). One block per row,
// one warp per head, each lane holding two pairs, loaded and stored as one 2-element vector
// (head_dim ≤ 128, even); the row's RoPE angles are computed once into shared memory, not once
// per head (they were 6.3 M accurate sincosf per 2048-row prefill, with 2-byte loads: 84 µs on
// an H100).
#include "common.cuh"

template <typename T>
struct PairOf;
template <>
struct PairOf<bf16> {
  using V = __nv_bfloat162;
  static __device__ __forceinline__ void get(V v, float& a, float& b) { a = __low2float(v); b = __high2float(v); }
  static __device__ __forceinline__ V make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};
template <>
struct PairOf<float> {
  using V = float2;
  static __device__ __forceinline__ void get(V v, float& a, float& b) { a = v.x; b = v.y; }
  static __device__ __forceinline__ V make(float a, float b) { return make_float2(a, b); }
};

enum { PREP_ROPE = 1, PREP_QK_NORM = 2, PREP_TEMPERATURE = 4 };

template <typename T>
__device__ void attnPrep(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ qOut,
                         T* __restrict__ kPool, T* __restrict__ vPool, const int* __restrict__ positions,
                         const int* __restrict__ rowSlot, const float* __restrict__ invFreq, int hq, int hkv, int dim,
                         int ldq, int ldk, int ldv, int flags, float eps, float floorScale, float attnScale) {
  const int r = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int pos = positions[r];
  const size_t slot = (size_t)rowSlot[r];
  const int half = dim >> 1;
  float tau = 1.f;
  if (flags & PREP_TEMPERATURE) {
    // Computed in double like the host reference; the floor of an exact quotient of integers.
    tau = (float)(1.0 + (double)attnScale * log(floor((double)(pos + 1) / (double)floorScale) + 1.0));
  }
  __shared__ float sinOf[64], cosOf[64];
  if ((flags & PREP_ROPE) && threadIdx.x < half) sincosf((float)pos * invFreq[threadIdx.x], &sinOf[threadIdx.x], &cosOf[threadIdx.x]);
  // Only now the PDL wait (common.cuh): positions and slots are host uploads from before the
  // previous kernels, so the angles are ready when q, k and v are.
  gridDependencyWait();
  gridDependencyLaunchDependents();
  __syncthreads();
  using P = PairOf<T>;
  // Each warp's heads two at a time, both loaded before either is worked on: twice the bytes in
  // flight per warp (one head's 256 B load per warp left a 2048-row prefill at ~45 µs, half the
  // copy rate: latency-bound, not bandwidth-bound).
  const int heads = hq + 2 * hkv;
  for (int h0 = warp; h0 < heads; h0 += 2 * warps) {
    float a[2][2] = {}, b[2][2] = {};
    const T* src[2];
    T* dst[2];
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int h = h0 + u * warps;
      if (h >= heads) continue;
      const bool isQ = h < hq, isV = h >= hq + hkv;
      if (isQ) {
        src[u] = q + (size_t)r * ldq + (size_t)h * dim;
        dst[u] = qOut + ((size_t)r * hq + h) * dim;
      } else if (!isV) {
        src[u] = k + (size_t)r * ldk + (size_t)(h - hq) * dim;
        dst[u] = kPool + (slot * hkv + (h - hq)) * dim;
      } else {
        src[u] = v + (size_t)r * ldv + (size_t)(h - hq - hkv) * dim;
        dst[u] = vPool + (slot * hkv + (h - hq - hkv)) * dim;
      }
      const typename P::V* src2 = reinterpret_cast<const typename P::V*>(src[u]);
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const int p = lane + 32 * j;
        if (p < half) P::get(src2[p], a[u][j], b[u][j]);
      }
    }
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int h = h0 + u * warps;
      if (h >= heads) continue;
      const bool isQ = h < hq, isV = h >= hq + hkv;
      if (!isV) {
        if (flags & PREP_ROPE) {
#pragma unroll
          for (int j = 0; j < 2; j++) {
            const int p = lane + 32 * j;
            if (p < half) {
              const float s = sinOf[p], c = cosOf[p];
              const float x0 = a[u][j], x1 = b[u][j];
              a[u][j] = x0 * c - x1 * s;
              b[u][j] = x0 * s + x1 * c;
            }
          }
        }
        if (flags & PREP_QK_NORM) {
          const float ss = warpSum(a[u][0] * a[u][0] + b[u][0] * b[u][0] + a[u][1] * a[u][1] + b[u][1] * b[u][1]);
          const float inv = 1.0f / sqrtf(ss / dim + eps);
#pragma unroll
          for (int j = 0; j < 2; j++) {
            a[u][j] *= inv;
            b[u][j] *= inv;
          }
        }
        if (isQ) {
#pragma unroll
          for (int j = 0; j < 2; j++) {
            a[u][j] *= tau;
            b[u][j] *= tau;
          }
        }
      }
      typename P::V* dst2 = reinterpret_cast<typename P::V*>(dst[u]);
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const int p = lane + 32 * j;
        if (p < half) dst2[p] = P::make(a[u][j], b[u][j]);
      }
    }
  }
}

#define PREP_KERNEL(TN, T)                                                                                      \
  extern "C" __global__ void attn_prep_##TN(const T* q, const T* k, const T* v, T* qOut, T* kPool, T* vPool,   \
                                             const int* positions, const int* rowSlot, const float* invFreq,    \
                                             int hq, int hkv, int dim, int ldq, int ldk, int ldv, int flags,    \
                                             float eps, float floorScale, float attnScale) {                    \
    attnPrep<T>(q, k, v, qOut, kPool, vPool, positions, rowSlot, invFreq, hq, hkv, dim, ldq, ldk, ldv, flags,   \
                eps, floorScale, attnScale);                                                                    \
  }

PREP_KERNEL(bf16, bf16)
PREP_KERNEL(f32, float)
