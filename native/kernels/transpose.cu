// Batched transpose, out[b, c, r] = in[b, r, c]: checkpoint tensors stored [.., in, out] (the
// fused expert weights) become [.., out, in] once at load, so every weight on the device has the
// layout the GEMV kernels and cuBLASLt's op T read row by row. 32×32 tiles through shared
// memory (padded row: no bank conflicts for 4-byte elements), 32×8 threads, grid
// (ceil(cols/32), ceil(rows/32), batch).
// Roofline: a copy, 2·n·sizeof E bytes (Scout's 2.7 GB gate_up tensor ≈ 1.8 ms at 3.0 TB/s);
// load-time only.
#include "common.cuh"

template <typename E>
__device__ void transpose(const E* __restrict__ in, E* __restrict__ out, int rows, int cols) {
  __shared__ E tile[32][33];
  const size_t base = (size_t)blockIdx.z * rows * cols;
  const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int r = r0 + i, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = in[base + (size_t)r * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int c = c0 + i, r = r0 + threadIdx.x;
    if (c < cols && r < rows) out[base + (size_t)c * rows + r] = tile[threadIdx.x][i];
  }
}

extern "C" __global__ void transpose_u16(const uint16_t* in, uint16_t* out, int rows, int cols) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  transpose(in, out, rows, cols);
}
extern "C" __global__ void transpose_u32(const uint32_t* in, uint32_t* out, int rows, int cols) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  transpose(in, out, rows, cols);
}
