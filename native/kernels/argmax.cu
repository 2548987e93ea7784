// Greedy sampling on the device: ids[r] = argmax_j x[r, j], the lowest index among equal maxima
// (as engine/sampling.ts argmax), so a decode step downloads n token ids instead of n × vocab
// logits. One block of 1024 threads per row: strided pass (16-byte vectors, several in flight),
// then a (value, index) reduction over the warps.
// Roofline: one read of the logits, n·V·sizeof T bytes (Scout, batch 64, fp32: 52 MB ≈ 18 µs at
// 3.0 TB/s) — against 52 MB over PCIe to the host (~2 ms pinned, tens of ms pageable).
#include <math_constants.h>

#include "common.cuh"

__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// The row's (max, lowest index of it) in lane 0 of warp 0; index 0x7fffffff for an all-NaN row.
// Eight 16-byte vectors in flight a thread (forEachInRow); which thread sees an element does not
// change the result: `better` keeps the largest value, the lowest index among equals.
template <typename T>
__device__ void rowMax(const T* __restrict__ x, int cols, float& v, int& i) {
  const T* row = x + (size_t)blockIdx.x * cols;
  v = -CUDART_INF_F;
  i = 0x7fffffff;
  forEachInRow<8>(row, cols, [&](float ov, int j) { better(v, i, ov, j); });
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  __shared__ float sv[32];
  __shared__ int si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    v = lane < warps ? sv[lane] : -CUDART_INF_F;
    i = lane < warps ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  }
}

template <typename T>
__device__ void argmaxRows(const T* __restrict__ x, int cols, int* __restrict__ ids) {
  float v;
  int i;
  rowMax(x, cols, v, i);
  if (threadIdx.x == 0) ids[blockIdx.x] = i == 0x7fffffff ? 0 : i;  // an all-NaN row: token 0, as the host argmax
}

// Tensor parallelism (the vocabulary split over ranks): each row's (max, global index) as two
// floats (indices < 2^24 are exact; an all-NaN row gives (-inf, -1)) at all[rank][row] of
// all [ranks, rows, 2], and zeros in the other ranks' places: summed over ranks in rank order (an
// all-reduce: x + 0 is x), every rank holds every rank's pair — an all-gather that takes the
// custom all-reduce's peer-memory path — for argmax_merge.
template <typename T>
__device__ void argmaxPairs(const T* __restrict__ x, int cols, int offset, float* __restrict__ all, int rank, int ranks) {
  float v;
  int i;
  rowMax(x, cols, v, i);
  if (threadIdx.x < ranks) {
    float* p = all + ((size_t)threadIdx.x * gridDim.x + blockIdx.x) * 2;
    const bool mine = threadIdx.x == rank;
    p[0] = !mine ? 0.f : i == 0x7fffffff ? -CUDART_INF_F : v;
    p[1] = !mine ? 0.f : i == 0x7fffffff ? -1.0f : (float)(i + offset);
  }
}

extern "C" __global__ void argmax_rows_f32(const float* x, int cols, int* ids) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  argmaxRows(x, cols, ids);
}
extern "C" __global__ void argmax_rows_bf16(const bf16* x, int cols, int* ids) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  argmaxRows(x, cols, ids);
}
extern "C" __global__ void argmax_pairs_f32(const float* x, int cols, int offset, float* all, int rank, int ranks) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  argmaxPairs(x, cols, offset, all, rank, ranks);
}
extern "C" __global__ void argmax_pairs_bf16(const bf16* x, int cols, int offset, float* all, int rank, int ranks) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  argmaxPairs(x, cols, offset, all, rank, ranks);
}

// Tensor parallelism: every rank's pairs, gathered as [ranks, rows, 2], → each row's id with
// the largest value, the lowest id among equal maxima (argmax over the whole vocabulary); a row
// NaN on every rank gives token 0, as the host argmax. One thread per row, ranks in order.
extern "C" __global__ void argmax_merge(const float* __restrict__ all, int ranks, int rows, int* __restrict__ ids) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float best = -CUDART_INF_F;
  int id = -1;
  for (int k = 0; k < ranks; k++) {
    const float v = all[((size_t)k * rows + r) * 2];
    const int i = (int)all[((size_t)k * rows + r) * 2 + 1];
    if (i >= 0 && (id < 0 || v > best || (v == best && i < id))) {
      best = v;
      id = i;
    }
  }
  ids[r] = id < 0 ? 0 : id;
}
