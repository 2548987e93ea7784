// Llama 4 MoE glue around the per-expert GEMMs (spec §1.6): top-1 routing with the sigmoid
// score applied to the expert INPUT, the gather of each expert's rows into one contiguous block,
// and the final shared + routed sum. The GEMMs themselves run through cuBLASLt per expert.
// Roofline: all memory-bound and small next to the expert weights (E·3·F·d·sizeof T per layer).
#include "common.cuh"

// One thread per row: argmax over the raw logits (lowest index wins ties), score = sigmoid(max) in fp32.
template <typename T>
__device__ void moeRoute(const T* __restrict__ logits, int* __restrict__ expert, float* __restrict__ score, int n, int e) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const T* row = logits + (size_t)r * e;
  int best = 0;
  float bestV = toF(row[0]);
  for (int j = 1; j < e; j++) {
    const float v = toF(row[j]);
    if (v > bestV) {
      bestV = v;
      best = j;
    }
  }
  expert[r] = best;
  score[r] = sigmoidF(bestV);
}

// xin[i, :] = x[perm[i], :] · score[perm[i]]: rows sorted by expert, scaled on the input.
template <typename T>
__device__ void moeGather(const T* __restrict__ x, const int* __restrict__ perm, const float* __restrict__ score,
                          T* __restrict__ xin, int d) {
  const int row = perm[blockIdx.x];
  scaleRow<T>(x + (size_t)row * d, xin + (size_t)blockIdx.x * d, score[row], d);
}

// out[r, :] = shared[r, :] + routed[inv[r], :]  (top-1: each row has exactly one routed row).
template <typename T>
__device__ void moeCombine(const T* __restrict__ shared, const T* __restrict__ routed, const int* __restrict__ inv,
                           T* __restrict__ out, int d) {
  const size_t r = blockIdx.x;
  const T* a = shared + r * d;
  const T* b = routed + (size_t)inv[r] * d;
  T* o = out + r * d;
  // bf16 rows of d % 8 == 0: 16-byte accesses, 8 elements a thread.
  if constexpr (sizeof(T) == 2) {
    if ((d & 7) == 0) {
      for (int c = threadIdx.x * 8; c < d; c += blockDim.x * 8)
        *reinterpret_cast<uint4*>(o + c) = addBf16x8(*reinterpret_cast<const uint4*>(a + c), *reinterpret_cast<const uint4*>(b + c));
      return;
    }
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = fromF<T>(toF(a[i]) + toF(b[i]));
}

#define MOE_KERNELS(TN, T)                                                                                          \
  extern "C" __global__ void moe_route_##TN(const T* logits, int* expert, float* score, int n, int e) {          \
    gridDependencyWait();                                                                                          \
    gridDependencyLaunchDependents();                                                                              \
    moeRoute<T>(logits, expert, score, n, e);                                                                      \
  }                                                                                                                \
  extern "C" __global__ void moe_gather_##TN(const T* x, const int* perm, const float* score, T* xin, int d) {   \
    gridDependencyWait();                                                                                          \
    gridDependencyLaunchDependents();                                                                              \
    moeGather<T>(x, perm, score, xin, d);                                                                          \
  }                                                                                                                \
  extern "C" __global__ void moe_combine_##TN(const T* shared, const T* routed, const int* inv, T* out, int d) {  \
    gridDependencyWait();                                                                                          \
    gridDependencyLaunchDependents();                                                                              \
    moeCombine<T>(shared, routed, inv, out, d);                                                                    \
  }

MOE_KERNELS(bf16, bf16)
MOE_KERNELS(f32, float)
