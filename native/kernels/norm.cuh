// The one-row add + RMSNorm shared by norm.cu (add_rms_norm_vec) and allreduce.cu (the fused
// all-reduce): one thread per 8 consecutive elements, held in registers.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void load8(const bf16* p, float (&v)[8]) { widen8(*reinterpret_cast<const uint4*>(p), v); }
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// out = RMSNorm(r)·w for this thread's 8 elements c = 8·threadIdx.x of a row (r: zeros past d;
// w8: w's 8 elements there, as loaded), normalised in fp32, rounded to bf16, then weighted (as
// rmsNormRow). Every thread of the block calls it (the sum of squares is a block reduction).
__device__ __forceinline__ void rmsNormRow8(const float (&r)[8], const uint4 w8, bf16* __restrict__ out, int d, float eps) {
  const int c = threadIdx.x * 8;
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) ss += r[k] * r[k];
  const float inv = 1.0f / sqrtf(blockSum(ss) / d + eps);
  if (c >= d) return;
  float wv[8];
  widen8(w8, wv);
  uint4 o;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float a = __bfloat162float(__float2bfloat16_rn(r[2 * k] * inv)) * wv[2 * k];
    const float b = __bfloat162float(__float2bfloat16_rn(r[2 * k + 1] * inv)) * wv[2 * k + 1];
    h[k] = __floats2bfloat162_rn(a, b);
  }
  *reinterpret_cast<uint4*>(out + c) = o;
}

// The same, loading w's elements first (in flight during the block reduction, not after it).
__device__ __forceinline__ void rmsNormRow8(const float (&r)[8], const bf16* __restrict__ w, bf16* __restrict__ out, int d, float eps) {
  const int c = threadIdx.x * 8;
  rmsNormRow8(r, c < d ? *reinterpret_cast<const uint4*>(w + c) : make_uint4(0, 0, 0, 0), out, d, eps);
}

// What addRmsNormRow8 reads besides x: this thread's residual and weight elements (zeros past d).
struct AddNormInputs {
  float r[8] = {};
  uint4 w8 = make_uint4(0, 0, 0, 0);
  __device__ __forceinline__ void load(const float* __restrict__ res, const bf16* __restrict__ w, int d) {
    const int c = threadIdx.x * 8;
    if (c >= d) return;
    load8(res + c, r);
    w8 = *reinterpret_cast<const uint4*>(w + c);
  }
};

// This thread's 8 elements c = 8·threadIdx.x of a row (xv: zeros past d): res += xv (fp32, in
// place; `in` holds res's and w's elements), then out = RMSNorm(res)·w (rmsNormRow8).
__device__ __forceinline__ void addRmsNormRow8(float* __restrict__ res, AddNormInputs& in, const float (&xv)[8], bf16* __restrict__ out,
                                               int d, float eps) {
  const int c = threadIdx.x * 8;
  if (c < d) {
#pragma unroll
    for (int k = 0; k < 8; k++) in.r[k] += xv[k];
    reinterpret_cast<float4*>(res + c)[0] = make_float4(in.r[0], in.r[1], in.r[2], in.r[3]);
    reinterpret_cast<float4*>(res + c)[1] = make_float4(in.r[4], in.r[5], in.r[6], in.r[7]);
  }
  rmsNormRow8(in.r, in.w8, out, d, eps);
}

__device__ __forceinline__ void addRmsNormRow8(float* __restrict__ res, const float (&xv)[8], const bf16* __restrict__ w,
                                               bf16* __restrict__ out, int d, float eps) {
  AddNormInputs in;
  in.load(res, w, d);
  addRmsNormRow8(res, in, xv, out, d, eps);
}
