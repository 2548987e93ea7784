// Embedding lookup: out[r, :] = table[ids[r], :] widened to fp32 (the residual stream is fp32).
// Roofline: pure copy, n·d·(sizeof T + 4) bytes; one block per row, coalesced.
// Ids are range-checked on the host before launch; -1 marks a token outside this rank's
// vocabulary slice (tensor parallelism) and gives a zero row, which the all-reduce fills.
#include "common.cuh"

template <typename T>
__device__ void embedding(const T* __restrict__ table, const int* __restrict__ ids, float* __restrict__ out, int d) {
  const int id = ids[blockIdx.x];
  float* dst = out + (size_t)blockIdx.x * d;
  if (id < 0) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  const T* src = table + (size_t)id * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = toF(src[i]);
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
  const T* src = table + (size_t)id * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = toF(src[i]);
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
