// Shared helpers for tsglang's kernels. Storage type T is bf16 (serving) or float (the
// reference-precision mode); arithmetic is always fp32. Kernels are extern "C" so the host
// finds them by name: <op>_<T> (e.g. rms_norm_f32_bf16 = fp32 input, bf16 output).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// Programmatic dependent launch (the host launches every kernel with it on sm_90): a kernel's
// blocks may start while the previous kernel in the stream still runs. Every kernel therefore
// calls gridDependencyWait() first, in every block, before any global-memory access — it returns
// once the previous grid has finished and its writes are visible, and since that grid waited for
// its own predecessor the same way, the whole stream stays ordered. Then
// gridDependencyLaunchDependents() lets the next kernel get resident and reach its own wait while
// this one works (after the wait, not before: at most one grid waits behind a running one).
// Both are no-ops without PDL; the sm_80 / compute_80 builds have neither instruction.
// The one exception to "wait first": a kernel starts only after the previous one passed its own
// wait, so everything two or more launches back (and every upload before those) is complete and
// may be read before the wait — attention's prep and decode kernels read their step inputs
// (positions, slots, tile tables: host uploads and slot_table_write, long before) that way; the
// one-token GEMVs behind a latency-bound kernel (q/k/v, o_proj, the MoE router: gemv.cuh's
// WeightHead) their first weights, and the pushed all-reduce its residual row and norm weight.
// Never a write, and never a read of the previous kernel's output — except behind a count the
// writer raises once its output is written (the one-token MoE down's shared pass, moe_decode.cu).
__device__ __forceinline__ void gridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void gridDependencyLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The GPU's global timer in ns (for bounded waits and the profiling stamps).
__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// A shared-memory pointer as the 32-bit address PTX's shared-state-space operands take.
__device__ __forceinline__ uint32_t smemAddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ float toF(float x) { return x; }
__device__ __forceinline__ float toF(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T fromF(float x);
template <> __device__ __forceinline__ float fromF<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 fromF<bf16>(float x) { return __float2bfloat16_rn(x); }

// The MoE's activations in fp32 (spec §1.6): SiLU(gate)·up, and the router's sigmoid score.
// One definition, so the fused kernels round exactly as the unfused path does.
__device__ __forceinline__ float siluTimes(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }
__device__ __forceinline__ float sigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/** Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result. */
__device__ __forceinline__ float blockSum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpSum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float t = lane < warps ? partial[lane] : 0.f;
  return warpSum(t);
}

// Eight bf16 lanes as floats.
__device__ __forceinline__ void widen8(const uint4 u, float (&v)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}

// 16 bytes as float lanes: 8 bf16 (little-endian pairs, widened exactly) or 4 fp32.
__device__ __forceinline__ void unpack(const uint4& v, float (&f)[8]) {
  f[0] = __uint_as_float(v.x << 16);
  f[1] = __uint_as_float(v.x & 0xffff0000u);
  f[2] = __uint_as_float(v.y << 16);
  f[3] = __uint_as_float(v.y & 0xffff0000u);
  f[4] = __uint_as_float(v.z << 16);
  f[5] = __uint_as_float(v.z & 0xffff0000u);
  f[6] = __uint_as_float(v.w << 16);
  f[7] = __uint_as_float(v.w & 0xffff0000u);
}
__device__ __forceinline__ void unpack(const uint4& v, float (&f)[4]) {
  f[0] = __uint_as_float(v.x);
  f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z);
  f[3] = __uint_as_float(v.w);
}

// f(x_j as float, j) for this thread's strided share of a row (threads over blockDim.x), in
// increasing j for each thread: a 16-byte-aligned row in 16-byte vectors, U of them loaded before
// any is used, the rest (and unaligned rows) element by element. The scans over a vocabulary
// (argmax.cu, sample.cu) read rows just written, from L2: one element a step had made each a
// chain of round trips (~50 a thread on a tp-4 rank's 50,512 columns, ~200 on 202,048).
template <int U, typename T, typename F>
__device__ __forceinline__ void forEachInRow(const T* row, int cols, F f) {
  constexpr int E = 16 / sizeof(T);
  const int vectors = ((uintptr_t)row & 15) == 0 ? cols / E : 0;
  const uint4* rv = reinterpret_cast<const uint4*>(row);
  for (int v0 = threadIdx.x; v0 < vectors; v0 += blockDim.x * U) {
    uint4 buf[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int k = v0 + u * blockDim.x;
      if (k < vectors) buf[u] = __ldg(rv + k);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int k = v0 + u * blockDim.x;
      if (k >= vectors) break;
      float x[E];
      unpack(buf[u], x);
#pragma unroll
      for (int e = 0; e < E; e++) f(x[e], k * E + e);
    }
  }
  for (int j = vectors * E + threadIdx.x; j < cols; j += blockDim.x) f(toF(row[j]), j);
}

// Eight bf16 lanes of a + b, each summed in fp32 and rounded to bf16 (moe_combine's add; the
// fused add_rms_norm_moe reuses it so the two stay bit-identical).
__device__ __forceinline__ uint4 addBf16x8(uint4 a, const uint4 b) {
  __nv_bfloat162* x = reinterpret_cast<__nv_bfloat162*>(&a);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float2 p = __bfloat1622float2(x[k]), q = __bfloat1622float2(y[k]);
    x[k] = __floats2bfloat162_rn(p.x + q.x, p.y + q.y);
  }
  return a;
}

// dst[0, d) = round(src[0, d) · s): in bf16 with d % 8 == 0 (16-byte rows), 8 elements per thread
// and step (one 16-byte load and store), else one; any blockDim. The MoE gathers of one row per
// block were latency-bound as 20 scalar steps per thread at d = 5120.
template <typename T>
__device__ __forceinline__ void scaleRow(const T* __restrict__ src, T* __restrict__ dst, float s, int d) {
  for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = fromF<T>(toF(src[c]) * s);
}
template <>
__device__ __forceinline__ void scaleRow<bf16>(const bf16* __restrict__ src, bf16* __restrict__ dst, float s, int d) {
  if (d & 7) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = __float2bfloat16_rn(__bfloat162float(src[c]) * s);
    return;
  }
  for (int c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
    uint4 u = *reinterpret_cast<const uint4*>(src + c);
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float2 f = __bfloat1622float2(h[k]);
      h[k] = __floats2bfloat162_rn(f.x * s, f.y * s);
    }
    *reinterpret_cast<uint4*>(dst + c) = u;
  }
}
