// y[n, out] = x[n, in] · Wᵀ for shapes cuBLASLt has no algorithm for (and as a cross-check).
// W is [out, in] (wT = 0) or stored transposed as [in, out] (wT = 1). 16×16 output tiles with
// both operands staged through shared memory; fp32 accumulation.
// Roofline: a plain CUDA-core GEMM (no tensor cores), ≈1–2% of the bf16 tensor-core peak —
// acceptable only for the odd small shape.
#include "common.cuh"

constexpr int TILE = 16;

template <typename T, typename O>
__device__ void gemmFallback(const T* __restrict__ x, const T* __restrict__ w, O* __restrict__ y, int n, int out,
                             int in, int wT) {
  __shared__ float xs[TILE][TILE + 1], ws[TILE][TILE + 1];
  const int tr = threadIdx.y, tc = threadIdx.x;
  const int row = blockIdx.y * TILE + tr;  // token
  const int col = blockIdx.x * TILE + tc;  // output feature
  float acc = 0.f;
  for (int k0 = 0; k0 < in; k0 += TILE) {
    const int kx = k0 + tc;
    xs[tr][tc] = (row < n && kx < in) ? toF(x[(size_t)row * in + kx]) : 0.f;
    const int o = blockIdx.x * TILE + tr, kw = k0 + tc;  // ws[o][k]
    ws[tr][tc] = (o < out && kw < in) ? toF(wT ? w[(size_t)kw * out + o] : w[(size_t)o * in + kw]) : 0.f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TILE; kk++) acc += xs[tr][kk] * ws[tc][kk];
    __syncthreads();
  }
  if (row < n && col < out) y[(size_t)row * out + col] = fromF<O>(acc);
}

extern "C" __global__ void gemm_fallback_bf16_bf16(const bf16* x, const bf16* w, bf16* y, int n, int out, int in, int wT) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  gemmFallback(x, w, y, n, out, in, wT);
}
extern "C" __global__ void gemm_fallback_bf16_f32(const bf16* x, const bf16* w, float* y, int n, int out, int in, int wT) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  gemmFallback(x, w, y, n, out, in, wT);
}
extern "C" __global__ void gemm_fallback_f32_f32(const float* x, const float* w, float* y, int n, int out, int in, int wT) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  gemmFallback(x, w, y, n, out, in, wT);
}
