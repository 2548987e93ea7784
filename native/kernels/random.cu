// Random weights for --load-format dummy, made where they live: out[i] ~ normal(0, std), a pure
// function of (seed, i) (counter-based: a 64-bit mix of the pair index gives two uniforms, and
// Box–Muller turns them into the pair's two normals), or the constant `fill` when std is 0.
// Roofline: write-bound (n·sizeof T bytes); the hash and sincos/log per pair hide under the
// store bandwidth on every GPU we target.
#include "common.cuh"

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__device__ void randomNormal(T* __restrict__ out, size_t n, uint32_t seed, float std, float fill) {
  const size_t pairs = (n + 1) / 2;
  for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += (size_t)gridDim.x * blockDim.x) {
    float a = fill, b = fill;
    if (std != 0.f) {
      const uint64_t h = mix64(((uint64_t)seed << 40) ^ (p * 0x9e3779b97f4a7c15ull + seed));
      const float u1 = ((uint32_t)(h >> 40) + 1) * (1.0f / 16777217.0f);  // (0, 1]
      const float u2 = (uint32_t)((h >> 16) & 0xffffff) * (1.0f / 16777216.0f);
      const float r = sqrtf(-2.f * logf(u1)) * std;
      float s, c;
      sincosf(6.2831853f * u2, &s, &c);
      a = r * c;
      b = r * s;
    }
    out[2 * p] = fromF<T>(a);
    if (2 * p + 1 < n) out[2 * p + 1] = fromF<T>(b);
  }
}

extern "C" __global__ void random_normal_bf16(bf16* out, size_t n, uint32_t seed, float std, float fill) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  randomNormal(out, n, seed, std, fill);
}
extern "C" __global__ void random_normal_f32(float* out, size_t n, uint32_t seed, float std, float fill) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  randomNormal(out, n, seed, std, fill);
}
