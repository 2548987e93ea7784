// Llama 4 MoE for small batches (decode, n ≤ 64 by default) with no host round trip: routing,
// the sort by expert and every expert's row range stay on the device, so the layer is two
// launches after the router GEMM at n ≤ 8 (four above: sort, gather, gate_up, down) and CUDA
// graphs can capture it (spec §1.6: top-1, the sigmoid
// score scales the expert INPUT, shared expert added).
//   moe_route_sort   1 block: argmax/sigmoid per row, stable counting sort of this rank's
//                    experts → perm (sorted row → token), offsets[local + 1], score per token
//   moe_gather_dev   xin[i] = x[perm[i]]·score[perm[i]] for the routed rows (i < offsets[local])
//   moe_gate_up      per block a slab of rb FFN columns: the shared expert over all n tokens
//                    (withShared), then every local expert over its rows; gate and up rows dotted
//                    together and SiLU(gate)·up written directly (no [n, 2F] intermediate)
//   moe_down         per block a slab of rb output features: out = shared down (withShared; else
//                    out already holds it), then (same block, after a barrier) out[perm[i]] +=
//                    routed down — the combine is fused
//   moe_gate_up_routed  decode (withShared, n ≤ 8): moe_gate_up with the routing done inside
//                    (every routed block routes; the router GEMV too where the grid is one wave)
//                    and the routed rows read from x and scaled as loaded — no sort or gather
//                    launch; perm/offsets for moe_down. Half its blocks run the shared expert,
//                    half the routed ones.
// withShared is for n ≤ 8: the shared expert is then one pass over its weights. Beyond that the
// host runs it through cuBLASLt (one read of the weights) rather than ⌈n/8⌉ passes.
// Grid: (slabs, 1) — each block walks every expert (few tokens: most experts are empty, and
// empty blocks would cost more than the walk) — or, without the shared group, (slabs, local):
// one expert per blockIdx.y (many tokens: every expert busy, no serial walk).
// Rounding follows the unfused path (per-expert GEMMs + silu_mul + moe_combine) step by step:
// gate/up rounded to T before SiLU, each down product rounded to T before the add.
//
// Roofline: weight streaming, like gemv.cu. Bytes per layer = (1 + touched experts)·3·F·d·sizeof T
// (Scout bf16: 252 MB per expert; batch 1 → 503 MB ≈ 168 µs at 3.0 TB/s; batch 64 touches all
// 16 → 4.28 GB ≈ 1.43 ms). Each expert's weights are read once per pass of ≤ 8 of its tokens.
// The sort is O(n²) in one block (n ≤ 1024): ~1 µs at n = 64; the gather moves n·d·2 B.
// Measured before the routed decode kernel (n ≤ 8) existed (H100, bench/decode_check.ts,
// 2026-11-27, c8bc78e; whole layer incl. router and shared expert,
// % of copy bandwidth over the touched weights): 1 token 0.22–0.25 ms 68–77% (host-sorted path:
// 0.27–0.30 ms, 58–63%); 8 tokens 70–73% (65–68%); 16 tokens 84–87% (76–78%); 32 tokens 79–80%
// (75–77%); 64 tokens 69–71% — behind the host-sorted per-expert cuBLASLt path (80–82%), which
// cannot be captured in a graph; the grouped kernels at ~4 tokens per expert are the next target.
#include <math_constants.h>
#include <stdio.h>

#include "gemv.cuh"
#include "peer_push.cuh"

constexpr int MOE_SORT_MAX = 1024;

// This rank's index of expert `best` (its experts are [first, first + local)), or −1.
__device__ __forceinline__ int localExpert(int best, int first, int local) {
  const int j = best - first;
  return (j >= 0 && j < local) ? j : -1;
}

// perm (sorted row → token) and offsets[local + 1] from each row's local expert (le, −1: another
// rank's): rows of lower experts first, rows of one expert in token order.
__device__ void moeOrder(const int* le, int n, int local, int* __restrict__ perm, int* __restrict__ offsets) {
  for (int r = threadIdx.x; r < n; r += blockDim.x) {
    const int j = le[r];
    if (j < 0) continue;
    int pos = 0;
    for (int q = 0; q < n; q++) {
      const int k = le[q];
      pos += (k >= 0 && k < j) || (k == j && q < r);
    }
    perm[pos] = r;
  }
  for (int j = threadIdx.x; j <= local; j += blockDim.x) {
    int c = 0;
    for (int q = 0; q < n; q++) {
      const int k = le[q];
      c += k >= 0 && k < j;
    }
    offsets[j] = c;
  }
}

template <typename T>
__device__ void moeRouteSort(const T* __restrict__ logits, int n, int e, int first, int local, int* __restrict__ perm,
                             float* __restrict__ score, int* __restrict__ offsets) {
  __shared__ int le[MOE_SORT_MAX];  // local expert of each row, -1 when another rank holds it
  for (int r = threadIdx.x; r < n; r += blockDim.x) {
    const T* row = logits + (size_t)r * e;
    int best = 0;
    float bestV = toF(__ldcg(row));  // L2: in moe_gate_up_routed other blocks of this grid wrote them
    for (int j = 1; j < e; j++) {
      const float v = toF(__ldcg(row + j));
      if (v > bestV) {  // lowest index wins ties, as moe_route and the CPU backend
        bestV = v;
        best = j;
      }
    }
    score[r] = sigmoidF(bestV);
    le[r] = localExpert(best, first, local);
  }
  __syncthreads();
  moeOrder(le, n, local, perm, offsets);
}

// Routing of n ≤ GEMV_MAX_NT tokens, the picks of moeRouteSort (highest logit, lowest index among
// equal ones; a NaN first logit keeps expert 0): one warp per token with its lanes over the
// experts, so the logits come in one round trip rather than one after another.
template <typename T>
__device__ void moeRouteFew(const T* __restrict__ logits, int n, int e, int first, int local, int* __restrict__ perm,
                            float* __restrict__ score, int* __restrict__ offsets) {
  __shared__ int le[GEMV_MAX_NT];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp < n) {
    const T* row = logits + (size_t)warp * e;
    float v = -CUDART_INF_F;
    int best = 0x7fffffff;
    for (int j = lane; j < e; j += 32) {
      const float x = toF(__ldcg(row + j));
      if (x > v) {
        v = x;
        best = j;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int ob = __shfl_xor_sync(0xffffffffu, best, o);
      if (ov > v || (ov == v && ob < best)) {
        v = ov;
        best = ob;
      }
    }
    if (lane == 0) {
      const float v0 = toF(__ldcg(row));
      if (v0 != v0 || best == 0x7fffffff) {  // moeRouteSort starts from expert 0: a NaN there is never beaten
        best = 0;
        v = v0;
      }
      score[warp] = sigmoidF(v);
      le[warp] = localExpert(best, first, local);
    }
  }
  __syncthreads();
  moeOrder(le, n, local, perm, offsets);
}


template <typename T>
__device__ void moeGatherDev(const T* __restrict__ x, const int* __restrict__ perm, const float* __restrict__ score,
                             const int* __restrict__ offsets, int local, T* __restrict__ xin, int d) {
  const int i = blockIdx.x;
  if (i >= offsets[local]) return;
  const int row = perm[i];
  const float s = score[row];
  scaleRow<T>(x + (size_t)row * d, xin + (size_t)i * d, s, d);
}

// Groups [gFirst, gLast) of the columns [slab·rb, +rb) (the block's slab: blockIdx.x). Group g = -1 is the
// shared expert (x, all n tokens, width fs); g ≥ 0 local expert g (xin rows
// offsets[g]..offsets[g+1], width f; or, ROUTED, rows x[gather.rowOf[i]] scaled by
// gather.scaleOf as they are loaded, with no xin).
template <typename T, int MAXNT, bool ROUTED = false>
__device__ void moeGateUp(const T* __restrict__ x, const T* __restrict__ xin, const T* __restrict__ sharedGateUp,
                          const T* __restrict__ gateUp, const int* __restrict__ offsets, T* __restrict__ actShared,
                          T* __restrict__ act, int n, int d, int fs, int f, int rb, int slab, int gFirst, int gLast,
                          GemvGather gather = {nullptr, nullptr}) {
  const GemvSlot s(rb);
  const int col = slab * rb + s.rib;
  for (int g = gFirst; g < gLast; g++) {
    const int width = g < 0 ? fs : f;
    const int tok0 = g < 0 ? 0 : offsets[g];
    const int cnt = g < 0 ? n : offsets[g + 1] - tok0;
    if (cnt == 0 || slab * rb >= width) continue;  // block-uniform
    const T* w = g < 0 ? sharedGateUp : gateUp + (size_t)g * 2 * f * d;
    const bool active = col < width;
    const int c = min(col, width - 1);
    const T* rowsGU[2] = {w + (size_t)c * d, w + (size_t)(width + c) * d};
    T* out = g < 0 ? actShared : act;
    auto epi = [&](int t, const float (&v)[2]) {
      const float gate = toF(fromF<T>(v[0]));
      const float up = toF(fromF<T>(v[1]));
      out[(size_t)(tok0 + t) * width + col] = fromF<T>(siluTimes(gate, up));
    };
    if (ROUTED && g >= 0) gemvTokens<T, 2, MAXNT, true>(s, rowsGU, active, x, d, tok0, cnt, epi, gather);
    else gemvTokens<T, 2, MAXNT>(s, rowsGU, active, g < 0 ? x : xin, d, tok0, cnt, epi);
  }
}

// The decode layer with the shared expert in the kernels (n ≤ 8): the routed rows are read from
// x and scaled as loaded, so no sort or gather launch (an ncu profile of a tp-4 rank's decode step
// put them at ~6 µs a layer). Every routed block routes the n tokens itself (n·e logits from L2)
// and the first writes perm and offsets for moe_down (permOut, offsetsOut). Grid: 2 × slabs —
// blocks [0, slabs) the shared expert's slabs, [slabs, 2·slabs) the routed experts' (each block
// one pass over its weights).
// Without `router` the logits come from a router launch before.
// With `router` the router GEMV is in here too: routed blocks 0..e−1 first compute router row
// `slab` for the n tokens — the gemv kernel's slot layout (one row a block, 8 warps over K) and
// epilogue, so the bits of a gemv router launch — and count themselves in routerDone; every
// routed block waits for the count to reach e, then routes. The shared blocks stream their
// weights meanwhile. The host passes `router` only when the grid is one wave (every block
// resident at once), so a waiting block never holds a slot a router block needs. moe_down, the
// next kernel, zeroes the count for the next layer. (A separate router launch cost ~4 µs a layer
// at tp 4 on an H200, kernel stamps; per-block stamps of the one-role kernel, where every block
// ran the shared pass and then the routed one, had all blocks of the grid pausing together
// ~1–2 µs between the passes with no weight loads in flight.)
constexpr int MOE_ROUTED_MAX_LOCAL = 256;
constexpr unsigned long long MOE_ROUTER_WAIT_NS = 5000000000ull;  // a lost block is a bug: trap, not hang

// Out of line: the report's arguments would otherwise take registers in the kernels that wait.
__device__ __noinline__ void countTimeout(const int* count, int target, const char* what) {
  printf("tsglang moe: block %d waited 5 s for %s (%d of %d); trapping\n", (int)blockIdx.x, what,
         *reinterpret_cast<const volatile int*>(count), target);
  __trap();
}

// A block's arrival at a count: its writes (ordered before by a __syncthreads) are visible to any
// thread that sees the increment (a release, cumulative over the barrier) — no separate fence.
__device__ __forceinline__ void countArrive(int* count) {
  asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(count) : "memory");
}

__device__ __forceinline__ int loadAcquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Spins until *count ≥ target (another block's progress), trapping with a message after 5 s. An
// acquire: the counted blocks' writes are visible to this thread after it, and to the block's
// other threads after a __syncthreads (their reads of them go through L2: __ldcg, FRESH).
__device__ void awaitCount(const int* count, int target, const char* what) {
  const unsigned long long start = globalTimerNs();
  for (unsigned spins = 1; loadAcquire(count) < target; spins++)
    if ((spins & 1023u) == 0 && globalTimerNs() - start > MOE_ROUTER_WAIT_NS) countTimeout(count, target, what);
}

// HEAD (one token): the kernel's PDL prologue is in here, after the router rows' first weight loads
// (WeightHead): the all-reduce before this kernel is a wait on the other ranks, and the router —
// which every routed block waits for — has its weights in registers when it ends. (The shared
// slabs' first step as well, 32 more registers across the wait, spilled: 3.367 → 3.560 ms.)
template <typename T, int MAXNT, bool HEAD = false>
__device__ void moeGateUpRouted(const T* __restrict__ router, int* __restrict__ routerDone, T* __restrict__ logits, int e,
                                int first, const T* __restrict__ x, const T* __restrict__ sharedGateUp,
                                const T* __restrict__ gateUp, int* __restrict__ permOut,
                                int* __restrict__ offsetsOut, T* __restrict__ actShared, T* __restrict__ act, int n, int d, int fs,
                                int f, int local, int rb, int* __restrict__ sharedDone) {
  // Two roles over the same slabs: the first half of the grid runs the shared expert (no routing
  // needed, so its loads start at once), the second half the routed experts. A block that ran both
  // passes one after the other left the SM's memory pipe empty between them (its last loads, the
  // epilogue, the routing read, the next first loads) while every block of the SM did the same.
  const int slabs = gridDim.x / 2;
  const int slab = (int)blockIdx.x - slabs;
  WeightHead<1> routerHead;
  if constexpr (HEAD) {
    if (router != nullptr && slab >= 0 && slab < e) loadWeightHead<T>(GemvSlot(1), router + (size_t)slab * d, true, d, routerHead);
    gridDependencyWait();
    gridDependencyLaunchDependents();
  }
  if (slab < 0) {
    moeGateUp<T, MAXNT>(x, x, sharedGateUp, gateUp, nullptr, actShared, act, n, d, fs, f, rb, blockIdx.x, -1, 0);
    if (sharedDone != nullptr) {  // moe_down may start on the shared expert's output (moeDownDecode)
      __syncthreads();              // the block's slab of actShared is written
      if (threadIdx.x == 0) countArrive(sharedDone);
    }
    return;
  }
  __shared__ int perm[GEMV_MAX_NT];
  __shared__ float score[GEMV_MAX_NT];
  __shared__ int offsets[MOE_ROUTED_MAX_LOCAL + 1];
  if (router != nullptr) {
    if (slab < e) {
      const GemvSlot rs(1);
      const T* wr[1] = {router + (size_t)slab * d};
      gemvTokens<T, 1, MAXNT>(rs, wr, true, x, d, 0, n, [&](int t, const float (&v)[1]) { logits[(size_t)t * e + slab] = fromF<T>(v[0]); },
                              {nullptr, nullptr}, HEAD ? &routerHead : nullptr);
      if (threadIdx.x == 0) countArrive(routerDone);  // the logits (its part-0 warp's, ordered by gemvPass's barrier)
    }
    if (threadIdx.x == 0) awaitCount(routerDone, e, "the router blocks");
    __syncthreads();
  }
  // Every routed block routes the n tokens itself (the logits from L2: one round trip; a last
  // router block routing and publishing for the others had cost two more before any routed
  // block could start its loads); the first one writes the routing for moe_down.
  moeRouteFew<T>(logits, n, e, first, local, perm, score, offsets);
  __syncthreads();
  if (slab == 0) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) permOut[i] = perm[i];
    for (int j = threadIdx.x; j <= local; j += blockDim.x) offsetsOut[j] = offsets[j];
  }
  moeGateUp<T, MAXNT, true>(x, x, sharedGateUp, gateUp, offsets, actShared, act, n, d, fs, f, rb, slab, 0, local, {perm, score});
}

// The shared expert's down rows of the block: out = shared down (withShared; else out already
// holds it). FRESH (one token, before the PDL wait): actShared is read from L2, written by the
// gate_up kernel that may still be running (moeDownDecode).
template <typename T, int MAXNT, bool FRESH = false>
__device__ __forceinline__ void moeDownShared(const T* __restrict__ actShared, const T* __restrict__ sharedDown, T* out, int n, int d,
                                              int fs, int rb, unsigned short* rowBits) {
  const GemvSlot s(rb);
  const int row = blockIdx.x * rb + s.rib;
  const bool active = row < d;
  const T* w[1] = {sharedDown + (size_t)min(row, d - 1) * fs};
  auto epi = [&](int t, const float (&v)[1]) {
    out[(size_t)t * d + row] = fromF<T>(v[0]);
    if constexpr (sizeof(T) == 2) if (rowBits != nullptr) rowBits[s.rib] = __bfloat16_as_ushort(fromF<T>(v[0]));
  };
  gemvTokens<T, 1, MAXNT, false, FRESH>(s, w, active, actShared, fs, 0, n, epi);
}

template <typename T, int MAXNT>
__device__ void moeDown(const T* __restrict__ actShared, const T* __restrict__ act, const T* __restrict__ sharedDown,
                        const T* __restrict__ down, const int* __restrict__ offsets, const int* __restrict__ perm,
                        T* out, int n, int d, int fs, int f, int local, int withShared, int rb, unsigned short* rowBits = nullptr) {
  // rowBits (one token, bf16, in shared memory): each row's final value too, for the pushed all-reduce.
  const GemvSlot s(rb);
  const int row = blockIdx.x * rb + s.rib;
  const bool active = row < d;
  const int r = min(row, d - 1);
  if (withShared) moeDownShared<T, MAXNT>(actShared, sharedDown, out, n, d, fs, rb, rowBits);
  // The routed adds below read what other threads of this block wrote above: the barrier makes
  // those global writes visible within the block (plain loads, not the read-only path).
  __syncthreads();
  const bool perExpert = gridDim.y > 1;  // only without the shared phase: blocks of different experts touch different rows
  const int gEnd = perExpert ? (int)blockIdx.y + 1 : local;
  for (int g = perExpert ? (int)blockIdx.y : 0; g < gEnd; g++) {
    const int tok0 = offsets[g];
    const int cnt = offsets[g + 1] - tok0;
    if (cnt == 0) continue;
    const T* w[1] = {down + ((size_t)g * d + r) * f};
    gemvTokens<T, 1, MAXNT>(s, w, active, act, f, tok0, cnt, [&](int t, const float (&v)[1]) {
      T* o = out + (size_t)perm[tok0 + t] * d + row;
      *o = fromF<T>(toF(*o) + toF(fromF<T>(v[0])));
      if constexpr (sizeof(T) == 2) if (rowBits != nullptr) rowBits[s.rib] = __bfloat16_as_ushort(*o);
    });
  }
}

// moe_down's body, with the PDL prologue inside. With sharedDone (one token, the shared expert
// in the kernels: moe_gate_up_routed's shared blocks count their finished slabs there) the
// shared pass runs before the wait — its input is ready while gate_up's routed half, which starts
// only after the router, still runs — and the routed pass after it. This is common.cuh's rule bent
// by a count: the count is the writer's flag for actShared, and the pass writes only out, which no
// running kernel touches. The block that is last past the count resets it (and the block count
// sharedDone[1]) for the next step's call, at its end (the atomic's round trip then overlaps the
// passes): no block can still be waiting then. With push: each block's finished rows go to every
// rank's inbox (peer_push.cuh), the epoch read before the wait (written by the all-reduce before
// gate_up, two launches back).
template <typename T, int MAXNT>
__device__ void moeDownDecode(const T* __restrict__ actShared, const T* __restrict__ act, const T* __restrict__ sharedDown,
                              const T* __restrict__ down, const int* __restrict__ offsets, const int* __restrict__ perm, T* out,
                              int n, int d, int fs, int f, int local, int withShared, int rb, int* routerDone, int* sharedDone,
                              int sharedBlocks, const PushTarget* push) {
  __shared__ unsigned short bits[PUSH_MAX_ROWS];
  const unsigned epoch = push != nullptr && threadIdx.x < 32 ? (unsigned)pushEpoch(push->signal) : 0u;
  const bool early = MAXNT == 1 && sharedDone != nullptr && withShared;
  int past = 0;  // blocks past the count before this one: read at the end, so the atomic's round trip is off the path
  if (early) {
    if (threadIdx.x == 0) {
      awaitCount(sharedDone, sharedBlocks, "gate_up's shared-expert slabs");
      past = atomicAdd(sharedDone + 1, 1);
    }
    __syncthreads();
    moeDownShared<T, 1, true>(actShared, sharedDown, out, 1, d, fs, rb, push != nullptr ? bits : nullptr);
  }
  gridDependencyWait();
  gridDependencyLaunchDependents();
  if (routerDone != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *routerDone = 0;
  moeDown<T, MAXNT>(actShared, act, sharedDown, down, offsets, perm, out, n, d, fs, f, local, withShared && !early, rb,
                    push != nullptr ? bits : nullptr);
  if (early && threadIdx.x == 0 && past == (int)(gridDim.x * gridDim.y) - 1) sharedDone[0] = sharedDone[1] = 0;
  if (push == nullptr) return;
  __syncthreads();  // every warp's rows (the routed add included) are in bits[]
  if constexpr (sizeof(T) == 2) pushRows(*push, epoch, bits, blockIdx.x * rb, rb);
}

// moe_gate_up_routed<NT>_<T>; the one-token bf16 kernel (the decode path) is written out below.
#define MOE_GATE_UP_ROUTED_KERNEL(NT, TN, T)                                                                         \
  extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                                         \
      moe_gate_up_routed##NT##_##TN(const T* router, int* routerDone, T* logits, int e, int first, const T* x,       \
                                    const T* sharedGateUp, const T* gateUp, int* perm, int* offsets,                 \
                                    T* actShared, T* act, int n, int d, int fs, int f, int local, int rb,            \
                                    int* sharedDone) {                                                               \
    gridDependencyWait();                                                                                            \
    gridDependencyLaunchDependents();                                                                                \
    moeGateUpRouted<T, NT>(router, routerDone, logits, e, first, x, sharedGateUp, gateUp, perm, offsets,             \
                           actShared, act, n, d, fs, f, local, rb, sharedDone);                                      \
  }

// moe_gate_up<NT>_<T> / moe_down<NT>_<T>: NT = the batch size rounded up to 1, 2, 4 or 8
// (the most tokens one expert can have in a pass).
#define MOE_GEMV_KERNELS(NT, TN, T)                                                                                 \
  extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                                         \
      moe_gate_up##NT##_##TN(const T* x, const T* xin, const T* sharedGateUp, const T* gateUp, const int* offsets,   \
                             T* actShared, T* act, int n, int d, int fs, int f, int local, int withShared, int rb) { \
    gridDependencyWait();                                                                                            \
    gridDependencyLaunchDependents();                                                                                \
    /* one expert per blockIdx.y (the host does this only without the shared group), or all */                      \
    const bool perExpert = gridDim.y > 1;                                                                            \
    moeGateUp<T, NT>(x, xin, sharedGateUp, gateUp, offsets, actShared, act, n, d, fs, f, rb, blockIdx.x,              \
                     perExpert ? (int)blockIdx.y : (withShared ? -1 : 0), perExpert ? (int)blockIdx.y + 1 : local);  \
  }                                                                                                                  \
  /* one token: ≤ 51 registers, five blocks a SM — a 5120-row down is 640 blocks, one wave on 132 SMs */          \
  extern "C" __global__ void __launch_bounds__(GEMV_THREADS, NT == 1 ? 5 : 1)                                        \
      moe_down##NT##_##TN(const T* actShared, const T* act, const T* sharedDown, const T* down, const int* offsets,   \
                          const int* perm, T* out, int n, int d, int fs, int f, int local, int withShared, int rb,   \
                          int* routerDone, int* sharedDone, int sharedBlocks) {                                      \
    moeDownDecode<T, NT>(actShared, act, sharedDown, down, offsets, perm, out, n, d, fs, f, local, withShared, rb,   \
                         routerDone, sharedDone, sharedBlocks, nullptr);                                             \
  }

#define MOE_DECODE_KERNELS(TN, T)                                                                                   \
  extern "C" __global__ void moe_route_sort_##TN(const T* logits, int n, int e, int first, int local, int* perm,   \
                                                 float* score, int* offsets) {                                       \
    gridDependencyWait();                                                                                            \
    gridDependencyLaunchDependents();                                                                                \
    moeRouteSort<T>(logits, n, e, first, local, perm, score, offsets);                                               \
  }                                                                                                                  \
  extern "C" __global__ void moe_gather_dev_##TN(const T* x, const int* perm, const float* score, const int* offsets, \
                                                 int local, T* xin, int d) {                                         \
    gridDependencyWait();                                                                                            \
    gridDependencyLaunchDependents();                                                                                \
    moeGatherDev<T>(x, perm, score, offsets, local, xin, d);                                                         \
  }                                                                                                                  \
  MOE_GEMV_KERNELS(1, TN, T)                                                                                         \
  MOE_GEMV_KERNELS(2, TN, T)                                                                                         \
  MOE_GEMV_KERNELS(4, TN, T)                                                                                         \
  MOE_GEMV_KERNELS(8, TN, T)

MOE_DECODE_KERNELS(bf16, bf16)
MOE_DECODE_KERNELS(f32, float)
GEMV_WIDTHS_BUT_DECODE(MOE_GATE_UP_ROUTED_KERNEL)

// One token (the decode path): the router blocks load their first weights before the PDL wait
// (moeGateUpRouted's HEAD). Four blocks a SM (64 registers; ptxas spills 32 bytes) so the grid stays
// one wave, which the in-kernel router needs (backend.ts: MOE_ROUTED_BLOCKS_PER_SM).
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 4)
    moe_gate_up_routed1_bf16(const bf16* router, int* routerDone, bf16* logits, int e, int first, const bf16* x, const bf16* sharedGateUp,
                             const bf16* gateUp, int* perm, int* offsets, bf16* actShared, bf16* act, int n, int d, int fs, int f,
                             int local, int rb, int* sharedDone) {
  moeGateUpRouted<bf16, 1, true>(router, routerDone, logits, e, first, x, sharedGateUp, gateUp, perm, offsets, actShared, act, n, d, fs,
                                 f, local, rb, sharedDone);
}

// moe_down_push1_bf16: moe_down1_bf16 (shared expert in the kernel) for one token under tensor
// parallelism, whose output the next kernel all-reduces: each block also pushes its rb finished
// rows into every rank's inbox (peer_push.cuh; gemv_push1_bf16 does the same for the dense
// projections). The host launches it only with rb % 4 == 0 and d % rb == 0.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 5)
    moe_down_push1_bf16(const bf16* actShared, const bf16* act, const bf16* sharedDown, const bf16* down, const int* offsets,
                        const int* perm, bf16* out, int d, int fs, int f, int local, int rb, int* routerDone,
                        int* sharedDone, int sharedBlocks, const __grid_constant__ PushTarget p) {
  moeDownDecode<bf16, 1>(actShared, act, sharedDown, down, offsets, perm, out, 1, d, fs, f, local, 1, rb, routerDone, sharedDone,
                         sharedBlocks, &p);
}
