// cuBLASLt opened at run time, with a cache of matmul plans (descriptors + chosen algorithm) per
// shape, so a step's GEMMs cost one lookup each after the first.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>

#include "cuda_api.h"
#include "driver.h"

struct MatmulArgs {
  int transA, transB;           // CUBLAS_OP_N / CUBLAS_OP_T
  int64_t m, n, k;              // column-major: D[m, n] = op(A)[m, k] · op(B)[k, n]
  CUdeviceptr a, b, d;
  int64_t lda, ldb, ldd;
  int typeAB, typeD;            // CUDA_R_16BF / CUDA_R_32F
  float alpha, beta;            // D = alpha·AB + beta·D
  CUdeviceptr workspace;
  size_t workspaceBytes;
};

struct MatmulPlan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatmulAlgo_t algo;
  cublasLtMatmulPreference_t pref;  // kept for a re-plan of this exact shape
  bool found;
  bool exact;                       // the algorithm was chosen for this n itself
};

struct BlasLt {
  cublasLtHandle_t handle = nullptr;
  cublasStatus_t (*create)(cublasLtHandle_t*);
  size_t (*getVersion)();
  cublasStatus_t (*descCreate)(cublasLtMatmulDesc_t*, int computeType, int scaleType);
  cublasStatus_t (*descDestroy)(cublasLtMatmulDesc_t);
  cublasStatus_t (*descSetAttribute)(cublasLtMatmulDesc_t, int, const void*, size_t);
  cublasStatus_t (*layoutCreate)(cublasLtMatrixLayout_t*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  cublasStatus_t (*layoutDestroy)(cublasLtMatrixLayout_t);
  cublasStatus_t (*prefCreate)(cublasLtMatmulPreference_t*);
  cublasStatus_t (*prefDestroy)(cublasLtMatmulPreference_t);
  cublasStatus_t (*prefSetAttribute)(cublasLtMatmulPreference_t, int, const void*, size_t);
  cublasStatus_t (*heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                              cublasLtMatmulHeuristicResult_t*, int*);
  cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*, cublasLtMatrixLayout_t,
                           const void*, cublasLtMatrixLayout_t, const void*, const void*, cublasLtMatrixLayout_t, void*,
                           cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*, void*, size_t, CUstream);
  const char* (*statusString)(cublasStatus_t);
  // Optional (null if absent): split-K variants of the heuristic's candidates.
  cublasStatus_t (*algoConfigSet)(cublasLtMatmulAlgo_t*, int attr, const void* buf, size_t size);
  std::unordered_map<std::string, MatmulPlan> plans;
  // Chosen algorithms per shape with n (the token count) rounded up to a bucket: a new n in a
  // known bucket (per-expert row counts of MoE prefill, new prompt lengths) skips the heuristic
  // query (~0.3 ms each on H100). TSGLANG_BLASLT_EXACT=1 plans every n on its own.
  // Never dropped (unlike `plans`): few entries, and each shape keeps one algorithm for the
  // process's life.
  std::unordered_map<std::string, std::pair<bool, cublasLtMatmulAlgo_t>> algos;
  // The autotuner's timing events (created on first use, on this thread's context).
  CUevent tuneStart = nullptr, tuneEnd = nullptr;
  // What planning a step met (matmulStats): plans made (descriptors for a new shape or n, ~4 µs of
  // host time each), algorithm choices timed on the GPU (each a few ms: a new bucket, or a new n
  // its bucket's algorithm refused), and choices made for an exact n. Benchmarks read them to
  // tell planning from kernels.
  uint64_t plansMade = 0, choicesTimed = 0, exactChoices = 0;
};

/** Opens the first of `paths` that loads; "" on success, else why not. */
std::string loadBlasLt(const std::string* paths, int count, BlasLt& lt, std::string& loadedFrom);

/**
 * Runs D = alpha·op(A)·op(B) + beta·D. Returns false (err empty) when cuBLASLt has no algorithm for
 * it. A bucket planned with `timer` (the driver; null while the stream is being captured) times
 * the heuristic's candidates on these operands and keeps the fastest (blaslt.cc, chooseAlgo);
 * without it, the heuristic's first choice. run = false plans (descriptors, the bucket's algorithm)
 * and returns without running: a warm-up's way to make the ~4 µs host cost of a new n's plan early.
 */
bool blasLtMatmul(BlasLt& lt, const MatmulArgs& a, CUstream stream, const Driver* timer, std::string& err, bool run = true);

/** The n whose algorithm serves an n (blaslt.cc's buckets): warm-ups plan each bucket once. */
int64_t blasLtBucket(int64_t n);
