// One-shot all-reduce over peer memory for tensor parallelism's small messages (the [tokens, d]
// activations after o_proj and the MLP/MoE down projections: 97 per Scout step). Ranks are
// threads of one process with peer access between every pair of GPUs (NVLink), so a kernel reads
// and writes the other ranks' device memory through plain pointers.
//
// Per call, every block b of every rank:
//   1. copies its slice of x into this rank's staging buffer (half e & 1 of it, e = the call's
//      epoch), so peers read a buffer whose address they know;
//   2. meets block b of every other rank: stores e into each rank's flag slot [b][me] (release,
//      system scope) and waits until its own slots [b][k] reach e (acquire). Epochs only grow,
//      so nothing is ever reset and a replayed CUDA graph keeps working;
//   3. sums the slice of all ranks' staging buffers in rank order, in fp32, and writes x: every
//      rank computes the same additions in the same order, so all ranks get identical bytes.
// The epoch lives in this rank's signal buffer and is advanced by the call's last block, so it is
// device state, not a launch argument a graph would freeze. Every rank must launch the same
// sequence of calls with the same sizes (the grid, hence each block's slice, follows from n).
//
// Why one barrier is enough: call e writes staging half e & 1, last read by the peers in call
// e − 2. This rank reaches call e only after its call e − 1 passed its barrier, i.e. after every
// peer had started call e − 1, so every peer's call e − 2 (on the same stream) had finished.
//
// A rank whose peers never arrive does not hang silently: after `timeoutNs` it prints which call
// and peer it waited for and traps (the context is then lost, which ends the process's GPU work).
//
// Roofline: each rank stages S bytes locally and reads (R − 1)·S over NVLink (plus S locally);
// Scout's 10 KB batch-1 message is 30 KB of NVLink reads at tp 4 (~0.1 µs at ~350 GB/s), so a
// call is its latency: one flag round trip and one remote read round trip, each ~1–2 µs, against
// NCCL's ~10–30 µs small-message latency. One-shot reads grow as (R − 1)·S while a ring moves
// 2·(R − 1)/R·S, so the host side keeps it to messages of ≤ 1 MiB (≤ 4 MiB of reads per rank:
// about 10 µs over NVLink); larger ones go to NCCL.
#include <stdio.h>

#include <type_traits>

#include "norm.cuh"
#include "peer_push.cuh"

constexpr int AR_MAX_BLOCKS = 32;  // peer_allreduce.ts: MAX_BLOCKS
// The signal buffer, in 64-bit words (peer_allreduce.ts: SIGNAL_WORDS); SIG_EPOCH (word 0, calls
// this rank has completed) is in peer_push.cuh.
constexpr int SIG_ARRIVED = 1;  // blocks of the current call that are done; local
constexpr int SIG_FLAGS = 16;   // [AR_MAX_BLOCKS][AR_MAX_RANKS]: the latest call block b of rank k reached

// Every rank's staging buffer (2 halves of `capacity` bytes) and signal buffer, in rank order.
struct Peers {
  const uint4* data[AR_MAX_RANKS];
  unsigned long long* signal[AR_MAX_RANKS];
};

__device__ __forceinline__ void storeRelease(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ unsigned long long loadAcquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// Waits until *flag ≥ epoch; traps with a message after timeoutNs.
__device__ void waitFor(const unsigned long long* flag, unsigned long long epoch, unsigned long long timeoutNs, int rank, int peer) {
  if (loadAcquire(flag) >= epoch) return;
  const unsigned long long start = globalTimerNs();
  for (unsigned spins = 1;; spins++) {
    const unsigned long long seen = loadAcquire(flag);
    if (seen >= epoch) return;
    if ((spins & 1023u) == 0 && globalTimerNs() - start > timeoutNs) {
      printf("tsglang allreduce: rank %d (block %d) waited %.1f s for rank %d at call %llu (it reached call %llu): "
             "the ranks launched different all-reduce sequences, or a rank stopped; trapping\n",
             rank, (int)blockIdx.x, (double)timeoutNs * 1e-9, peer, epoch, seen);
      __trap();
    }
  }
}

// f(std::integral_constant<int, R>{}) with R = nranks (2..AR_MAX_RANKS; 1 for anything else): a
// compile-time rank count keeps every rank's 16 bytes in registers.
template <typename F>
__device__ __forceinline__ void withRanks(int nranks, F&& f) {
  switch (nranks) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: f(std::integral_constant<int, 1>{});
  }
}

// 16 bytes of storage as fp32 lanes, and back (bf16: 8 lanes, fp32: 4).
template <typename T> struct Lanes;
template <> struct Lanes<float> {
  static constexpr int N = 4;
  static __device__ __forceinline__ void load(const uint4& v, float* f) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
  static __device__ __forceinline__ void add(const uint4& v, float* f) {
    f[0] += __uint_as_float(v.x);
    f[1] += __uint_as_float(v.y);
    f[2] += __uint_as_float(v.z);
    f[3] += __uint_as_float(v.w);
  }
};
template <> struct Lanes<bf16> {
  static constexpr int N = 8;
  static __device__ __forceinline__ void load(const uint4& v, float* f) {
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[2 * i] = __uint_as_float(w[i] << 16);  // the lower address holds the first element
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  static __device__ __forceinline__ void add(const uint4& v, float* f) {
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[2 * i] += __uint_as_float(w[i] << 16);
      f[2 * i + 1] += __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};

// x's units = the sum of every rank's staged units, in rank order, in fp32.
template <typename T, int R>
__device__ __forceinline__ void reduceUnits(const Peers& p, T* __restrict__ x, unsigned long long n, size_t half, size_t units,
                                            bool aligned, size_t first, size_t stride) {
  constexpr int V = Lanes<T>::N;
  for (size_t u = first; u < units; u += stride) {
    uint4 v[R];
#pragma unroll
    for (int k = 0; k < R; k++) v[k] = __ldcg(p.data[k] + half + u);  // all loads in flight before the sums
    float acc[V];
    Lanes<T>::load(v[0], acc);
#pragma unroll
    for (int k = 1; k < R; k++) Lanes<T>::add(v[k], acc);  // rank order: the same rounding on every rank
    const size_t i = u * V;
    if (aligned && i + V <= n) {
      alignas(16) T out[V];
#pragma unroll
      for (int l = 0; l < V; l++) out[l] = fromF<T>(acc[l]);
      *reinterpret_cast<uint4*>(x + i) = *reinterpret_cast<const uint4*>(out);
    } else {
#pragma unroll
      for (int l = 0; l < V; l++)
        if (i + l < n) x[i + l] = fromF<T>(acc[l]);
    }
  }
}

// A call's epoch and staging half, read once per block from this rank's signal buffer.
struct Call {
  unsigned long long epoch;
  size_t half;  // in 16-byte units
};

__device__ Call beginCall(const Peers& p, unsigned long long capacity, int rank, int nranks) {
  if (gridDim.x > AR_MAX_BLOCKS || nranks > AR_MAX_RANKS) __trap();  // the host never launches these
  __shared__ unsigned long long callEpoch;
  // The previous call's last block wrote the epoch before that kernel ended: a plain read sees it.
  if (threadIdx.x == 0) callEpoch = *reinterpret_cast<volatile unsigned long long*>(p.signal[rank] + SIG_EPOCH) + 1;
  __syncthreads();
  const unsigned long long epoch = callEpoch;
  return {epoch, (epoch & 1) * (capacity / sizeof(uint4))};
}

// Barrier with block b of every rank (this one included: its own slot is then set too), after
// this block's staging stores and before its reads of the peers' buffers.
__device__ void meetPeers(const Peers& p, unsigned long long epoch, unsigned long long timeoutNs, int rank, int nranks) {
  __syncthreads();  // the block's staging stores come before the release below
  if ((int)threadIdx.x < nranks) {
    const int k = threadIdx.x;
    storeRelease(p.signal[k] + SIG_FLAGS + blockIdx.x * AR_MAX_RANKS + rank, epoch);
    waitFor(p.signal[rank] + SIG_FLAGS + blockIdx.x * AR_MAX_RANKS + k, epoch, timeoutNs, rank, k);
  }
  __syncthreads();  // the acquires above come before every thread's reads of the peers' buffers
}

// The last block to finish advances the epoch for the next call (the next kernel on this
// stream waits for this one to end before its first access, so it sees the store).
__device__ void endCall(unsigned long long* mySignal, unsigned long long epoch) {
  __syncthreads();
  if (gridDim.x == 1) {  // alone (batch-1 decode's fused call): nothing to count, no atomic round trip
    if (threadIdx.x == 0) mySignal[SIG_EPOCH] = epoch;
    return;
  }
  if (threadIdx.x == 0) {
    __threadfence();  // this block's epoch read is done before it counts itself
    if (atomicAdd(mySignal + SIG_ARRIVED, 1ull) == gridDim.x - 1) {
      __threadfence();
      mySignal[SIG_ARRIVED] = 0;
      mySignal[SIG_EPOCH] = epoch;
    }
  }
}

template <typename T>
__device__ void allReduce(const Peers& p, T* __restrict__ x, unsigned long long n, unsigned long long capacity,
                          unsigned long long timeoutNs, int rank, int nranks) {
  constexpr int V = Lanes<T>::N;
  const Call call = beginCall(p, capacity, rank, nranks);
  uint4* const mine = const_cast<uint4*>(p.data[rank]) + call.half;
  // x is split into 16-byte units, unit u to thread u mod (grid · block): the same units on every
  // rank whatever x's alignment (a unaligned x is copied element by element).
  const size_t units = (n + V - 1) / V;
  const bool aligned = (reinterpret_cast<uintptr_t>(x) & 15) == 0;
  const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;

  for (size_t u = first; u < units; u += stride) {
    const size_t i = u * V;
    if (aligned && i + V <= n) {
      mine[u] = *reinterpret_cast<const uint4*>(x + i);
    } else {
      alignas(16) T v[V];
#pragma unroll
      for (int l = 0; l < V; l++) v[l] = i + l < n ? x[i + l] : fromF<T>(0.f);  // zeros past the end: no stale bytes
      mine[u] = *reinterpret_cast<const uint4*>(v);
    }
  }
  meetPeers(p, call.epoch, timeoutNs, rank, nranks);
  withRanks(nranks, [&](auto r) { reduceUnits<T, decltype(r)::value>(p, x, n, call.half, units, aligned, first, stride); });
  endCall(p.signal[rank], call.epoch);
}

// The all-reduce of a layer's row-parallel output fused with the residual add and RMSNorm that
// follow it (decode: rows ≤ AR_MAX_BLOCKS of d ≤ 8 · blockDim bf16, d % 8 == 0): block b holds
// row b, a thread 8 of its elements — staged, met, summed over ranks in rank order in registers,
// rounded to bf16 as the plain all-reduce stores them — then res[b] += sum and
// out[b] = RMSNorm(res[b])·w exactly as add_rms_norm_vec. One launch instead of two per
// all-reduce (97 per Scout step at tp 4). Same protocol, staging halves and epochs as allReduce,
// so the two can follow each other in any order.
template <int R>
__device__ __forceinline__ void sumUnit(const Peers& p, size_t u, float (&acc)[8]) {
  uint4 v[R];
#pragma unroll
  for (int k = 0; k < R; k++) v[k] = __ldcg(p.data[k] + u);
  Lanes<bf16>::load(v[0], acc);
#pragma unroll
  for (int k = 1; k < R; k++) Lanes<bf16>::add(v[k], acc);
}

__device__ void allReduceAddRmsNorm(const Peers& p, const bf16* __restrict__ x, float* __restrict__ res, const bf16* __restrict__ w,
                                    bf16* __restrict__ out, int d, float eps, unsigned long long capacity,
                                    unsigned long long timeoutNs, int rank, int nranks) {
  const Call call = beginCall(p, capacity, rank, nranks);
  const size_t row = (size_t)blockIdx.x * d;
  const int c = threadIdx.x * 8;
  const size_t u = call.half + (row + c) / 8;
  if (c < d) const_cast<uint4*>(p.data[rank])[u] = *reinterpret_cast<const uint4*>(x + row + c);
  meetPeers(p, call.epoch, timeoutNs, rank, nranks);
  float xv[8] = {};
  if (c < d) {
    withRanks(nranks, [&](auto r) { sumUnit<decltype(r)::value>(p, u, xv); });
#pragma unroll
    for (int k = 0; k < 8; k++) xv[k] = __bfloat162float(__float2bfloat16_rn(xv[k]));
  }
  addRmsNormRow8(res + row, xv, w, out + row, d, eps);
  endCall(p.signal[rank], call.epoch);
}

// Out of line: the report's arguments would otherwise take registers in the polling loop.
__device__ __noinline__ void pushedTimeout(int rank, unsigned long long timeoutNs, unsigned epoch) {
  printf("tsglang allreduce: rank %d waited %.1f s for the pushed parts of call %u (thread %d): "
         "the ranks launched different all-reduce sequences, or a rank stopped; trapping\n",
         rank, (double)timeoutNs * 1e-9, epoch, (int)threadIdx.x);
  __trap();
}

// The pushed all-reduce's consumer (peer_push.cuh), fused with the add + RMSNorm like
// allReduceAddRmsNorm for one row: thread c polls units 2c and 2c + 1 of every sender slot in its
// own inbox until all their flags carry this call's epoch (reloading them all each round, so the
// slots' round trips overlap), sums in rank order in fp32 and rounds to bf16 — the same values
// and order as the pulled kernel, so the same bits — then res += it and out = RMSNorm(res)·w.
// Polls units `unit` and `unit + 1` of sender slots [K0, K1) until every flag is `epoch` (all
// loads of a round in flight together), then adds their elements to acc in slot order.
template <int K0, int K1>
__device__ __forceinline__ void sumPushedSlots(const uint4* box, unsigned epoch, size_t unit, unsigned long long timeoutNs, int rank,
                                               float (&acc)[8]) {
  unsigned lo[K1 - K0][2], hi[K1 - K0][2];
  const unsigned long long start = globalTimerNs();
  for (unsigned spins = 1;; spins++) {
    bool ready = true;
#pragma unroll
    for (int k = K0; k < K1; k++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        uint4 v;
        asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                     : "l"(box + inboxUnit(epoch, k, unit + h)));
        lo[k - K0][h] = v.x;
        hi[k - K0][h] = v.z;
        ready &= v.y == epoch && v.w == epoch;
      }
    if (ready) break;
    if ((spins & 1023u) == 0 && globalTimerNs() - start > timeoutNs) pushedTimeout(rank, timeoutNs, epoch);
  }
#pragma unroll
  for (int k = 0; k < K1 - K0; k++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const float f[4] = {__uint_as_float(lo[k][h] << 16), __uint_as_float(lo[k][h] & 0xffff0000u),
                          __uint_as_float(hi[k][h] << 16), __uint_as_float(hi[k][h] & 0xffff0000u)};
#pragma unroll
      for (int i = 0; i < 4; i++) acc[4 * h + i] = K0 + k == 0 ? f[i] : acc[4 * h + i] + f[i];
    }
}

// Every rank's elements [8c, 8c + 8) summed in rank order; up to 4 slots a round (8 ranks' 16
// loads at once would not fit the kernel's 64 registers).
template <int R>
__device__ __forceinline__ void sumPushed(const uint4* box, unsigned epoch, size_t unit, unsigned long long timeoutNs, int rank,
                                          float (&acc)[8]) {
  sumPushedSlots<0, (R < 4 ? R : 4)>(box, epoch, unit, timeoutNs, rank, acc);
  if constexpr (R > 4) sumPushedSlots<4, R>(box, epoch, unit, timeoutNs, rank, acc);
}

// The kernel's PDL prologue is in here: the residual row and norm weight are read before the wait
// (res was last written by the all-reduce before the producer, two or more launches back; w by no
// kernel), so only the pushed parts are waited for.
__device__ void pushedAddRmsNorm(const PushTarget& p, float* __restrict__ res, const bf16* __restrict__ w, bf16* __restrict__ out, int d,
                                 float eps, unsigned long long timeoutNs) {
  AddNormInputs in;
  in.load(res, w, d);
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const unsigned long long call = pushEpoch(p.signal);
  const unsigned epoch = (unsigned)call;
  const int c = threadIdx.x * 8;
  float xv[8] = {};
  if (c < d) {
    const uint4* box = p.inbox[p.rank];
    const size_t unit = c / 4;
    withRanks(p.nranks, [&](auto r) { sumPushed<decltype(r)::value>(box, epoch, unit, timeoutNs, p.rank, xv); });
#pragma unroll
    for (int k = 0; k < 8; k++) xv[k] = __bfloat162float(__float2bfloat16_rn(xv[k]));
  }
  addRmsNormRow8(res, in, xv, out, d, eps);
  endCall(p.signal, call);
}

// x[n] (in place) = the sum over ranks of every rank's x, identical on every rank.
extern "C" __global__ void __launch_bounds__(512)
    allreduce_bf16(const __grid_constant__ Peers p, bf16* x, unsigned long long n, unsigned long long capacity, unsigned long long timeoutNs, int rank, int nranks) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  allReduce(p, x, n, capacity, timeoutNs, rank, nranks);
}

extern "C" __global__ void __launch_bounds__(512)
    allreduce_f32(const __grid_constant__ Peers p, float* x, unsigned long long n, unsigned long long capacity, unsigned long long timeoutNs, int rank, int nranks) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  allReduce(p, x, n, capacity, timeoutNs, rank, nranks);
}

extern "C" __global__ void __launch_bounds__(1024)
    allreduce_add_rms_norm_bf16(const __grid_constant__ Peers p, const bf16* x, float* res, const bf16* w, bf16* out, int d, float eps,
                                unsigned long long capacity, unsigned long long timeoutNs, int rank, int nranks) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  allReduceAddRmsNorm(p, x, res, w, out, d, eps, capacity, timeoutNs, rank, nranks);
}

// At most 640 threads (PUSH_MAX_D = 5120, Llama 4's width): the bound leaves the kernel 76 registers.
// Bounded at 1024 it got 64 and spilled in its polling and sums — 4 × H100, Scout tp-4 batch 1
// (2026-11-27, same call): 3.8658–3.8669 ms a step spilled, 3.7838–3.7867 without.
extern "C" __global__ void __launch_bounds__(PUSH_MAX_D / 8)
    allreduce_pushed_add_rms_norm_bf16(const __grid_constant__ PushTarget p, float* res, const bf16* w, bf16* out, int d, float eps,
                                       unsigned long long timeoutNs) {
  pushedAddRmsNorm(p, res, w, out, d, eps, timeoutNs);
}
