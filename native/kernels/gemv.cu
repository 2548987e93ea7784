// Small-batch linear layers: y[n, out] = x[n, in] · W[out, in]ᵀ for n ≤ 8 (decode), the GEMV
// core of gemv.cuh. Grid: ceil(out / rb) blocks of 256 threads; rb rows per block (host choice).
// Kernels gemv<NT>_<T>_<O>, NT = n rounded up to 1, 2, 4 or 8.
//
// Roofline: pure weight streaming. Bytes = out·in·sizeof T (+ n·in activations, from L1/L2),
// FLOPs = 2·n·out·in, i.e. n FLOP per weight byte at bf16 — far under H100's ~260 FLOP/byte
// ridge, so the floor is out·in·2 B ÷ ~3.0 TB/s (copy bandwidth, read + write counted; a
// read-only stream can go slightly above it): Scout's lm_head (202048 × 5120, 2.07 GB) 0.69 ms,
// q_proj (5120²) 17.5 µs, k/v_proj (1024 × 5120) 3.5 µs. Target ≥ 85% of copy bandwidth for
// the large shapes; the small ones are launch/tail-bound (CUDA graphs).
// Measured (H100, bench/decode_check.ts, 2026-11-27; CUDA-event medians that include the host's
// launch): 1 row — lm_head 0.71–0.74 ms = 96–99% of copy (cuBLASLt: 80–82%), shared gate_up
// 16384 × 5120 77–81% (cuBLASLt 76–81%), down 5120 × 8192 69–73% (59–64%), q_proj 59–60% (49–55%);
// 8 rows — instruction-bound as predicted: lm_head 68–70% vs cuBLASLt's 92–96%, so the host sends
// 5–8 rows to cuBLASLt. gemv3_*: q, k and v of one input in one grid (the 1024-row k/v alone
// reach ~20–28%).
#include "gemv.cuh"
#include "peer_push.cuh"

// HEAD (one token): the kernel's PDL prologue is in here, after the first weight loads (WeightHead).
// push (one token, bf16, HEAD; gemv_push1_bf16): each block's rows also go to every rank's inbox
// (peer_push.cuh).
template <typename T, typename O, int MAXNT, bool HEAD = false, bool STAGED = false>
__device__ void gemv(const T* __restrict__ x, const T* __restrict__ w, O* __restrict__ y, int n, int in, int out, int rb,
                     const PushTarget* push = nullptr) {
  static_assert(!STAGED || (HEAD && sizeof(T) == 2), "staging happens in the one-token bf16 prologue");
  __shared__ unsigned short bits[PUSH_MAX_ROWS];
  const GemvSlot s(rb);
  const int row = blockIdx.x * rb + s.rib;
  const bool active = row < out;
  const T* wr[1] = {w + (size_t)min(row, out - 1) * in};
  WeightHead<1> head;
  __shared__ unsigned long long bars[2];
  extern __shared__ __align__(128) unsigned char gemvStage[];
  const int rows = min(rb, out - (int)blockIdx.x * rb);
  if constexpr (HEAD) {
    if constexpr (STAGED) stageRows(reinterpret_cast<bf16*>(gemvStage), bars, rows, in, [&](int r) { return w + (size_t)(blockIdx.x * rb + r) * in; });
    else loadWeightHead<T>(s, wr[0], active, in, head);
    gridDependencyWait();
    gridDependencyLaunchDependents();
  }
  // After the wait: the all-reduce before may be the launch just before (in flight during the pass).
  const unsigned epoch = push != nullptr && threadIdx.x < 32 ? (unsigned)pushEpoch(push->signal) : 0u;
  auto epi = [&](int t, const float (&v)[1]) {
    y[(size_t)t * out + row] = fromF<O>(v[0]);
    if constexpr (sizeof(O) == 2) if (push != nullptr) bits[s.rib] = __bfloat16_as_ushort(fromF<O>(v[0]));
  };
  if constexpr (STAGED) gemvStaged1(s, reinterpret_cast<bf16*>(gemvStage), bars, rows, x, in, epi);
  else gemvTokens<T, 1, MAXNT>(s, wr, active, x, in, 0, n, epi, {nullptr, nullptr}, HEAD ? &head : nullptr);
  if constexpr (sizeof(O) == 2) {
    if (push == nullptr) return;
    __syncthreads();  // the block's rows are in bits[]
    pushRows(*push, epoch, bits, blockIdx.x * rb, rb);
  }
}

// Up to three linears of one input in one launch (q, k, v): their rows concatenated, each warp's
// row looked up in the matrix it falls in; T output. Unused slots have out = 0.
// STAGED (one token, bf16, sm_90; here and in gemv): the block's rows come through shared memory
// (gemv.cuh's stageRows / gemvStaged1) instead of the register head.
template <typename T, int MAXNT, bool HEAD = false, bool STAGED = false>
__device__ void gemv3(const T* __restrict__ x, int n, int in, int rb, const T* w0, T* y0, int out0, const T* w1, T* y1,
                      int out1, const T* w2, T* y2, int out2) {
  static_assert(!STAGED || (HEAD && sizeof(T) == 2), "staging happens in the one-token bf16 prologue");
  const GemvSlot s(rb);
  int row = blockIdx.x * rb + s.rib;
  const bool active = row < out0 + out1 + out2;
  const T* w = w0;
  T* y = y0;
  int out = out0;
  if (row >= out0 + out1) {
    row -= out0 + out1;
    w = w2;
    y = y2;
    out = out2;
  } else if (row >= out0) {
    row -= out0;
    w = w1;
    y = y1;
    out = out1;
  }
  const T* wr[1] = {active ? w + (size_t)row * in : w0};
  WeightHead<1> head;
  __shared__ unsigned long long bars[2];
  extern __shared__ __align__(128) unsigned char gemvStage[];
  const int rows = min(rb, out0 + out1 + out2 - (int)blockIdx.x * rb);
  if constexpr (HEAD) {
    if constexpr (STAGED) {
      stageRows(reinterpret_cast<bf16*>(gemvStage), bars, rows, in, [&](int r) {
        const int g = blockIdx.x * rb + r;  // the row across the three matrices
        return g < out0 ? w0 + (size_t)g * in : g < out0 + out1 ? w1 + (size_t)(g - out0) * in : w2 + (size_t)(g - out0 - out1) * in;
      });
    } else {
      loadWeightHead<T>(s, wr[0], active, in, head);
    }
    gridDependencyWait();
    gridDependencyLaunchDependents();
  }
  auto epi = [&](int t, const float (&v)[1]) { y[(size_t)t * out + row] = fromF<T>(v[0]); };
  if constexpr (STAGED) gemvStaged1(s, reinterpret_cast<bf16*>(gemvStage), bars, rows, x, in, epi);
  else gemvTokens<T, 1, MAXNT>(s, wr, active, x, in, 0, n, epi, {nullptr, nullptr}, HEAD ? &head : nullptr);
}

// gemv<NT>_<T>_<O>: NT = the batch size rounded up to 1, 2, 4 or 8 (the host's choice).
#define GEMV_KERNEL(NT, TN, T, ON, O)                                                                          \
  extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                                   \
      gemv##NT##_##TN##_##ON(const T* x, const T* w, O* y, int n, int in, int out, int rb) {                  \
    gridDependencyWait();                                                                                      \
    gridDependencyLaunchDependents();                                                                          \
    gemv<T, O, NT>(x, w, y, n, in, out, rb);                                                                   \
  }
#define GEMV_KERNELS(NT)                    \
  GEMV_KERNEL(NT, bf16, bf16, bf16, bf16)   \
  GEMV_KERNEL(NT, bf16, bf16, f32, float)   \
  GEMV_KERNEL(NT, f32, float, f32, float)

GEMV_KERNELS(1)
GEMV_KERNELS(2)
GEMV_KERNELS(4)
GEMV_KERNELS(8)

#define GEMV3_KERNEL(NT, TN, T)                                                                                \
  extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                                   \
      gemv3_##NT##_##TN(const T* x, int n, int in, int rb, const T* w0, T* y0, int out0, const T* w1, T* y1,   \
                        int out1, const T* w2, T* y2, int out2) {                                               \
    gridDependencyWait();                                                                                       \
    gridDependencyLaunchDependents();                                                                           \
    gemv3<T, NT>(x, n, in, rb, w0, y0, out0, w1, y1, out1, w2, y2, out2);                                       \
  }
// One token: q, k and v, whose input comes from the all-reduce (a wait on the other ranks), load
// their first weights before the PDL wait (WeightHead) — or, gemv3_1s_bf16 (sm_90, where the grid
// stays one wave with (rb + 1)·in bf16 of shared memory a block), the block's whole slab
// into shared memory. Measured on 4 × H200 (Scout tp-4 batch 1, 2026-11-27): 3.248–3.254 →
// 3.201–3.205 ms a step.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv3_1_bf16(const bf16* x, int n, int in, int rb, const bf16* w0, bf16* y0, int out0, const bf16* w1, bf16* y1, int out1,
                 const bf16* w2, bf16* y2, int out2) {
  gemv3<bf16, 1, true>(x, n, in, rb, w0, y0, out0, w1, y1, out1, w2, y2, out2);
}
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv3_1s_bf16(const bf16* x, int n, int in, int rb, const bf16* w0, bf16* y0, int out0, const bf16* w1, bf16* y1, int out1,
                  const bf16* w2, bf16* y2, int out2) {
  gemv3<bf16, 1, true, true>(x, n, in, rb, w0, y0, out0, w1, y1, out1, w2, y2, out2);
}
GEMV_WIDTHS_BUT_DECODE(GEMV3_KERNEL)

// gemv_push1_bf16: one token's row-parallel projection under tensor parallelism whose output the
// next kernel all-reduces (o_proj, a dense MLP's down) — as gemv1_bf16_bf16 with its first weights
// loaded before the PDL wait, then each block also pushes its rb rows into every rank's inbox
// (peer_push.cuh). The host launches it only with rb % 4 == 0 and out % rb == 0, so every block
// pushes whole units.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_push1_bf16(const bf16* x, const bf16* w, bf16* y, int in, int out, int rb, const __grid_constant__ PushTarget p) {
  gemv<bf16, bf16, 1, true>(x, w, y, 1, in, out, rb, &p);
}

// gemv_push1s_bf16: the same with the block's rows staged in shared memory ((rb + 1)·in bf16 of it;
// sm_90). Behind fa decode, which lets it launch only once its first K/V tiles are queued.
// Measured on 4 × H200 (Scout tp-4 batch 1, 2026-11-27, same call): 3.1883–3.1916 ms a step with
// the register head → 3.1741–3.1780 staged; staged while fa let it launch at its wait, 3.2416.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_push1s_bf16(const bf16* x, const bf16* w, bf16* y, int in, int out, int rb, const __grid_constant__ PushTarget p) {
  gemv<bf16, bf16, 1, true, true>(x, w, y, 1, in, out, rb, &p);
}
