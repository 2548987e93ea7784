// RMSNorm and the residual add fused into it. Per spec §1.4: normalise in fp32, round to the
// activation type, then multiply by the weight. The residual stream is fp32 (X = addend type).
// Roofline: memory-bound, one read of x (+ residual read/write) and one write of out per element;
// one block per row keeps the row in L1 for the second pass, so DRAM sees each byte once.
#include "norm.cuh"

template <typename X, typename T>
__device__ void rmsNormRow(const X* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int d, float eps) {
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = toF(x[i]);
    ss += v * v;
  }
  const float inv = 1.0f / sqrtf(blockSum(ss) / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[i] = fromF<T>(toF(fromF<T>(toF(x[i]) * inv)) * toF(w[i]));
}

// out = RMSNorm(x) ⊙ w
template <typename X, typename T>
__device__ void rmsNorm(const X* x, const T* w, T* out, int d, float eps) {
  const size_t row = (size_t)blockIdx.x * d;
  rmsNormRow(x + row, w, out + row, d, eps);
}

// res += x; out = RMSNorm(res) ⊙ w
template <typename X, typename T>
__device__ void addRmsNorm(float* __restrict__ res, const X* __restrict__ x, const T* w, T* out, int d, float eps) {
  const size_t row = (size_t)blockIdx.x * d;
  float* r = res + row;
  for (int i = threadIdx.x; i < d; i += blockDim.x) r[i] += toF(x[row + i]);
  __syncthreads();  // each thread re-reads only its own elements, but keep the pass order explicit
  rmsNormRow<float, T>(r, w, out + row, d, eps);
}

// res += x over n elements (grid-stride).
template <typename X>
__device__ void addInPlace(float* __restrict__ res, const X* __restrict__ x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) res[i] += toF(x[i]);
}

// The same for few long rows (decode: one row of 5120 per sequence), bf16 out: one thread per 8
// consecutive elements held in registers across the passes — one 16-byte load of x and of w, two
// of the residual, one store of each — instead of 256 threads looping 20 times over scalars
// (21 µs per call for one row in an ncu profile of a Scout-rank decode step, 2026-11-27; the
// bytes, 50 KB, take ~20 ns at copy bandwidth, so the kernel is pure latency). Needs d % 8 == 0,
// d ≤ 8 · blockDim, 16-byte rows; the host checks and launches ⌈d / 8⌉ threads (rounded to a warp).
template <typename X>
__device__ void addRmsNormVec(float* __restrict__ res, const X* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ out,
                              int d, float eps) {
  const size_t row = (size_t)blockIdx.x * d;
  const int c = threadIdx.x * 8;
  float xv[8] = {};
  if (c < d) load8(x + row + c, xv);
  addRmsNormRow8(res + row, xv, w, out + row, d, eps);
}

// out = RMSNorm(x)·w with the same thread-per-8-elements layout (the first layer's input norm
// over a prefill's rows: 2048 × 5120 fp32 in, bf16 out = 63 MB, 63 µs with the looping kernel).
template <typename X>
__device__ void rmsNormVec(const X* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ out, int d, float eps) {
  const size_t row = (size_t)blockIdx.x * d;
  float r[8] = {};
  if (threadIdx.x * 8 < d) load8(x + row + threadIdx.x * 8, r);
  rmsNormRow8(r, w, out + row, d, eps);
}

extern "C" __global__ void rms_norm_vec_f32_bf16(const float* x, const bf16* w, bf16* out, int d, float eps) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  rmsNormVec<float>(x, w, out, d, eps);
}
extern "C" __global__ void rms_norm_vec_bf16_bf16(const bf16* x, const bf16* w, bf16* out, int d, float eps) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  rmsNormVec<bf16>(x, w, out, d, eps);
}

extern "C" __global__ void add_rms_norm_vec_f32_bf16(float* res, const float* x, const bf16* w, bf16* out, int d, float eps) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  addRmsNormVec<float>(res, x, w, out, d, eps);
}
extern "C" __global__ void add_rms_norm_vec_bf16_bf16(float* res, const bf16* x, const bf16* w, bf16* out, int d, float eps) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  addRmsNormVec<bf16>(res, x, w, out, d, eps);
}
// A MoE layer's output and the next add + RMSNorm in one pass: x = shared + routed[inv[row]]
// rounded to bf16 (moe_combine's output, which it also writes to `x`), then res += x and out =
// RMSNorm(res)·w as add_rms_norm_vec. Bit-identical to moe_combine then add_rms_norm_vec; saves
// reading the two inputs a second time and a launch (2048-row prefill: 42 MB of 168).
extern "C" __global__ void add_rms_norm_moe_bf16(float* res, const bf16* shared, const bf16* routed, const int* inv, bf16* x,
                                                 const bf16* w, bf16* out, int d, float eps) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const size_t row = (size_t)blockIdx.x * d;
  const int c = threadIdx.x * 8;
  float xv[8] = {};
  if (c < d) {
    const uint4 sum = addBf16x8(*reinterpret_cast<const uint4*>(shared + row + c),
                                *reinterpret_cast<const uint4*>(routed + (size_t)inv[blockIdx.x] * d + c));
    *reinterpret_cast<uint4*>(x + row + c) = sum;
    widen8(sum, xv);
  }
  addRmsNormRow8(res + row, xv, w, out + row, d, eps);
}

#define NORM_KERNELS(XN, X, TN, T)                                                                            \
  extern "C" __global__ void rms_norm_##XN##_##TN(const X* x, const T* w, T* out, int d, float eps) {       \
    gridDependencyWait();                                                                                    \
    gridDependencyLaunchDependents();                                                                        \
    rmsNorm<X, T>(x, w, out, d, eps);                                                                        \
  }                                                                                                          \
  extern "C" __global__ void add_rms_norm_##XN##_##TN(float* res, const X* x, const T* w, T* out, int d, float eps) { \
    gridDependencyWait();                                                                                    \
    gridDependencyLaunchDependents();                                                                        \
    addRmsNorm<X, T>(res, x, w, out, d, eps);                                                                \
  }

NORM_KERNELS(f32, float, bf16, bf16)
NORM_KERNELS(bf16, bf16, bf16, bf16)
NORM_KERNELS(f32, float, f32, float)

extern "C" __global__ void add_bf16(float* res, const bf16* x, size_t n) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  addInPlace(res, x, n);
}
extern "C" __global__ void add_f32(float* res, const float* x, size_t n) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  addInPlace(res, x, n);
}
