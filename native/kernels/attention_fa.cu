// Tiled (FlashAttention-2 style) attention over the paged KV pools, bf16 with tensor cores
// (mma.sync m16n8k16, fp32 accumulation, online softmax in fp32). The `fa3` attention backend.
// On sm_90 the prefill at head_dim 128 runs both products on wgmma (the `wg` variant below).
//
// Roofline, prefill (H100 SXM: ~790 TFLOP/s dense bf16 through wgmma, ~3.0 TB/s copy; mma.sync
// reaches about 2/3 of the wgmma rate): causal GQA 40/8, head_dim 128, 8k tokens is
// 4·Hq·D·T(T+1)/2 = 0.687 TFLOP, 0.87 ms at 790 TFLOP/s; the bytes are q/out 2·8k·40·128·2 =
// 168 MB and K/V 34 MB, 0.07 ms: compute-bound by ~13×. Per key tile each warp reads K and V
// (2 × 16 KB) and Q (8 KB) from shared memory for 2·2·32·64·128 FLOP = 26 FLOP/B, over the
// ~17 FLOP/B a Hopper SM's 128 B/clk of shared memory needs at mma.sync rate: hence 32 query
// rows per warp (two m16 tiles sharing each K/V fragment), as FlashAttention-2 does.
// Measured (H100, bench/attention.sh, docs/PERF.md): 346–351 TFLOP/s, 1.08× torch SDPA flash,
// 0.55–0.59× its cuDNN backend (the wgmma-class mark); the 8-warp variant 309 TFLOP/s; the wg
// variant 488 TFLOP/s (1.41 ms: 1.53× flash, 0.79× cuDNN's 620, same run, 2026-11-27).
// Roofline, decode (one query row per sequence): memory-bound on K/V, 2·kvLen·Hkv·D·2 bytes per
// sequence, read once per KV head (the G = Hq/Hkv query heads of a group are packed into the
// rows of one tile) at copy bandwidth; the FLOPs (G·4·D per key and KV head, ~2.5 FLOP/B) are
// negligible. Split-KV (flash-decoding) gives enough blocks to fill the GPU — each split an
// equal share of the keys, its own tiles from there — and a combine kernel (or the cluster merge)
// merges the splits' (m, l, O) partials. Measured: 0.76–0.98 of copy bandwidth from batch 8 ×
// 8k up (batch 1 × 8k, 33 MB in ~33 µs with two launches, is latency-bound: 0.33–0.37).
//
// Layout: q/out [n, Hq, D]; the pools [slots, Hkv, D], key u of a sequence at slot
// slotTable[slotBase + u], so a K/V tile is gathered row by row (each row one 16·D/8-byte run:
// a contiguous and a scattered slot list cost the same). Allowed keys for a query at position
// p: [lo(p), p], lo = 0 (global) or p − p mod C (chunked-local, absolute chunk boundaries).
// Work items ("tiles", built on the host): {first row, rows, position of the first row, slot
// list offset}; a tile's rows are consecutive positions of one sequence (prefill over a cached
// prefix: positions [kvLen − qLen, kvLen)).
//   prefill: block = (query head, tile of 128 rows); 4 warps × 32 rows; K/V tiles of 64 keys,
//            double-buffered with cp.async (zero-filled past the key range), ldmatrix from a
//            swizzled layout (16-byte chunk c of row r at c ^ (r & 7): conflict-free).
//   decode:  block = (KV head, tile of ⌊64/G⌋ rows × G heads, split); 4 warps × 16 rows,
//            3 stages; a warp whose rows are all padding only helps load. With 2, 4 or 8 splits
//            the splits of a tile are one thread-block cluster (the _c<C> kernels) and merge
//            their partials through distributed shared memory: no combine launch, no partials
//            in global memory.
// Masks are applied only to key tiles that straddle a row's [lo, p]; fully-masked rows of a
// tile keep m = −inf and contribute nothing (exp2(−inf) = 0).
#include <cooperative_groups.h>
#include <math_constants.h>

#include "common.cuh"
#include "wgmma.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int FA_BN = 64;  // keys per tile

// 16 bytes global → shared, asynchronously; zero-filled when !valid (src must still be a valid address).
__device__ __forceinline__ void cpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a·b, m16n8k16, bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Byte offset of 16-byte chunk `c` of row `r` in a tile with CH chunks per row (XOR swizzle).
template <int CH>
__device__ __forceinline__ int swz(int r, int c) {
  constexpr int SW = (CH < 8 ? CH : 8) - 1;
  return (r * CH + (c ^ (r & SW))) * 16;
}

// The wgmma variant's layout of Q, K and V tiles: two panels of 64 columns (128 B per row), each
// [rows × 128 B] in 8-row atoms of 1024 B with 16-byte chunk c of row r at (c ^ r % 8)·16 — the
// 128-byte-swizzled layout wgmma descriptors read (wgmma.cuh): K-major for Q and K in S = Q·Kᵀ,
// N-major for V in O = P·V.
template <int ROWS>
__device__ __forceinline__ int panelSwz(int r, int c) {
  return (c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}

template <int D, int NW, int MT, int STAGES>
constexpr int faSmemBytes() {
  return (NW * 16 * MT + 2 * STAGES * FA_BN) * D * 2;
}

// f(mt, h, m, l) for each accumulator row this thread holds: m its row in the block, l the
// row's softmax sum over the lane quad. Every lane calls it (the quad's shuffles).
template <int MT, typename F>
__device__ __forceinline__ void eachRow(int wRow0, int g, const float (&lRow)[MT][2], F f) {
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float l = lRow[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      f(mt, h, wRow0 + mt * 16 + g + 8 * h, l);
    }
}

// The one-token decode's tile-per-warp states merged into warp 0 (flashAttention, warpTiles):
// warps 1..nTiles−1 leave their (O fragments, m, l) in `buf` (shared memory no tile uses any
// more), laid out [warp][value][lane] so the stores and loads are conflict-free; warp 0 rescales
// every state to the common max and adds them in warp order (the arithmetic of the cluster merge,
// per thread: a lane holds the same rows and columns in every warp, and its partial row sums l).
// Every thread of the block calls it.
template <int NW, int DT>
__device__ __forceinline__ void mergeWarpStates(float* buf, int nTiles, float (&o)[DT][4], float (&m)[2], float (&l)[2], float scaleLog2) {
  constexpr int PER = DT * 4 + 4;  // per lane: O fragments, m[2], l[2]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // every warp is done with its tile (buf overlays the V stages)
  if (warp > 0 && warp < nTiles) {
    float* mine = buf + (warp - 1) * PER * 32 + lane;
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 4; e++) mine[(dt * 4 + e) * 32] = o[dt][e];
#pragma unroll
    for (int h = 0; h < 2; h++) {
      mine[(DT * 4 + h) * 32] = m[h];
      mine[(DT * 4 + 2 + h) * 32] = l[h];
    }
  }
  __syncthreads();
  if (warp != 0 || nTiles < 2) return;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    float mx = m[h];
    for (int w = 1; w < nTiles; w++) mx = fmaxf(mx, buf[((w - 1) * PER + DT * 4 + h) * 32 + lane]);
    const float mS = (mx == -CUDART_INF_F ? 0.f : mx) * scaleLog2;
    const float c0 = ex2(m[h] * scaleLog2 - mS);  // 0 for a state that saw no key
    l[h] *= c0;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
      o[dt][2 * h] *= c0;
      o[dt][2 * h + 1] *= c0;
    }
    for (int w = 1; w < nTiles; w++) {
      const float* theirs = buf + (w - 1) * PER * 32 + lane;
      const float c = ex2(theirs[(DT * 4 + h) * 32] * scaleLog2 - mS);
      l[h] += theirs[(DT * 4 + 2 + h) * 32] * c;
#pragma unroll
      for (int dt = 0; dt < DT; dt++) {
        o[dt][2 * h] += theirs[(dt * 4 + 2 * h) * 32] * c;
        o[dt][2 * h + 1] += theirs[(dt * 4 + 2 * h + 1) * 32] * c;
      }
    }
    m[h] = mx;
  }
}

// The decode splits of one tile as a thread-block cluster (grid z = the splits = the cluster):
// each block leaves its unnormalised partial (O, m, l) in its own shared memory, then block s
// merges head-dim slice s of every row from all the cluster's partials (distributed shared
// memory) — the arithmetic of attention_fa_combine_bf16, split by split in order, so the two
// paths give the same bits. An empty split has m = −inf, l = 0 and weighs nothing.
//
// A one-token tile (≤ 16 packed rows, warp 0's) pushes instead (pushMerge): each block stores its
// rows' O slice s and its (m, l) straight into block s's shared memory (the Q tile's rows 16..,
// which such a tile never loads), then one cluster barrier (release / acquire) and every block
// merges its slice from its own memory — one barrier and no remote-load round trip, where the
// pulled merge takes two barriers and a round of remote loads. Same values in the same order: the
// same bits. Every block arrived at the cluster barrier when it started (clusterArriveRelaxed), so
// the wait here is for that phase: no block writes into one that has not started. Measured (4 ×
// H200, Scout tp 4, batch 1, 1K keys, 2026-11-27): the pulled merge cost ~2 µs a layer (ablated:
// 3.287 → 3.188 ms a step without it); pushing saves ~0.5 of them (3.290 → 3.265 ms).
__device__ __forceinline__ void clusterArriveRelaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void clusterWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
}

// One output element from every split's (m · scaleLog2, l) and O element, splits in order: the
// combine's arithmetic (attention_fa_combine_bf16), so every merge gives the same bits.
template <int CLUSTER>
__device__ __forceinline__ float mergeSplits(const float2 (&ml)[CLUSTER], const float (&ov)[CLUSTER]) {
  float mMax = -CUDART_INF_F;
#pragma unroll
  for (int s = 0; s < CLUSTER; s++) mMax = fmaxf(mMax, ml[s].x);
  float lSum = 0.f;
#pragma unroll
  for (int s = 0; s < CLUSTER; s++) lSum += ml[s].x == -CUDART_INF_F ? 0.f : ex2(ml[s].x - mMax) * ml[s].y;
  const float inv = 1.f / lSum;
  float acc = 0.f;
#pragma unroll
  for (int s = 0; s < CLUSTER; s++)
    if (ml[s].x != -CUDART_INF_F) acc += ex2(ml[s].x - mMax) * ov[s];
  return acc * inv;
}

// Does a one-token tile's push merge fit the Q tile's unused rows (16.. of BM)?
template <int D, int BM, int CLUSTER>
__host__ __device__ constexpr bool pushMergeFits() {
  return CLUSTER > 1 && CLUSTER * 16 * (D / (CLUSTER > 1 ? CLUSTER : 1)) * 4 + CLUSTER * 16 * 8 <= (BM - 16) * D * 2;
}

template <int D, int NW, int MT, bool PACKED, int CLUSTER>
__device__ __forceinline__ void clusterMerge(uint8_t* smem, const float (&o)[MT][D / 8][4], const float (&mRow)[MT][2],
                                             const float (&lRow)[MT][2], bf16* __restrict__ out, int rowStart, int nRows,
                                             int G, int hq, int kvh, float scaleLog2, bool pushMerge) {
  static_assert(PACKED && D % CLUSTER == 0, "cluster merge: the decode kernel's packed rows");
  constexpr int BM = NW * 16 * MT, DT = D / 8;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  clusterWait();  // the phase every block arrived at when it started
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (pushMergeFits<D, BM, CLUSTER>()) {
    if (pushMerge) {
      constexpr int SLICE = D / CLUSTER, THREADS = NW * 32;
      cg::cluster_group cluster = cg::this_cluster();
      const int me = (int)cluster.block_rank();
      float* recvO = reinterpret_cast<float*>(smem + 16 * D * 2);      // [CLUSTER][16][SLICE]
      float2* recvML = reinterpret_cast<float2*>(recvO + CLUSTER * 16 * SLICE);  // [CLUSTER][16]: (m · scaleLog2, l)
      eachRow<MT>(warp * 16 * MT, g, lRow, [&](int mt, int h, int m, float l) {
        if (m / G >= nRows) return;  // m < 16: the tile has ≤ 16 packed rows
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
          const int d = dt * 8 + 2 * t4;
          *reinterpret_cast<float2*>(cluster.map_shared_rank(recvO, d / SLICE) + (me * 16 + m) * SLICE + d % SLICE) =
              make_float2(o[mt][dt][2 * h], o[mt][dt][2 * h + 1]);
        }
        if (t4 == 0) {
          const float2 v = make_float2(mRow[mt][h] == -CUDART_INF_F ? -CUDART_INF_F : mRow[mt][h] * scaleLog2, l);
#pragma unroll
          for (int s = 0; s < CLUSTER; s++) cluster.map_shared_rank(recvML, s)[me * 16 + m] = v;
        }
      });
      cluster.sync();  // every block's pushes have landed (release / acquire)
      for (int c = tid; c < nRows * G * SLICE; c += THREADS) {
        const int m = c / SLICE, dl = c % SLICE;
        float2 ml[CLUSTER];
        float ov[CLUSTER];
#pragma unroll
        for (int s = 0; s < CLUSTER; s++) {
          ml[s] = recvML[s * 16 + m];
          ov[s] = recvO[(s * 16 + m) * SLICE + dl];
        }
        const size_t rh = (size_t)(rowStart + m / G) * hq + kvh * G + m % G;
        out[rh * D + me * SLICE + dl] = fromF<bf16>(mergeSplits<CLUSTER>(ml, ov));
      }
      return;  // nothing reads another block's memory any more
    }
  }
#endif
  float* sO = reinterpret_cast<float*>(smem);            // [BM][D]
  float2* sML = reinterpret_cast<float2*>(sO + BM * D);  // [BM]: (m · scaleLog2, l)
  __syncthreads();  // every warp is done with the K/V tiles this overwrites
  eachRow<MT>(warp * 16 * MT, g, lRow, [&](int mt, int h, int m, float l) {
    if (m / G >= nRows) return;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) *reinterpret_cast<float2*>(sO + m * D + dt * 8 + 2 * t4) = make_float2(o[mt][dt][2 * h], o[mt][dt][2 * h + 1]);
    if (t4 == 0) sML[m] = make_float2(mRow[mt][h] == -CUDART_INF_F ? -CUDART_INF_F : mRow[mt][h] * scaleLog2, l);
  });
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int SLICE = D / CLUSTER, THREADS = NW * 32;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every split's partials are written and visible to the cluster
  const int slice = (int)cluster.block_rank();
  for (int c = tid; c < nRows * G * SLICE; c += THREADS) {
    const int m = c / SLICE, d = slice * SLICE + c % SLICE;
    // Every split's (m, l) and O element in one round of remote loads (O is written for every
    // real row, zeros where a split saw no key), then the combine's arithmetic.
    float2 ml[CLUSTER];
    float ov[CLUSTER];
#pragma unroll
    for (int s = 0; s < CLUSTER; s++) {
      ml[s] = cluster.map_shared_rank(sML, s)[m];
      ov[s] = cluster.map_shared_rank(sO, s)[m * D + d];
    }
    const size_t rh = (size_t)(rowStart + m / G) * hq + kvh * G + m % G;
    out[rh * D + d] = fromF<bf16>(mergeSplits<CLUSTER>(ml, ov));
  }
  cluster.sync();  // no block leaves while another still reads its shared memory
#else
  __trap();  // clusters are sm_90+; the host launches the _c<C> kernels only there
#endif
}

/**
 * D: head dim (16..128, multiple of 16). NW: warps. MT: m16 tiles per warp (block rows
 * BM = 16·NW·MT).
 * PACKED: a block is one KV head and its rows are (query row, head in group) pairs; else one
 * query head. partO/partML non-null: write unnormalised split partials instead of out.
 * WG (D = 128, NW = 8, MT = 1, sm_90a only): both products by wgmma, one warpgroup per 64 rows,
 * from Q, K and V tiles in panelSwz layout. S's accumulators land in exactly the m16n8 layout the
 * softmax uses (row 16·warp + g + 8h, column 8·nt + 2·t4 + e); P packed to bf16 from them is
 * wgmma's register A operand, and O's accumulators are the same layout again.
 */
template <int D, int NW, int MT, bool PACKED, int STAGES, bool WG = false, int CLUSTER = 0>
__device__ __forceinline__ void flashAttention(const bf16* __restrict__ q, const bf16* __restrict__ kPool,
                                               const bf16* __restrict__ vPool, const int* __restrict__ slotTable,
                                               const int4* __restrict__ tiles, bf16* __restrict__ out,
                                               float* __restrict__ partO, float2* __restrict__ partML, int hq, int hkv,
                                               int chunk, int nSplit, float scaleLog2) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  constexpr int FA_THREADS = NW * 32;
  constexpr int BM = NW * 16 * MT;
  constexpr int BN = FA_BN;
  constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
  constexpr int DT = D / 8;   // n-tiles of P·V
  constexpr int NT = BN / 8;  // n-tiles of Q·Kᵀ
  constexpr int TILE_BYTES = BN * D * 2;
  static_assert(D % 16 == 0 && D <= 128, "head dim");
  static_assert((BN * CH) % FA_THREADS == 0 && (BM * CH) % FA_THREADS == 0, "tile loads");
  static_assert(!WG || (D == 128 && NW == 8 && MT == 1 && !PACKED), "the wgmma variants: 8 warps × 16 rows, head_dim 128");

  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* sQ = smem;
  uint8_t* sK = sQ + BM * D * 2;
  uint8_t* sV = sK + STAGES * TILE_BYTES;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int G = hq / hkv;
  const int4 tile = tiles[blockIdx.y];
  const int rowStart = tile.x, nRows = tile.y, pos0 = tile.z;
  const int* slots = slotTable + tile.w;
  const int kvh = PACKED ? (int)blockIdx.x : (int)blockIdx.x / G;
  const int split = blockIdx.z;
  const int posLast = pos0 + nRows - 1;
  // A one-token tile of a cluster merges by pushes (clusterMerge): its Q rows 16.. are left
  // unloaded for them, and the block arrives at the cluster barrier now (it has started).
  const bool pushMerge = pushMergeFits<D, NW * 16 * MT, CLUSTER>() && PACKED && nRows * G <= 16;
  if constexpr (CLUSTER > 1) clusterArriveRelaxed();
  const int kLo = chunk > 0 ? pos0 - pos0 % chunk : 0;
  const int kHi = posLast + 1;
  const int loLast = chunk > 0 ? posLast - posLast % chunk : 0;
  // Split `split` takes keys [kBase, kEnd): an equal share of [kLo, kHi), not whole tiles — 1,056
  // keys over 8 splits are 8 × 132 (three tiles, the last of 4 keys, 66 KB of K/V a block), where
  // whole tiles made 6 × 192 and two idle splits (96 KB a block). Its tiles start at kBase; keys
  // past kEnd in its last tile are masked. Scout tp 4, batch 1, 4 × H200 (2026-11-27): 3.267 /
  // 3.270 → 3.257 / 3.258 ms a step.
  const int share = (kHi - kLo + nSplit - 1) / nSplit;
  const int kBase = min(kHi, kLo + split * share), kEnd = min(kHi, kBase + share);
  const int ktBegin = 0, ktEnd = (kEnd - kBase + BN - 1) / BN;

  auto rowOf = [&](int m) { return PACKED ? m / G : m; };
  auto headOf = [&](int m) { return PACKED ? kvh * G + m % G : (int)blockIdx.x; };

  // This thread's rows: m = warp·16·MT + mt·16 + g + 8h. wgmma is warpgroup-wide: a warpgroup
  // computes while any of its 64 rows is real (padding rows are zero Q rows, never written).
  const int wRow0 = warp * 16 * MT;
  const bool warpActive = WG ? rowOf(64 * (warp >> 2)) < nRows : rowOf(wRow0) < nRows;

  // The PDL wait comes only now (common.cuh): the tile and slot tables are step inputs written
  // long before this launch (host uploads, slot_table_write), so they are read while the previous
  // kernel finishes — with the slots of this thread's rows of the first tiles, two dependent round
  // trips off the decode's critical path. q, the K/V pools and every write come after the wait.
  constexpr int RSTEP = FA_THREADS / CH;
  const int ldRow = tid / CH, ldCh = tid % CH;
  int firstSlots[STAGES - 1][BN / RSTEP];
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++)
#pragma unroll
    for (int it = 0; it < BN / RSTEP; it++) {
      const int u = kBase + (ktBegin + s) * BN + ldRow + it * RSTEP;
      firstSlots[s][it] = ktBegin + s < ktEnd && u < kEnd ? slots[u] : 0;
    }
  gridDependencyWait();

  if (ktBegin >= ktEnd && CLUSTER == 0) {  // an empty split: weight zero in the combine (a cluster's: in the merge)
    if (partO == nullptr) return;
    for (int c = tid; c < BM * D; c += FA_THREADS) {
      const int m = c / D, d = c % D;
      if (rowOf(m) >= nRows) continue;
      const size_t idx = ((size_t)(rowStart + rowOf(m)) * hq + headOf(m)) * nSplit + split;
      partO[idx * D + d] = 0.f;
      if (d == 0) partML[idx] = make_float2(-CUDART_INF_F, 0.f);
    }
    return;
  }

  // Q tile (zero rows past the tile) and the first K/V tiles.
#pragma unroll
  for (int it = 0; it < BM * CH / FA_THREADS; it++) {
    const int c = tid + it * FA_THREADS;
    const int m = c / CH, ch = c % CH;
    const int i = rowOf(m);
    const bool ok = i < nRows;
    const bf16* src = ok ? q + ((size_t)(rowStart + i) * hq + headOf(m)) * D + ch * 8 : q;
    if (pushMerge && m >= 16) continue;  // the push merge's buffer (no warp reads these rows)
    cpAsync16(smemAddr(sQ + (WG ? panelSwz<BM>(m, ch) : swz<CH>(m, ch))), src, ok);
  }
  // K/V tiles: this thread copies chunk tid % CH of rows tid / CH + it·(128 / CH); that row
  // step is a multiple of the swizzle period, so the swizzled offset is one base + it·step.
  const uint32_t ldK = smemAddr(sK) + (WG ? panelSwz<BN>(ldRow, ldCh) : swz<CH>(ldRow, ldCh));
  const uint32_t ldV = smemAddr(sV) + (WG ? panelSwz<BN>(ldRow, ldCh) : swz<CH>(ldRow, ldCh));
  constexpr int KV_ROW = WG ? 128 : CH * 16;  // bytes from one K or V row to the next (within a panel)
  const bf16* kSrc = kPool + (size_t)kvh * D + ldCh * 8;
  const bf16* vSrc = vPool + (size_t)kvh * D + ldCh * 8;
  const size_t slotStride = (size_t)hkv * D;
  // slotOf(it, u): the slot of key u, this thread's row `it` of the tile.
  auto loadKVWith = [&](int kt, int stage, auto slotOf) {
    const int u0 = kBase + kt * BN + ldRow;
#pragma unroll
    for (int it = 0; it < BN / RSTEP; it++) {
      const int u = u0 + it * RSTEP;
      const bool ok = u < kEnd;
      const size_t off = ok ? (size_t)slotOf(it, u) * slotStride : 0;
      cpAsync16(ldK + stage * TILE_BYTES + it * RSTEP * KV_ROW, kSrc + off, ok);
      cpAsync16(ldV + stage * TILE_BYTES + it * RSTEP * KV_ROW, vSrc + off, ok);
    }
  };
  auto loadKV = [&](int kt, int stage) { loadKVWith(kt, stage, [&](int, int u) { return slots[u]; }); };
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (ktBegin + s < ktEnd) loadKVWith(ktBegin + s, s, [&](int it, int) { return firstSlots[s][it]; });
    cpAsyncCommit();
  }
  // The next kernel (o_proj, whose blocks load their weights before their own wait) launches only
  // once every block has queued its first K/V tiles: its DRAM traffic lines up behind them.
  gridDependencyLaunchDependents();

  float mRow[MT][2], lRow[MT][2];
  float o[MT][DT][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      mRow[mt][h] = -CUDART_INF_F;
      lRow[mt][h] = 0.f;
    }
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 4; e++) o[mt][dt][e] = 0.f;
  }

  // ldmatrix addresses (byte offsets into smem). Tile bases are multiples of CH·16 bytes, so
  // the swizzled offset of chunk 2·x + b is (offset of chunk b) ^ (x << 5).
  constexpr int SW = (CH < 8 ? CH : 8) - 1;
  constexpr int ROW = CH * 16;  // bytes per tile row
  const uint32_t sBase = smemAddr(smem);
  const uint32_t kOff = BM * ROW + ((lane & 7) + ((lane >> 4) << 3)) * ROW + ((((lane >> 3) & 1) ^ (lane & SW)) << 4);
  const uint32_t vOff = BM * ROW + STAGES * TILE_BYTES + ((lane & 7) + (((lane >> 3) & 1) << 3)) * ROW + (((lane >> 4) ^ (lane & SW)) << 4);

  // One key tile kt (in stage `stage`) for the warp's 16·MT rows from rowBase of the Q tile:
  // S = Q·Kᵀ, the mask, the online softmax into (mRow, lRow), O += P·V.
  auto tileStep = [&](int kt, int stage, int rowBase) {
    const uint32_t qRows = (rowBase + (lane & 15)) * ROW + (((lane >> 4) ^ (lane & SW)) << 4);  // ldmatrix offset of the rows
    const uint32_t kStage = kOff + stage * TILE_BYTES, vStage = vOff + stage * TILE_BYTES;

    // S = Q·Kᵀ (raw scores, fp32)
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.f;
    if constexpr (WG) {
#ifdef TSGLANG_WGMMA
      float(&acc)[32] = reinterpret_cast<float(&)[32]>(s);
      wgmmaFenceOperands(acc);
      wgmmaFence();
      const uint32_t qWg = sBase + (warp >> 2) * 64 * 128;  // this warpgroup's 64 rows of each Q panel
      const uint32_t kTile = sBase + BM * D * 2 + stage * TILE_BYTES;
#pragma unroll
      for (int ks = 0; ks < KS; ks++) {
        const uint32_t col = (ks >> 2), step = (ks & 3) * 32;  // panel, and 16 columns inside its 128-byte rows
        wgmma64xN<64>(acc, wgmmaDesc(qWg + col * BM * 128 + step), wgmmaDesc(kTile + col * BN * 128 + step));
      }
      wgmmaCommit();
      wgmmaWait<0>();
      wgmmaFenceOperands(acc);
#else
      __trap();  // the host launches the wgmma variant on sm_90 only
#endif
    } else {  // braced: a pragma'd loop as a discarded else branch in this lambda broke nvcc's scopes
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) ldsm4(sBase + (qRows ^ (ks << 5)) + mt * 16 * ROW, a[mt]);
#pragma unroll
      for (int np = 0; np < NT / 2; np++) {
        uint32_t b[4];
        ldsm4(sBase + (kStage ^ (ks << 5)) + np * 16 * ROW, b);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816(s[mt][2 * np], a[mt], b[0], b[1]);
          mma16816(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
    }

    // Mask where the tile straddles some row's allowed range [lo(p), p] (or the key range's end).
    const int k0 = kBase + kt * BN;
    if (!(k0 + BN - 1 <= pos0 && k0 >= loLast && k0 + BN <= kEnd)) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int p = pos0 + min(rowOf(rowBase + mt * 16 + g + 8 * h), nRows - 1);  // padding rows: the last row's mask
          const int lo = chunk > 0 ? p - p % chunk : 0;
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
              const int u = k0 + nt * 8 + 2 * t4 + e;
              if (u > p || u < lo || u >= kEnd) s[mt][nt][2 * h + e] = -CUDART_INF_F;
            }
        }
    }

    // Online softmax (base 2): running max m (raw score units) and partial row sum l per thread;
    // P goes straight to bf16 A fragments (the m16n8 C layout is the m16k16 A layout).
    uint32_t pa[MT][BN / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float mx = mRow[mt][h];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mS = (mx == -CUDART_INF_F ? 0.f : mx) * scaleLog2;
        const float corr = ex2(mRow[mt][h] * scaleLog2 - mS);  // 0 while the row had no key
        mRow[mt][h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
          const float p0 = ex2(fmaf(s[mt][nt][2 * h], scaleLog2, -mS));
          const float p1 = ex2(fmaf(s[mt][nt][2 * h + 1], scaleLog2, -mS));
          sum += p0 + p1;
          pa[mt][nt >> 1][(nt & 1) * 2 + h] = packBf16(p0, p1);
        }
        lRow[mt][h] = lRow[mt][h] * corr + sum;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
          o[mt][dt][2 * h] *= corr;
          o[mt][dt][2 * h + 1] *= corr;
        }
      }

    // O += P·V
    if constexpr (WG) {
#ifdef TSGLANG_WGMMA
      // P from registers (its fragments are wgmma's A layout), V N-major from its two panels;
      // 16 keys are two 8-row atoms, 2048 B.
      float(&oacc)[64] = reinterpret_cast<float(&)[64]>(o);
      const uint32_t vTile = sBase + BM * D * 2 + STAGES * TILE_BYTES + stage * TILE_BYTES;
      wgmmaFenceOperands(oacc);
      wgmmaFence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) wgmma64x128RS(oacc, pa[0][kk], wgmmaDescMN(vTile + kk * 2048, BN * 128));
      wgmmaCommit();
      wgmmaWait<0>();
      wgmmaFenceOperands(oacc);
#endif
    } else {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
      for (int dp = 0; dp < DT / 2; dp++) {
        uint32_t b[4];
        ldsm4t(sBase + (vStage ^ (dp << 5)) + kk * 16 * ROW, b);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816(o[mt][2 * dp], pa[mt][kk], b[0], b[1]);
          mma16816(o[mt][2 * dp + 1], pa[mt][kk], b[2], b[3]);
        }
      }
    }
    }
  };

  // Few packed rows (one-token decode: ≤ 16, warp 0's) over no more key tiles than stages and
  // warps: every tile is loaded at once and warp w takes tile w with its own softmax state, then
  // warps 1.. hand (m, l, O) to warp 0 through shared memory. One warp walking the tiles in turn
  // left three idle and the tiles' loads and products in series (a tp-4 rank's 1K-key step: 17
  // tiles over 8 splits, 3 a split).
  const int nTiles = ktEnd - ktBegin;
  const bool warpTiles = PACKED && !WG && MT == 1 && nRows * G <= 16 && nTiles <= STAGES && nTiles <= NW;  // block-uniform
  if (warpTiles) {
    for (int s = STAGES - 1; s < nTiles; s++) loadKV(ktBegin + s, s);
    cpAsyncCommit();
    cpAsyncWait<0>();
    __syncthreads();  // every thread's copies (Q and all the tiles) have landed
    if (warp < nTiles) tileStep(ktBegin + warp, warp, 0);
    mergeWarpStates<NW, DT>(reinterpret_cast<float*>(sV), nTiles, o[0], mRow[0], lRow[0], scaleLog2);
  } else {
    for (int kt = ktBegin; kt < ktEnd; kt++) {
      const int stage = (kt - ktBegin) % STAGES;
      cpAsyncWait<STAGES - 2>();  // this thread's copies of tile kt (and Q) have landed
#ifdef TSGLANG_WGMMA
      if constexpr (WG) fenceProxyAsync();  // ... and are visible to wgmma's async proxy (before the barrier)
#endif
      __syncthreads();            // everyone's have, and everyone is done with tile kt − 1
      {
        const int nk = kt + STAGES - 1;
        if (nk < ktEnd) loadKV(nk, (nk - ktBegin) % STAGES);
        cpAsyncCommit();
      }
      if (warpActive) tileStep(kt, stage, wRow0);
    }
  }
  cpAsyncWait<0>();  // no copy may outlive the block (the trailing groups are empty)

  if constexpr (CLUSTER > 1) {
    clusterMerge<D, NW, MT, PACKED, CLUSTER>(smem, o, mRow, lRow, out, rowStart, nRows, G, hq, kvh, scaleLog2, pushMerge);
  } else {
    // Epilogue: O / l, or the split's (O, m, l).
    eachRow<MT>(wRow0, g, lRow, [&](int mt, int h, int m, float l) {
      const int i = rowOf(m);
      if (i >= nRows) return;
      const size_t rh = (size_t)(rowStart + i) * hq + headOf(m);
      if (partO == nullptr) {
        const float inv = 1.f / l;
        bf16* dst = out + rh * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
          *reinterpret_cast<uint32_t*>(dst + dt * 8) = packBf16(o[mt][dt][2 * h] * inv, o[mt][dt][2 * h + 1] * inv);
      } else {
        const size_t idx = rh * nSplit + split;
        float* dst = partO + idx * D + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(o[mt][dt][2 * h], o[mt][dt][2 * h + 1]);
        if (t4 == 0) partML[idx] = make_float2(mRow[mt][h] == -CUDART_INF_F ? -CUDART_INF_F : mRow[mt][h] * scaleLog2, l);
      }
    });
  }
}

}  // namespace

// Shared memory: prefill (4 warps × 2 m-tiles, 2 stages) 96 KB at D = 128 (two blocks per SM),
// decode (4 warps × 1 m-tile, 3 stages) 112 KB; faSmemBytes in src/runtime/cuda/attention.ts
// must agree (the static_asserts pin the formulas).
#define FA_ARGS                                                                                                   \
  const bf16 *q, const bf16 *kPool, const bf16 *vPool, const int *slotTable, const int4 *tiles, bf16 *out,       \
      float *partO, float2 *partML, int hq, int hkv, int chunk, int nSplit, float scaleLog2
#define FA_PASS q, kPool, vPool, slotTable, tiles, out, partO, partML, hq, hkv, chunk, nSplit, scaleLog2
// attention_fa_decode_c<C>_d<D>: the decode kernel for C splits as one cluster (clusterMerge);
// sm_90+ (the sm_80 build has the kernels without the cluster shape, and they trap).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define FA_CLUSTER_DIMS(C)
#else
#define FA_CLUSTER_DIMS(C) __cluster_dims__(1, 1, C)
#endif
#define FA_DECODE_CLUSTER(D, C)                                                                                   \
  extern "C" __global__ void FA_CLUSTER_DIMS(C) __launch_bounds__(128, 2) attention_fa_decode_c##C##_d##D(FA_ARGS) { \
    flashAttention<D, 4, 1, true, 3, false, C>(FA_PASS);                                                          \
  }
#define FA_KERNELS(D)                                                                                             \
  extern "C" __global__ void __launch_bounds__(128, 2) attention_fa_prefill_d##D(FA_ARGS) {                      \
    flashAttention<D, 4, 2, false, 2>(FA_PASS);                                                                   \
  }                                                                                                              \
  extern "C" __global__ void __launch_bounds__(128, 2) attention_fa_decode_d##D(FA_ARGS) {                       \
    flashAttention<D, 4, 1, true, 3>(FA_PASS);                                                                    \
  }                                                                                                              \
  FA_DECODE_CLUSTER(D, 2)                                                                                        \
  FA_DECODE_CLUSTER(D, 4)                                                                                        \
  FA_DECODE_CLUSTER(D, 8)                                                                                        \
  static_assert(faSmemBytes<D, 4, 2, 2>() == 96 * D * 8 && faSmemBytes<D, 4, 1, 3>() == 112 * D * 8, "smem");    \
  static_assert(64 * D * 4 + 64 * 8 <= faSmemBytes<D, 4, 1, 3>(), "the cluster merge's partials fit the decode smem");

FA_KERNELS(16)
FA_KERNELS(32)
FA_KERNELS(64)
FA_KERNELS(128)

// A prefill variant (TSGLANG_FA_PREFILL=w8): 8 warps × 1 m-tile (128 rows, 16 per warp), fewer
// registers (≤ 128: 16 warps per SM) for twice the shared-memory reads per FLOP. Same 96 KB.
extern "C" __global__ void __launch_bounds__(256, 2) attention_fa_prefill_w8_d128(FA_ARGS) {
  flashAttention<128, 8, 1, false, 2>(FA_PASS);
}
static_assert(faSmemBytes<128, 8, 1, 2>() == 96 * 128 * 8, "smem");

// The same on wgmma (sm_90a only, the other targets trap; the default prefill at head_dim 128 on
// sm_90): S = Q·Kᵀ from shared memory, O += P·V with P from registers. Same 96 KB, 126 registers,
// no spills. Measured (H100, 2026-11-27, same run): 8k causal 1.41 ms = 488 TFLOP/s (4-warp
// kernel 1.99 ms; with only Q·Kᵀ on wgmma 1.82 ms), 2k 0.125 ms (0.162). Next toward cuDNN's
// 620: warp specialisation (a producer warp feeding K/V by TMA) so softmax overlaps the MMAs.
extern "C" __global__ void __launch_bounds__(256, 2) attention_fa_prefill_wg_d128(FA_ARGS) {
  flashAttention<128, 8, 1, false, 2, true>(FA_PASS);
}

// Merges split-KV partials: out = Σ w_s·O_s / Σ w_s·l_s with w_s = 2^(m_s − max m). Block per
// (row, head), threads over the head dim. Memory-bound and small (n·Hq·splits·(D + 2) floats).
extern "C" __global__ void attention_fa_combine_bf16(const float* __restrict__ partO, const float2* __restrict__ partML,
                                                     bf16* __restrict__ out, int hq, int nSplit, int dim) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const size_t rh = (size_t)blockIdx.x * hq + blockIdx.y;
  const float2* ml = partML + rh * nSplit;
  float mMax = -CUDART_INF_F;
  for (int s = 0; s < nSplit; s++) mMax = fmaxf(mMax, ml[s].x);
  float lSum = 0.f;
  for (int s = 0; s < nSplit; s++) lSum += ml[s].x == -CUDART_INF_F ? 0.f : ex2(ml[s].x - mMax) * ml[s].y;
  const float inv = 1.f / lSum;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < nSplit; s++) {
      if (ml[s].x == -CUDART_INF_F) continue;
      acc += ex2(ml[s].x - mMax) * partO[(rh * nSplit + s) * dim + d];
    }
    out[rh * dim + d] = fromF<bf16>(acc * inv);
  }
}
