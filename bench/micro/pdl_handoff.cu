// How long does a kernel take to learn that the one before it wrote its input? Batch-1 decode is a
// chain of short kernels (8 a layer), each waiting for its predecessor's grid to end
// (griddepcontrol.wait under PDL). This measures that handoff against a flag the predecessor
// stores with release semantics and the successor polls with acquire loads, in a CUDA graph of
// `pairs` producer → consumer pairs like the decode graph's:
//   producer: 1 block of 640 threads (the pushed all-reduce + RMSNorm's shape): waits, sums the
//             consumer's previous outputs, writes x (5120 bf16) [and the flag];
//   consumer: `blocks` blocks of 256 threads (a GEMV's grid): launches its dependents, optionally
//             streams `wkb` KB of weights a block before its wait (WeightHead), waits (grid or
//             flag), reads x, streams the rest of its weights, writes one value a block.
// Built by native/build.sh into build/bench/pdl_handoff (sm_90a).
// Run:   build/bench/pdl_handoff [pairs=96] [blocks=264] [weightKBPerBlock=64]
// Modes: grid (griddepcontrol.wait), fence (flag after __threadfence), flag (flag after the
// barrier alone), 2prod / 2cons (two producers or two consumers a pair: one kernel's own cost).
// Measured (2026-11-27, bench/results/pdl-handoff-*-thirteenth-pass.txt), µs a pair, 96 pairs, 264
// consumer blocks: H200 — no weights grid 3.17, flag 3.52, fence 3.65; 1-block kernel 1.13 a launch,
// 264-block 1.89; 16.5 MB of weights a consumer: grid 7.44, flag 7.84. H100 — grid 3.41, flag 3.69,
// fence 4.03; 1.21 and 2.15 a launch; 16.5 MB: grid 8.87, flag 9.28. The grid's own handoff beats a
// flag the successor polls, and every kernel in the chain costs ~1.1–2 µs besides its bytes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s (line %d)\n", #x, cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

constexpr int D = 5120;

__device__ __forceinline__ void gridWait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void launchDependents() { asm volatile("griddepcontrol.launch_dependents;" :::); }
__device__ __forceinline__ int ldAcquire(const int* p) { int v; asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v; }
__device__ __forceinline__ void stRelease(int* p, int v) { asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory"); }

// flags[i]: pair i's x is written. Producer i clears pair i − 1's flag (its consumer has ended:
// this producer passed its wait), and producer 0 the last pair's from the previous replay.
__global__ void __launch_bounds__(640) producer(const float* __restrict__ prev, int nprev, __nv_bfloat16* __restrict__ x, int* flags, int i, int pairs, int useFlag) {
  gridWait();
  launchDependents();
  __shared__ float s;
  if (threadIdx.x == 0) {
    float a = 0;
    for (int j = 0; j < nprev; j += 33) a += prev[j];
    s = a * 1e-9f;
    flags[i == 0 ? pairs - 1 : i - 1] = 0;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += blockDim.x) x[c] = __float2bfloat16(s + c * 1e-3f);
  if (useFlag) {
    __syncthreads();
    if (threadIdx.x == 0) {
      if (useFlag == 1) __threadfence();
      stRelease(flags + i, 1);  // mode 2: bar.sync then a release store (cumulative over the barrier)
    }
  }
}

__global__ void __launch_bounds__(256) consumer(const __nv_bfloat16* __restrict__ x, const uint4* __restrict__ w, int wUnitsPerBlock, int headUnits, float* out, const int* flags, int i, int useFlag) {
  launchDependents();
  const uint4* wb = w + (size_t)blockIdx.x * wUnitsPerBlock;
  uint4 head[4];
  unsigned acc = 0;
#pragma unroll
  for (int h = 0; h < 4; h++) head[h] = h * 256 + (int)threadIdx.x < headUnits ? __ldg(wb + h * 256 + threadIdx.x) : make_uint4(0, 0, 0, 0);
  if (useFlag) {
    if (threadIdx.x == 0) while (ldAcquire(flags + i) == 0) {}
    __syncthreads();
  } else {
    gridWait();
  }
  float a = 0;
  for (int c = threadIdx.x; c < D; c += 256) a += __bfloat162float(x[c]);
#pragma unroll
  for (int h = 0; h < 4; h++) acc ^= head[h].x ^ head[h].w;
  for (int u = headUnits + threadIdx.x; u < wUnitsPerBlock; u += 256) { uint4 v = __ldg(wb + u); acc ^= v.x ^ v.y ^ v.z ^ v.w; }
  a += (acc == 0x12345678u) ? 1.f : 0.f;
  __shared__ float red[8];
  for (int o = 16; o; o >>= 1) a += __shfl_xor_sync(~0u, a, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = a;
  __syncthreads();
  if (threadIdx.x == 0) { float t = 0; for (int k = 0; k < 8; k++) t += red[k]; out[blockIdx.x] = t; }
  if (useFlag) gridWait();  // this grid ends after its predecessor, as the chain's rule needs
}

template <typename K, typename... A>
void launchPdl(cudaStream_t st, K kernel, int grid, int block, A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid; cfg.blockDim = block; cfg.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at; cfg.numAttrs = 1;
  CK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

int main(int argc, char** argv) {
  const int pairs = argc > 1 ? atoi(argv[1]) : 96;
  const int blocks = argc > 2 ? atoi(argv[2]) : 264;
  const int wkb = argc > 3 ? atoi(argv[3]) : 64;
  const int wUnits = wkb * 1024 / 16, headUnits = wUnits < 1024 ? wUnits : 1024;
  __nv_bfloat16* x; float* out; int* flags; uint4* w;
  CK(cudaMalloc(&x, D * 2)); CK(cudaMalloc(&out, blocks * 4)); CK(cudaMalloc(&flags, pairs * 4));
  const size_t wBytes = (size_t)pairs * blocks * wUnits * 16 + 16;
  CK(cudaMalloc(&w, wBytes)); CK(cudaMemset(w, 1, wBytes)); CK(cudaMemset(flags, 0, pairs * 4)); CK(cudaMemset(out, 0, blocks * 4));
  cudaStream_t st; CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  printf("pairs %d, consumer blocks %d, weights %d KB a block (%.1f MB a consumer)\n", pairs, blocks, wkb, blocks * wkb / 1024.0);
  for (int round = 0; round < 2; round++)
    for (int useFlag = 0; useFlag < 5; useFlag++) {
      cudaGraph_t g; cudaGraphExec_t ge;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
      // modes 0 grid wait, 1 flag after a fence, 2 flag after the barrier alone; 3: only the
      // producers (2 a pair), 4: only the consumers (2 a pair): a kernel's own cost in the chain.
      const int flag = useFlag <= 2 ? useFlag : 0;
      for (int i = 0; i < pairs; i++) {
        if (useFlag != 4) launchPdl(st, producer, 1, 640, (const float*)out, blocks, x, flags, i, pairs, flag);
        if (useFlag == 3) launchPdl(st, producer, 1, 640, (const float*)out, blocks, x, flags, i, pairs, flag);
        if (useFlag == 4) launchPdl(st, consumer, blocks, 256, (const __nv_bfloat16*)x, (const uint4*)(w + (size_t)i * blocks * wUnits), wUnits, headUnits, out, (const int*)flags, i, flag);
        if (useFlag != 3) launchPdl(st, consumer, blocks, 256, (const __nv_bfloat16*)x, (const uint4*)(w + (size_t)i * blocks * wUnits), wUnits, headUnits, out, (const int*)flags, i, flag);
      }
      CK(cudaStreamEndCapture(st, &g));
      CK(cudaGraphInstantiate(&ge, g, 0));
      for (int k = 0; k < 5; k++) CK(cudaGraphLaunch(ge, st));
      const int reps = 50;
      float best = 1e30f, sum = 0;
      for (int k = 0; k < reps; k++) {
        CK(cudaEventRecord(e0, st)); CK(cudaGraphLaunch(ge, st)); CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); best = ms < best ? ms : best; sum += ms;
      }
      CK(cudaGetLastError());
      printf("round %d %-5s: %.3f us a pair (best %.3f), graph %.1f us\n", round, (const char*[]){"grid", "fence", "flag", "2prod", "2cons"}[useFlag], 1000 * sum / reps / pairs, 1000 * best / pairs, 1000 * sum / reps);
      CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
    }
  return 0;
}
