// Embedding lookup: out[r, :] = table[ids[r], :] widened to fp32 (the residual stream is fp32).
// Roofline: pure copy, n·d·(sizeof T + 4) bytes; one block per row, coalesced.
// Ids are range-checked on the host before launch; -1 marks a token outside this rank's
// vocabulary slice (tensor parallelism) and gives a zero row, which the all-reduce fills.
#include "common.cuh"

// dst[0, d) = src[0, d) widened to fp32; bf16 rows of d % 8 == 0 move 8 elements a thread (one
// 16-byte load, two 16-byte stores: the looping 2-byte version ran 64–84 µs for 2048 × 5120).
template <typename T>
__device__ __forceinline__ void widenRow(const T* __restrict__ src, float* __restrict__ dst, int d) {
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = toF(src[i]);
}
template <>
__device__ __forceinline__ void widenRow<bf16>(const bf16* __restrict__ src, float* __restrict__ dst, int d) {
  if (d & 7) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
    return;
  }
  for (int c = threadIdx.x * 8; c < d; c += blockDim.x * 8) {
    float v[8];
    widen8(*reinterpret_cast<const uint4*>(src + c), v);
    reinterpret_cast<float4*>(dst + c)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(dst + c)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

template <typename T>
__device__ void embedding(const T* __restrict__ table, const int* __restrict__ ids, float* __restrict__ out, int d) {
  const int id = ids[blockIdx.x];
  float* dst = out + (size_t)blockIdx.x * d;
  if (id < 0) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  widenRow(table + (size_t)id * d, dst, d);
}

extern "C" __global__ void embedding_bf16(const bf16* table, const int* ids, float* out, int d) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  embedding(table, ids, out, d);
}
extern "C" __global__ void embedding_f32(const float* table, const int* ids, float* out, int d) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  embedding(table, ids, out, d);
}

// A CUDA-graph step under tensor parallelism: the ids at the step's fixed address are global
// (the same on every rank), so the rank's slice [start, start + rows) is taken on the device;
// ids outside it give zero rows, which the all-reduce fills.
template <typename T>
__device__ void embeddingShard(const T* __restrict__ table, const int* __restrict__ ids, float* __restrict__ out, int d, int start, int rows) {
  const int id = ids[blockIdx.x] - start;
  float* dst = out + (size_t)blockIdx.x * d;
  if (id < 0 || id >= rows) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  widenRow(table + (size_t)id * d, dst, d);
}

extern "C" __global__ void embedding_shard_bf16(const bf16* table, const int* ids, float* out, int d, int start, int rows) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  embeddingShard(table, ids, out, d, start, rows);
}
extern "C" __global__ void embedding_shard_f32(const float* table, const int* ids, float* out, int d, int start, int rows) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  embeddingShard(table, ids, out, d, start, rows);
}
