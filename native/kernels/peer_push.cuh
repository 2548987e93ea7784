// The pushed all-reduce of batch-1 decode under tensor parallelism: the row-parallel GEMV that
// produces a rank's partial sum (o_proj, the MoE or MLP down projection) stores each finished
// block of rows straight into every rank's inbox over NVLink, and the all-reduce kernel that
// follows (allreduce.cu: allreduce_pushed_add_rms_norm_bf16) only polls its own, local inbox.
// The pulled all-reduce's staging copy, flag round trip and remote-read round trip are gone from
// the step's critical path; what is left is one NVLink write, overlapped with the producer's tail.
//
// Units are NCCL's low-latency layout: 16 bytes = {2 bf16, epoch, 2 bf16, epoch}, written by one
// vector store, so a reader that sees both flags equal to the call's epoch has both 8-byte halves
// (each 8-byte half lands whole). No fence, no counter, nothing to reset: epochs only grow, and
// a slot's stale flags are from an older epoch of the same parity.
//
// An inbox is 2 halves (epoch parity) × AR_MAX_RANKS sender slots × PUSH_SLOT_UNITS units. Call e
// writes half e & 1; a sender reaches call e + 2 only after its call e + 1 saw every rank's part
// of e + 1, which each rank pushed after its consumer of call e had finished reading half e & 1.
// The epoch is allreduce.cu's: calls this rank completed (the signal buffer's SIG_EPOCH) + 1, read
// by producer and consumer alike, advanced by the consumer's end like any other call.
//
// Roofline: a rank writes d·4 bytes into each of the R inboxes (the units carry their flags:
// twice the bf16 data) — Scout's 5120 wide row is 20 KB a peer, ~0.1 µs at NVLink rates — and the
// consumer reads R·d·4 bytes from its own memory. So a call is latency: one NVLink write, issued
// as each producer block finishes, against the pulled kernel's flag round trip plus remote read
// round trip. Measured (2026-11-27, H200s): o_proj [5120 × 1280] + all-reduce 8.6–9.8 µs pulled,
// 7.1–8.1 pushed (2 and 4 ranks); a tp-4 decode step 3.72 → 3.49 ms with the other changes of that pass.
#pragma once
#include "common.cuh"

constexpr int AR_MAX_RANKS = 8;
constexpr int SIG_EPOCH = 0;                       // signal word: calls this rank has completed
constexpr int PUSH_MAX_D = 5120;                   // row width the consumer takes (8 elements a thread, ≤ 640 threads)
constexpr int PUSH_SLOT_UNITS = PUSH_MAX_D / 4;    // peer_allreduce.ts: INBOX_BYTES

// What a producer kernel needs (one __grid_constant__ parameter; peer_allreduce.ts pushArgs).
struct PushTarget {
  uint4* inbox[AR_MAX_RANKS];              // every rank's inbox, in rank order
  unsigned long long* signal;              // this rank's signal buffer
  int rank, nranks;
};

// The epoch of the call this kernel is part of (flags hold its low 32 bits, compared for equality).
__device__ __forceinline__ unsigned long long pushEpoch(const unsigned long long* signal) {
  return *reinterpret_cast<const volatile unsigned long long*>(signal + SIG_EPOCH) + 1;
}

__device__ __forceinline__ size_t inboxUnit(unsigned epoch, int sender, size_t unit) {
  return ((size_t)(epoch & 1) * AR_MAX_RANKS + sender) * PUSH_SLOT_UNITS + unit;
}

// A block's rows [row0, row0 + rows) (rows % 4 == 0, row0 % 4 == 0), their bf16 bits left in
// shared memory `bits` by the block's epilogue before a __syncthreads, to every rank's inbox: one
// thread per (unit, rank), 4 rows a unit. epoch: pushEpoch, read by those threads early on.
constexpr int PUSH_MAX_ROWS = 8;  // rows a producer block holds (the GEMVs' rb)

__device__ __forceinline__ void pushRows(const PushTarget& p, unsigned epoch, const unsigned short* bits, int row0, int rows) {
  const int units = rows / 4;
  const int t = threadIdx.x;
  if (t >= units * p.nranks) return;
  const int j = t % units, k = t / units;
  const unsigned lo = bits[4 * j] | (unsigned)bits[4 * j + 1] << 16, hi = bits[4 * j + 2] | (unsigned)bits[4 * j + 3] << 16;
  uint4* dst = p.inbox[k] + inboxUnit(epoch, p.rank, row0 / 4 + j);
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(lo), "r"(epoch), "r"(hi), "r"(epoch) : "memory");
}
