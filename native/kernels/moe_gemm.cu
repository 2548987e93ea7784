// The routed experts of a MoE prefill as grouped GEMMs: for each local expert e, the rows
// [offsets[e], offsets[e+1]) of x (sorted by expert) times W_e (bf16 in and out, fp32
// accumulation, Hopper wgmma). Offsets are read on the device. Two kernels:
//   moe_grouped_gemm_bf16      y[r, :] = x[r, :] · W_eᵀ               (the down projection)
//   moe_grouped_gate_up_bf16   act[r, j] = SiLU(g)·u, g = x[r]·W_e[j], u = x[r]·W_e[F + j]
//                              (gate_up with SiLU-and-multiply in the epilogue: no [rows, 2F]
//                              intermediate, no silu_mul launch)
//   moe_grouped_down_combine_bf16  the down projection written straight into the layer output,
//                              out[token] = shared[token] + y (no expert parallelism)
//
// Why not cuBLASLt per expert: with ~128 rows per expert these GEMMs are weight-read-bound
// (gate_up: 168 MB per expert, 57 µs at 2.95 TB/s, against 21 GFLOP = 27 µs at 788 TFLOP/s), and
// the per-expert calls ran at 65% (gate_up) and 50% (down: 40 output tiles for 132 SMs) of that
// floor on an H100 (2026-11-27), strided batches and side streams alike. Here one launch covers
// (output tiles × experts), so the weight stream does not drain between experts.
//
// Tiling: a CTA (2 warpgroups, 256 threads) owns 128 weight rows of one expert (64 per
// warpgroup; for gate_up, 64 gate rows and the 64 matching up rows) and walks the expert's rows
// up to 256 at a time: each pass reads the CTA's weights once, so an expert of ≤ 256 rows reads
// its weights exactly once (a first version passed over 128 rows: at ~130–160 rows per expert it
// read most weights twice, and ran the prefill slower than cuBLASLt). wgmma m64nNk16 with N the
// pass's rows rounded up to 64/128/192/256, both operands K-major in shared memory with the
// 128-byte swizzle (no transposes). Roofline per CTA and k-tile (BK = 64): 16 KB of weights from
// HBM, ≤ 32 KB of rows from L2, ≤ 4.2 MFLOP — ≤ 256 FLOP per HBM byte, about the H100's ridge
// (788 TFLOP/s ÷ 2.95 TB/s ≈ 270): memory-bound up to 256 rows per expert. 4 cp.async stages keep
// 48 KB of weights in flight per SM (one CTA per SM: 193 KB of shared memory).
//
// Measured (H100, Scout-width 4-layer prefill of 2048 tokens, 2026-11-27): gate_up 1.15–1.2 ms
// and down 0.6 ms a layer (all 16 experts touched), i.e. ~2.3 TB/s of weights, ~70% of the
// read bandwidth; the whole prefill runs as fast as with cuBLASLt per expert (14.1–14.7 ms both,
// same process, interleaved). The likely limit: every CTA streams its expert's x rows from L2
// as well (rows ÷ 128 bytes of x per weight byte, ~1 at 128 rows), ~4.6 TB/s out of L2 in all.
// A TMA-fed version (producer warpgroup, mbarrier stages, one wgmma group in flight, N rounded
// to 32 rows, epilogues from registers; commit 6e2258a) ran at the same 1.21 / 0.64 ms, 77% of
// DRAM with L2 at 81–83% busy: the feed is not the limit. Next: cluster multicast of the x tiles
// (each CTA pair reads them from L2 once), which needs that TMA version back.
#include "common.cuh"
#include "mma.cuh"

#include "wgmma.cuh"

constexpr int GG_BN = 128;                    // weight rows per CTA (2 warpgroups × 64)
constexpr int GG_BK = 64;                     // K per stage: one 128-byte swizzled row
constexpr int GG_WTILE = GG_BN * GG_BK * 2;   // 16 KB of weights per stage
constexpr int GG_PITCH = GG_BN + 8;           // epilogue tile row pitch (bf16): +16 B against bank conflicts
// BM rows of x per pass (≤ 256, the most wgmma's N takes), STAGES pipeline stages of
// GG_WTILE + BM·128 B. Dynamic shared memory: STAGES · stage + 1 KB for 1024-byte alignment
// (MOE_GROUPED_SMEM in cuda/backend.ts). One CTA per SM.
template <int BM>
__host__ __device__ constexpr int ggStage() { return GG_WTILE + BM * GG_BK * 2; }
constexpr int GG_BM = 256, GG_STAGES = 4;     // the shipped choice (see the kernels below)

#ifdef TSGLANG_WGMMA
// One pass: rows [t0, t0 + rows) of x (rows ≤ NR ≤ 256) against the CTA's 128 weight rows
// (wrow(i) for i < 128), over K; the result, rounded to bf16, lands in `tile` [rows][GG_PITCH]
// (column i = the CTA's weight row i). Needs K % 64 == 0.
template <int BM, int STAGES, int NR, typename WRow>
__device__ __forceinline__ void groupedPass(const bf16* __restrict__ x, const bf16* __restrict__ we, int K, int t0, int rows,
                                            WRow wrow, uint32_t sBase, bf16* tile) {
  const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warpInWg = (tid >> 5) & 3;
  const int kTiles = K / GG_BK;
  float acc[NR / 2];
#pragma unroll
  for (int i = 0; i < NR / 2; i++) acc[i] = 0.f;

  // Stage s: the weight tile (128 rows) at sBase + s·STAGE, the x tile (NR rows) after it;
  // 16-byte chunks: 4 weight chunks and NR/32 row chunks per thread. Rows past `rows` are
  // zero-filled (no global read).
  // Weights stream once (evict first); each x row is read by every CTA of its expert (evict
  // last): without the hints the weight stream pushed x out of L2 (ncu: 34% L2 hits, 3.1 GB of
  // DRAM reads for 2.7 GB of weights, H100, 2026-11-27).
  const uint64_t wPolicy = evictFirstPolicy(), xPolicy = evictLastPolicy();
  auto load = [&](int stage, int kt) {
    const uint32_t sw = sBase + stage * ggStage<BM>(), sx = sw + GG_WTILE;
    const int k0 = kt * GG_BK;
#pragma unroll
    for (int i = 0; i < GG_BN * 8 / 256; i++) {
      const int c = tid + i * 256;
      const int r = c >> 3, ch = c & 7;
      const int wr = wrow(r);
      cpAsync16(sw + swz<8>(r, ch), we + (size_t)(wr >= 0 ? wr : 0) * K + k0 + ch * 8, wr >= 0, wPolicy);
    }
#pragma unroll
    for (int i = 0; i < NR * 8 / 256; i++) {
      const int c = tid + i * 256;
      const int r = c >> 3, ch = c & 7;
      const bool v = r < rows;
      cpAsync16(sx + swz<8>(r, ch), x + (size_t)(t0 + (v ? r : 0)) * K + k0 + ch * 8, v, xPolicy);
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < kTiles) load(s, s);
    cpAsyncCommit();
  }
  for (int kt = 0; kt < kTiles; kt++) {
    cpAsyncWait<STAGES - 2>();  // tile kt has landed (this thread's copies)
    fenceProxyAsync();             // ... and is visible to wgmma's async proxy
    __syncthreads();               // every thread's copies; every warpgroup done with tile kt − 1
    if (kt + STAGES - 1 < kTiles) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cpAsyncCommit();
    const uint32_t st = sBase + (kt % STAGES) * ggStage<BM>();
    const uint32_t sw = st + wg * 64 * 128, sx = st + GG_WTILE;
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma64xN<NR>(acc, wgmmaDesc(sw + kk * 32), wgmmaDesc(sx + kk * 32));
    wgmmaCommit();
    wgmmaWait<0>();  // the stage is refilled STAGES − 1 iterations on, after the barrier above
  }
  cpAsyncWait<0>();
  __syncthreads();  // the stages become the epilogue tile

  // acc[4j + q]: weight row 64·wg + 16·warp + lane/4 + 8·(q / 2), x row 8j + 2·(lane % 4) + q % 2.
  const int col = wg * 64 + 16 * warpInWg + (lane >> 2);
#pragma unroll
  for (int j = 0; j < NR / 8; j++) {
#pragma unroll
    for (int q = 0; q < 4; q++) {
      const int r = 8 * j + 2 * (lane & 3) + (q & 1);
      if (r < rows) tile[r * GG_PITCH + col + 8 * (q >> 1)] = __float2bfloat16_rn(acc[4 * j + q]);
    }
  }
  __syncthreads();
}

// Every pass of this CTA's expert, each followed by `store(t0, rows, tile)`.
template <int BM, int STAGES, typename WRow, typename Store>
__device__ __forceinline__ void groupedPasses(const bf16* __restrict__ x, const bf16* __restrict__ we, int K, int rowStart, int rowEnd,
                                              WRow wrow, Store store) {
  extern __shared__ unsigned char smemRaw[];
  const uint32_t rawBase = smemAddr(smemRaw);
  const uint32_t sBase = (rawBase + 1023) & ~1023u;  // swizzle atoms are 1024-byte aligned
  bf16* tile = reinterpret_cast<bf16*>(smemRaw + (sBase - rawBase));
  static_assert(BM * GG_PITCH * 2 <= STAGES * ggStage<BM>(), "the epilogue tile reuses the stages");
  for (int t0 = rowStart; t0 < rowEnd; t0 += BM) {
    const int rows = min(BM, rowEnd - t0);
    if (rows <= 64) groupedPass<BM, STAGES, 64>(x, we, K, t0, rows, wrow, sBase, tile);
    else if (BM <= 64 || rows <= 128) groupedPass<BM, STAGES, (BM < 128 ? BM : 128)>(x, we, K, t0, rows, wrow, sBase, tile);
    else if (BM <= 128 || rows <= 192) groupedPass<BM, STAGES, (BM < 192 ? BM : 192)>(x, we, K, t0, rows, wrow, sBase, tile);
    else groupedPass<BM, STAGES, BM>(x, we, K, t0, rows, wrow, sBase, tile);
    store(t0, rows, tile);
    __syncthreads();  // the next pass's loads reuse the shared memory
  }
}
#endif

// y [rows, N] for w [local, N, K] — or, with perm and shared (every token routed to a local
// expert, i.e. no expert parallelism), the MoE combine fused: out[perm[r]] = shared[perm[r]] +
// y[r], rounded as moe_combine rounds (y to bf16, the sum in fp32, to bf16), so no y buffer and
// no combine launch. Grid (⌈N / 128⌉, local). Requirements (checked by the host): K % 64 == 0,
// N % 8 == 0, 16-byte aligned x, w, y and shared; compute capability 9.0.
template <int BM, int STAGES>
__device__ __forceinline__ void groupedDown(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y,
                                            const int* __restrict__ offsets, const int* __restrict__ perm,
                                            const bf16* __restrict__ shared, int K, int N) {
#ifdef TSGLANG_WGMMA
  const int e = blockIdx.y;
  const int rowStart = offsets[e], rowEnd = offsets[e + 1];
  const int n0 = blockIdx.x * GG_BN;
  if (rowStart >= rowEnd) return;
  groupedPasses<BM, STAGES>(x, w + (size_t)e * N * K, K, rowStart, rowEnd, [&](int i) { return n0 + i < N ? n0 + i : -1; },
                            [&](int t0, int rows, const bf16* tile) {
                              for (int c = threadIdx.x; c < rows * (GG_BN / 8); c += 256) {
                                const int r = c >> 4, ch = c & 15;
                                if (n0 + ch * 8 >= N) continue;
                                const uint4 yv = *reinterpret_cast<const uint4*>(tile + r * GG_PITCH + ch * 8);
                                if (!perm) {
                                  *reinterpret_cast<uint4*>(y + (size_t)(t0 + r) * N + n0 + ch * 8) = yv;
                                  continue;
                                }
                                const size_t at = (size_t)perm[t0 + r] * N + n0 + ch * 8;
                                const uint4 sv = *reinterpret_cast<const uint4*>(shared + at);
                                const bf16* s8 = reinterpret_cast<const bf16*>(&sv);
                                const bf16* y8 = reinterpret_cast<const bf16*>(&yv);
                                __align__(16) bf16 o[8];
#pragma unroll
                                for (int i = 0; i < 8; i++) o[i] = __float2bfloat16_rn(__bfloat162float(s8[i]) + __bfloat162float(y8[i]));
                                *reinterpret_cast<uint4*>(y + at) = *reinterpret_cast<const uint4*>(o);
                              }
                            });
#else
  __trap();  // the host launches these kernels only on compute capability 9.0
#endif
}

// act [rows, F] for w [local, 2F, K] (gate rows first, then up rows): the CTA's weight rows are
// gate rows [64·bx, +64) and the matching up rows F + [64·bx, +64). Rounding as the unfused path
// (GEMM to bf16, then silu_mul in fp32): g and u rounded to bf16, SiLU(g)·u in fp32, rounded.
// Grid (F / 64, local). Requirements: K % 64 == 0, F % 64 == 0, 16-byte aligned; cc 9.0.
template <int BM, int STAGES>
__device__ __forceinline__ void groupedGateUp(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ act,
                                              const int* __restrict__ offsets, int K, int F) {
#ifdef TSGLANG_WGMMA
  const int e = blockIdx.y;
  const int rowStart = offsets[e], rowEnd = offsets[e + 1];
  const int f0 = blockIdx.x * 64;
  if (rowStart >= rowEnd) return;
  groupedPasses<BM, STAGES>(x, w + (size_t)e * 2 * F * K, K, rowStart, rowEnd, [&](int i) { return i < 64 ? f0 + i : F + f0 + i - 64; },
                            [&](int t0, int rows, const bf16* tile) {
                              for (int c = threadIdx.x; c < rows * 8; c += 256) {
                                const int r = c >> 3, ch = c & 7;
                                const bf16* g = tile + r * GG_PITCH + ch * 8;
                                __align__(16) bf16 out[8];
#pragma unroll
                                for (int i = 0; i < 8; i++) {
                                  const float gv = __bfloat162float(g[i]), uv = __bfloat162float(g[64 + i]);
                                  out[i] = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * uv);
                                }
                                *reinterpret_cast<uint4*>(act + (size_t)(t0 + r) * F + f0 + ch * 8) = *reinterpret_cast<const uint4*>(out);
                              }
                            });
#else
  __trap();
#endif
}

// 256 rows per pass, 4 stages (193 KB of shared memory). Measured against 192 rows × 5 stages
// (same speed) and 128 × 6 (slower: experts of 129–256 rows read their weights twice), H100,
// 2026-11-27.
extern "C" __global__ void __launch_bounds__(256, 1) moe_grouped_gemm_bf16(const bf16* x, const bf16* w, bf16* y, const int* offsets, int K, int N) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  groupedDown<GG_BM, GG_STAGES>(x, w, y, offsets, nullptr, nullptr, K, N);
}
extern "C" __global__ void __launch_bounds__(256, 1) moe_grouped_down_combine_bf16(const bf16* x, const bf16* w, bf16* out, const int* offsets,
                                                                                    const int* perm, const bf16* shared, int K, int N) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  groupedDown<GG_BM, GG_STAGES>(x, w, out, offsets, perm, shared, K, N);
}
extern "C" __global__ void __launch_bounds__(256, 1) moe_grouped_gate_up_bf16(const bf16* x, const bf16* w, bf16* act, const int* offsets, int K, int F) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  groupedGateUp<GG_BM, GG_STAGES>(x, w, act, offsets, K, F);
}
