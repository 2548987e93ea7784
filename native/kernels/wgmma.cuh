// Hopper's asynchronous warpgroup MMA (wgmma, sm_90a): the descriptors of 128-byte-swizzled
// tiles in shared memory (rows of 64 bf16 = 128 B, 8-row atoms of 1024 B, chunk c of row r at
// (c ^ r % 8)·16; K-major, and N-major for a B stored [K][N]), the m64n64k16 MMA from shared
// memory, the m64n128k16 MMA with A from registers, and their fences. Only compiled for sm_90a
// (__CUDA_ARCH_FEAT_SM90_ALL); the host launches these kernels on compute capability 9.0.
// (From the grouped-GEMM experiment 11bf053, where these descriptors and the accumulator layout
// below were checked on an H100.)
#pragma once
#include <stdint.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TSGLANG_WGMMA 1

// Descriptor of a K-major, 128-byte-swizzled tile at shared address `addr` (1024-byte aligned
// atom rows; advancing by 32 B steps k by 16 inside the 128-byte row).
__device__ __forceinline__ uint64_t wgmmaDesc(uint32_t addr) {
  uint64_t d = (uint64_t)((addr & 0x3FFFF) >> 4);  // start address
  d |= (uint64_t)1 << 16;                          // leading byte offset: unused with 128-B swizzle, K-major
  d |= (uint64_t)(1024 >> 4) << 32;                // stride byte offset: one 8-row atom
  d |= (uint64_t)1 << 62;                          // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins the accumulators around an asynchronous MMA: the compiler may not move their reads or
// writes across this point (the MMA writes them after it is issued, until wgmmaWait).
template <int N>
__device__ __forceinline__ void wgmmaFenceOperands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
// Descriptor of an N-major (MN-major), 128-byte-swizzled B tile at `addr`: rows along K of 128 B
// (64 bf16 of N), 8-row atoms of 1024 B (the stride between 8-row groups along K), and the next 64
// columns of N `panelBytes` further on (the leading byte offset of MN-major swizzled layouts).
// (Checked on an H100: the attention tests fail with the two offsets swapped.)
__device__ __forceinline__ uint64_t wgmmaDescMN(uint32_t addr, uint32_t panelBytes) {
  uint64_t d = (uint64_t)((addr & 0x3FFFF) >> 4);
  d |= (uint64_t)((panelBytes >> 4) & 0x3FFF) << 16;
  d |= (uint64_t)(1024 >> 4) << 32;
  d |= (uint64_t)1 << 62;
  return d;
}

// cp.async writes shared memory through the generic proxy; wgmma reads it through the async one.
__device__ __forceinline__ void fenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d += A·B for one warpgroup: A 64×16 (descriptor a, K-major), B 16×N (descriptor b, K-major),
// fp32 accumulators, N/2 per thread. d[4j + q] holds (m = 16·warp + lane/4 + 8·(q / 2),
// n = 8j + 2·(lane % 4) + q % 2). One specialisation per N the kernels use (the operand lists are
// written out: inline asm takes no arrays).
template <int N>
__device__ __forceinline__ void wgmma64xN(float (&d)[N / 2], uint64_t a, uint64_t b);

template <>
__device__ __forceinline__ void wgmma64xN<64>(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(1));
}

// d += A·B with A (64×16, bf16) from registers and B (16×128) from shared memory N-major (imm-trans-b
// = 1: rows of B are 128-byte runs along N), fp32 accumulators in wgmma64xN's layout (64 per thread).
// A's registers are the m16n8k16 A fragment of mma.sync per warp (rows 16·warp + lane/4 (+8),
// columns 2·(lane % 4) (+1, +8, +9)): what an accumulator tile turns into after packing to bf16.
__device__ __forceinline__ void wgmma64x128RS(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

#endif
