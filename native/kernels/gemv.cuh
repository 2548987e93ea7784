// The small-batch GEMV core shared by gemv.cu and moe_decode.cu: a block of 8 warps computes
// RB output rows (RB = 8, 4, 2 or 1, chosen by the host so the grid fills the GPU); the 8/RB
// warps of a row split its K range, each lane streams 16-byte weight vectors (GEMV_UNROLL in
// flight, L1 bypassed, 256-byte L2 prefetch) and multiplies each by up to 8 activation rows
// (16-byte loads through L1, where they stay: every warp of the block reads the same rows).
// Weights are [rows, in] row-major ("[out, in]"), activations [tokens, in], in % (16 / sizeof T) == 0,
// every row start 16-byte aligned (the host checks and otherwise uses cuBLASLt).
//
// Determinism: a token's sum is accumulated in an order fixed by (in, RB) alone — lane-strided
// vectors in increasing order, elements in order, xor-butterfly over lanes, K parts in order —
// never by how many tokens share the pass, so a row gives bit-identical results whatever the
// batch (CUDA-graph padding relies on it).
//
// Roofline (bf16, d = 5120): a weight element is loaded once and used by NT ≤ 8 tokens; per
// 16-byte vector that is 8·NT FMAs plus 8·NT bf16→fp32 shifts for the activations (INT pipe).
// At H100's ~13 B/clk/SM of DRAM bandwidth (0.8 vectors/clk/SM) NT = 8 needs ~51 FMA/clk of 128
// and ~51 INT ops/clk of 64 and ~100 B/clk of L1 for the activations: still memory-bound, with
// little slack, so the host hands larger batches to cuBLASLt (tensor cores).
#pragma once
#include "common.cuh"

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int GEMV_MAX_NT = 8;  // tokens per pass over the weights
constexpr int GEMV_UNROLL = 4;  // independent 16-byte weight loads per lane and row

// K(NT, TN, T) for every pass width and storage type but the one-token bf16 one — the decode
// kernel each family writes out by hand (its weights loaded before the PDL wait: WeightHead).
#define GEMV_WIDTHS_BUT_DECODE(K) \
  K(2, bf16, bf16)                \
  K(4, bf16, bf16)                \
  K(8, bf16, bf16)                \
  K(1, f32, float)                \
  K(2, f32, float)                \
  K(4, f32, float)                \
  K(8, f32, float)

template <typename T> struct Vec;  // elements per 16 bytes
template <> struct Vec<bf16> { static constexpr int N = 8; };
template <> struct Vec<float> { static constexpr int N = 4; };

// Weights are read once: bypass L1 (keeps it for the activations) and prefetch 256 B into L2.
// volatile: the compiler sees no memory access in this asm and could otherwise move it above
// gridDependencyWait() (the PTX is the same either way today).
__device__ __forceinline__ uint4 ldWeight(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// Activations: read-only for the kernel's lifetime, shared by the block's warps through L1 — or,
// FRESH, written by a kernel that may still be running (moe_down's early shared pass): from L2.
template <bool FRESH = false>
__device__ __forceinline__ uint4 ldAct(const uint4* p) {
  if constexpr (FRESH) return __ldcg(p);
  else return __ldg(p);
}

// One activation vector of token t as fp32. SCALED: X_t = round_T(x_t · xs[t]), the MoE decode's
// gathered expert input computed on the fly, rounded as a gather kernel would store it.
template <typename T, int NT, bool SCALED, bool FRESH = false>
__device__ __forceinline__ void loadAct(const uint4* p, const float (&xs)[NT], int t, float (&xf)[Vec<T>::N]) {
  unpack(ldAct<FRESH>(p), xf);
  if (SCALED) {
#pragma unroll
    for (int i = 0; i < Vec<T>::N; i++) xf[i] = toF(fromF<T>(xf[i] * xs[t]));
  }
}

// A batch-1 warp's first unrolled step of its rows' weight vectors, loaded before the kernel's PDL
// wait: weights are never written by a kernel, so a block whose predecessor is latency-bound (the
// all-reduce, attention) has them in registers when its input is ready — one DRAM round trip off
// the chain. Lanes past the row's range hold zeros, as the predicated loads give. Measured (4 ×
// H200, Scout tp-4 batch 1, 2026-11-27): q/k/v and o_proj 3.508 → 3.461 ms a step, with the MoE
// router rows 3.486 → 3.367. Behind a bandwidth-bound kernel it was slower (its loads take DRAM
// from the running kernel: the seventh pass's every-GEMV version), and a second step's registers
// cost occupancy or spills (o_proj 3.330 → 3.346 ms), so it is one step, behind latency only.
template <int ROWS>
struct WeightHead {
  uint4 wv[ROWS][GEMV_UNROLL];
};

// One unrolled step of laneDot: the vectors v + 32u (with PRED_TAIL only those < v1) of wv.
template <typename T, int ROWS, int NT, bool SCALED, bool PRED_TAIL, bool FRESH>
__device__ __forceinline__ void stepDot(const uint4 (&wv)[ROWS][GEMV_UNROLL], const uint4* xb, const int (&xo)[NT], const float (&xs)[NT],
                                        int v, int v1, float (&acc)[ROWS][NT]) {
  constexpr int E = Vec<T>::N;
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; u++) {
    if (PRED_TAIL && v + 32 * u >= v1) break;
    float wf[ROWS][E];
#pragma unroll
    for (int r = 0; r < ROWS; r++) unpack(wv[r][u], wf[r]);
#pragma unroll
    for (int t = 0; t < NT; t++) {
      float xf[E];
      loadAct<T, NT, SCALED, FRESH>(xb + xo[t] + v + 32 * u, xs, t, xf);
#pragma unroll
      for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int i = 0; i < E; i++) acc[r][t] = fmaf(wf[r][i], xf[i], acc[r][t]);
    }
  }
}

// acc[r][t] += Σ W_r[v]·X_t[v] over this lane's vectors v = v0 + lane + 32·i < v1, in increasing
// v (the same order however the loop is cut). x rows are xb + xo[t] (in 16-byte vectors).
// A warp's pass is a chain of dependent DRAM round trips (loads, then the FMAs, then the next
// loads); at batch 1 a lane has only 2–20 vectors of a row, so the count of round trips sets the
// time: there every step loads up to GEMV_UNROLL vectors per row at once, the last one
// predicated, where a one-vector tail loop cost a round trip per leftover vector. Only for one
// weight row per warp in the batch-1 kernels (PRED_TAIL = MAXNT == 1 and ROWS == 1): elsewhere
// it cost registers, hence occupancy — the routed MoE gate_up (two rows) went from 62 to 74
// registers, three blocks a SM instead of four: 27 → 33 µs a layer at tp 4 on an H200.
template <typename T, int ROWS, int NT, bool SCALED, bool PRED_TAIL, bool FRESH = false>
__device__ __forceinline__ void laneDot(const uint4* const (&w)[ROWS], const uint4* xb, const int (&xo)[NT], const float (&xs)[NT],
                                        int v0, int v1, int lane, float (&acc)[ROWS][NT], const WeightHead<ROWS>* head = nullptr) {
  static_assert(!PRED_TAIL || NT == 1, "the predicated tail is the batch-1 path");
  constexpr int E = Vec<T>::N;
  int v = v0 + lane;
  // The first step's vectors from `head` where the kernel loaded them before its PDL wait
  // (loadWeightHead: one row, predicated).
  if (PRED_TAIL && head != nullptr && v < v1) {
    stepDot<T, ROWS, NT, SCALED, PRED_TAIL, FRESH>(head->wv, xb, xo, xs, v, v1, acc);
    v += 32 * GEMV_UNROLL;
  }
  // Whole steps; with PRED_TAIL also the last, partial one (its loads predicated).
  for (; PRED_TAIL ? v < v1 : v + 32 * (GEMV_UNROLL - 1) < v1; v += 32 * GEMV_UNROLL) {
    uint4 wv[ROWS][GEMV_UNROLL];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int u = 0; u < GEMV_UNROLL; u++) wv[r][u] = !PRED_TAIL || v + 32 * u < v1 ? ldWeight(w[r] + v + 32 * u) : make_uint4(0, 0, 0, 0);
    stepDot<T, ROWS, NT, SCALED, PRED_TAIL, FRESH>(wv, xb, xo, xs, v, v1, acc);
  }
  if constexpr (!PRED_TAIL) {  // the leftover vectors, one at a time
    for (; v < v1; v += 32) {
      float wf[ROWS][E];
#pragma unroll
      for (int r = 0; r < ROWS; r++) unpack(ldWeight(w[r] + v), wf[r]);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        float xf[E];
        loadAct<T, NT, SCALED, FRESH>(xb + xo[t] + v, xs, t, xf);
#pragma unroll
        for (int r = 0; r < ROWS; r++)
#pragma unroll
          for (int i = 0; i < E; i++) acc[r][t] = fmaf(wf[r][i], xf[i], acc[r][t]);
      }
    }
  }
}

// Where this thread sits in the block's RB rows × (8/RB) K parts.
struct GemvSlot {
  int warp, lane, rb, rib, part, parts;
  __device__ GemvSlot(int rowsPerBlock) {
    warp = threadIdx.x >> 5;
    lane = threadIdx.x & 31;
    rb = rowsPerBlock;
    rib = warp % rb;
    part = warp / rb;
    parts = GEMV_WARPS / rb;
  }
  // This warp's vector range [v0, v1) of a row of `vectors` 16-byte vectors.
  __device__ void range(int vectors, int& v0, int& v1) const {
    const int per = (vectors + parts - 1) / parts;
    v0 = min(vectors, part * per);
    v1 = min(vectors, v0 + per);
  }
};

// One pass: NT tokens (the first `cnt` real; the rest repeat the last) of activation rows
// x + (tok0 + t)·in against ROWS weight rows per warp (wRow[r], or none when `active` is false).
// With `gather` the rows are x + rowOf[tok0 + t]·in scaled by scaleOf[rowOf[tok0 + t]] (SCALED).
// Then epi(t, sums) runs once per (row, real token), in lane t of the warp with part 0.
// Every thread of the block must call it (it synchronises).
struct GemvGather {
  const int* rowOf;
  const float* scaleOf;
};

template <typename T, int ROWS, int NT, bool SCALED, bool PRED_TAIL, bool FRESH = false, typename Epi>
__device__ __forceinline__ void gemvPass(const GemvSlot& s, const T* const (&wRow)[ROWS], bool active, const T* x,
                                         int in, int tok0, int cnt, GemvGather gather, Epi epi, const WeightHead<ROWS>* head = nullptr) {
  __shared__ float red[GEMV_WARPS][2][GEMV_MAX_NT];
  const int vectors = in / Vec<T>::N;
  float acc[ROWS][NT];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int t = 0; t < NT; t++) acc[r][t] = 0.f;
  if (active) {
    int v0, v1;
    s.range(vectors, v0, v1);
    const uint4* wp[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) wp[r] = reinterpret_cast<const uint4*>(wRow[r]);
    const uint4* xb = reinterpret_cast<const uint4*>(SCALED ? x : x + (size_t)tok0 * in);
    int xo[NT];
    float xs[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const int row = SCALED ? gather.rowOf[tok0 + min(t, cnt - 1)] : min(t, cnt - 1);
      xo[t] = row * vectors;
      xs[t] = SCALED ? gather.scaleOf[row] : 1.f;
    }
    laneDot<T, ROWS, NT, SCALED, PRED_TAIL, FRESH>(wp, xb, xo, xs, v0, v1, s.lane, acc, head);
  }
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int t = 0; t < NT; t++) acc[r][t] = warpSum(acc[r][t]);
  if (s.parts == 1) {
    if (active && s.lane < cnt) {
      float out[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; r++) {
        out[r] = 0.f;
#pragma unroll
        for (int t = 0; t < NT; t++)
          if (t == s.lane) out[r] = acc[r][t];
      }
      epi(s.lane, out);
    }
    return;
  }
  if (s.lane == 0) {
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
      for (int t = 0; t < NT; t++) red[s.warp][r][t] = acc[r][t];
  }
  __syncthreads();
  if (s.part == 0 && active && s.lane < cnt) {
    float out[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
      out[r] = 0.f;
      for (int p = 0; p < s.parts; p++) out[r] += red[p * s.rb + s.rib][r][s.lane];
    }
    epi(s.lane, out);
  }
  __syncthreads();  // red[] is reused by the next pass
}

// All `cnt` tokens in passes of up to MAXNT (each pass sized to its tokens, so no FMA is wasted
// on padding); epi gets the token index relative to tok0. Block-uniform cnt. MAXNT (1, 2, 4 or
// 8) is the kernel variant the host picked from the batch size: small batches get the small
// register footprint (more warps per SM, more loads in flight).
template <typename T, int ROWS, int MAXNT, bool SCALED = false, bool FRESH = false, typename Epi>
__device__ __forceinline__ void gemvTokens(const GemvSlot& s, const T* const (&wRow)[ROWS], bool active, const T* x,
                                           int in, int tok0, int cnt, Epi epi, GemvGather gather = {nullptr, nullptr},
                                           const WeightHead<ROWS>* head = nullptr) {
  for (int c0 = 0; c0 < cnt; c0 += MAXNT) {
    const int c = min(MAXNT, cnt - c0);
    auto at = [&](int t, const float (&v)[ROWS]) { epi(c0 + t, v); };
    if (MAXNT >= 8 && c > 4) gemvPass<T, ROWS, (MAXNT >= 8 ? 8 : 1), SCALED, false, FRESH>(s, wRow, active, x, in, tok0 + c0, c, gather, at);
    else if (MAXNT >= 4 && c > 2) gemvPass<T, ROWS, (MAXNT >= 4 ? 4 : 1), SCALED, false, FRESH>(s, wRow, active, x, in, tok0 + c0, c, gather, at);
    else if (MAXNT >= 2 && c == 2) gemvPass<T, ROWS, (MAXNT >= 2 ? 2 : 1), SCALED, false, FRESH>(s, wRow, active, x, in, tok0 + c0, c, gather, at);
    else gemvPass<T, ROWS, 1, SCALED, MAXNT == 1 && ROWS == 1, FRESH>(s, wRow, active, x, in, tok0 + c0, c, gather, at, head);
  }
}

// Loads `head` for the one-token pass of gemvTokens<T, 1, 1> over row wRow: laneDot's first step,
// its loads predicated as there.
template <typename T>
__device__ __forceinline__ void loadWeightHead(const GemvSlot& s, const T* wRow, bool active, int in, WeightHead<1>& head) {
  int v0 = 0, v1 = 0;
  if (active) s.range(in / Vec<T>::N, v0, v1);
  const uint4* w = reinterpret_cast<const uint4*>(wRow);
  const int v = v0 + s.lane;
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; u++) head.wv[0][u] = v + 32 * u < v1 ? ldWeight(w + v + 32 * u) : make_uint4(0, 0, 0, 0);
}

// ---- One token, the block's weight rows staged in shared memory before the PDL wait (sm_90) ----
// q/k/v's GEMV waits behind the all-reduce, a wait on the other ranks that leaves DRAM idle. With
// the register head (WeightHead) a lane holds 4 of its 10 vectors of a row across the wait and
// fetches the rest in two DRAM round trips after it. Here thread 0 asks the copy engine for the
// block's whole slab (rb rows, 40 KB at a tp-4 rank's shapes) before the wait, so every resident
// block's bytes land while the all-reduce runs, and the input row follows by one bulk copy after
// it: the pass reads shared memory only. o_proj does the same behind fa decode, which lets it
// launch only once its own first K/V tiles are queued (staged earlier, o_proj's 13 MB went ahead
// of them: slower). Staging the first 2–3 KB of each of MoE gate_up's shared rows behind the
// second all-reduce was slower too. The sums are laneDot's, in its order
// (lane-strided vectors, elements in order, xor-butterfly, K parts in order): the same bits as
// gemvPass with the same rb.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// `bytes` from global `src` into shared `dst`, completing on mbarrier `bar` (its expected bytes raised first).
__device__ __forceinline__ void bulkToShared(void* dst, const void* src, unsigned bytes, unsigned long long* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smemAddr(dst)), "l"(src),
               "r"(bytes), "r"(smemAddr(bar))
               : "memory");
}
__device__ __forceinline__ void mbarExpect(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smemAddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarWait(unsigned long long* bar) {
  asm volatile("{\n .reg .pred done;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n @!done bra WAIT_%=;\n}" ::"r"(
                   smemAddr(bar))
               : "memory");
}
#endif

// Before the PDL wait, every thread: thread 0 readies the block's two mbarriers (weights, input)
// and queues rows [0, rows) — rowOf(r), `in` bf16 each — into `staged`.
template <typename RowOf>
__device__ __forceinline__ void stageRows(bf16* staged, unsigned long long* bars, int rows, int in, RowOf rowOf) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smemAddr(bars)) : "memory");
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smemAddr(bars + 1)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    mbarExpect(bars, (unsigned)(rows * in * 2));
    for (int r = 0; r < rows; r++) bulkToShared(staged + (size_t)r * in, rowOf(r), (unsigned)(in * 2), bars);
  }
  __syncthreads();  // the mbarriers are initialised before anyone waits on them
#endif
}

// After the wait, every thread: the input row x into shared memory behind the weights ((rb + 1)·in
// bf16 of dynamic shared memory in all: the host's stagedGemvBytes), then row
// s.rib (< rows) of the block's staged slab against it; epi(0, sums) in the warp that has part 0,
// lane 0. Like gemvPass it synchronises the block.
template <typename Epi>
__device__ __forceinline__ void gemvStaged1(const GemvSlot& s, bf16* staged, unsigned long long* bars, int rows, const bf16* x, int in, Epi epi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ float red[GEMV_WARPS];
  const int vectors = in / 8;
  const uint4* xs = reinterpret_cast<const uint4*>(staged + (size_t)rows * in);
  if (threadIdx.x == 0) {
    mbarExpect(bars + 1, (unsigned)(in * 2));
    bulkToShared(staged + (size_t)rows * in, x, (unsigned)(in * 2), bars + 1);
  }
  const bool active = s.rib < rows;
  float acc = 0.f;
  if (active) {
    int v0, v1;
    s.range(vectors, v0, v1);
    const uint4* w = reinterpret_cast<const uint4*>(staged) + (size_t)s.rib * vectors;
    mbarWait(bars + 1);
    mbarWait(bars);
    for (int v = v0 + s.lane; v < v1; v += 32) {
      float wf[8], xf[8];
      unpack(w[v], wf);
      unpack(xs[v], xf);
#pragma unroll
      for (int i = 0; i < 8; i++) acc = fmaf(wf[i], xf[i], acc);
    }
  }
  acc = warpSum(acc);
  if (s.parts == 1) {
    if (active && s.lane == 0) epi(0, {acc});
    return;
  }
  if (s.lane == 0) red[s.warp] = acc;
  __syncthreads();
  if (s.part == 0 && active && s.lane == 0) {
    float out = 0.f;
    for (int p = 0; p < s.parts; p++) out += red[p * s.rb + s.rib];
    epi(0, {out});
  }
#else
  __trap();  // the host stages only on sm_90
#endif
}
