#include "blaslt.h"

#include <cstdlib>

#include "dl.h"

namespace {

// Largest power of two (≤ 256) dividing the address: what cuBLASLt may assume about the buffer.
uint32_t alignmentOf(CUdeviceptr p) {
  uint32_t a = 256;
  while (a > 1 && (p % a) != 0) a >>= 1;
  return a;
}

// The n the algorithm is chosen for: exact up to 16, else rounded up to a quarter of its octave
// (17–32 → 32, 33–64 → multiples of 16, 65–128 → of 16, 129–256 → of 32, …).
int64_t bucketN(int64_t n) {
  static const bool exact = [] {
    const char* e = getenv("TSGLANG_BLASLT_EXACT");
    return e != nullptr && e[0] == '1';
  }();
  if (exact || n <= 16) return n;
  int lg = 0;
  while ((int64_t{2} << lg) <= n) lg++;  // 2^lg ≤ n < 2^(lg+1)
  const int64_t g = int64_t{1} << (lg - 2 > 4 ? lg - 2 : 4);
  return (n + g - 1) / g * g;
}

std::string statusText(BlasLt& lt, const char* what, cublasStatus_t s) {
  return std::string(what) + ": " + (lt.statusString ? lt.statusString(s) : "cuBLAS status " + std::to_string(s));
}

void destroyPlan(BlasLt& lt, MatmulPlan& p) {
  if (p.desc) lt.descDestroy(p.desc);
  if (p.a) lt.layoutDestroy(p.a);
  if (p.b) lt.layoutDestroy(p.b);
  if (p.d) lt.layoutDestroy(p.d);
  if (p.pref) lt.prefDestroy(p.pref);
  p = MatmulPlan{};
}

// Descriptors, layouts (exact n) and preference for one call shape; false with `err` on failure.
bool createPlan(BlasLt& lt, const MatmulArgs& a, const uint32_t align[3], MatmulPlan& p, std::string& err) {
  auto ok = [&](const char* what, cublasStatus_t s) {
    if (s != 0 && err.empty()) err = statusText(lt, what, s);
    return s == 0;
  };
  const uint64_t ws = a.workspaceBytes;
  // Stored shapes: op N keeps [rows, cols] = [m, k]; op T stores the transpose.
  bool good = ok("cublasLtMatmulDescCreate", lt.descCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) &&
              ok("cublasLtMatmulDescSetAttribute", lt.descSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &a.transA, sizeof(int))) &&
              ok("cublasLtMatmulDescSetAttribute", lt.descSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &a.transB, sizeof(int))) &&
              ok("cublasLtMatrixLayoutCreate", lt.layoutCreate(&p.a, a.typeAB, a.transA ? a.k : a.m, a.transA ? a.m : a.k, a.lda)) &&
              ok("cublasLtMatrixLayoutCreate", lt.layoutCreate(&p.b, a.typeAB, a.transB ? a.n : a.k, a.transB ? a.k : a.n, a.ldb)) &&
              ok("cublasLtMatrixLayoutCreate", lt.layoutCreate(&p.d, a.typeD, a.m, a.n, a.ldd)) &&
              ok("cublasLtMatmulPreferenceCreate", lt.prefCreate(&p.pref)) &&
              ok("cublasLtMatmulPreferenceSetAttribute", lt.prefSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws))) &&
              ok("cublasLtMatmulPreferenceSetAttribute", lt.prefSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align[0], sizeof(uint32_t))) &&
              ok("cublasLtMatmulPreferenceSetAttribute", lt.prefSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align[1], sizeof(uint32_t))) &&
              ok("cublasLtMatmulPreferenceSetAttribute", lt.prefSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align[2], sizeof(uint32_t))) &&
              ok("cublasLtMatmulPreferenceSetAttribute", lt.prefSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align[2], sizeof(uint32_t)));
  if (!good) destroyPlan(lt, p);
  return good;
}

cublasStatus_t runAlgo(BlasLt& lt, const MatmulArgs& a, const MatmulPlan& p, const cublasLtMatmulAlgo_t& algo, CUstream stream) {
  return lt.matmul(lt.handle, p.desc, &a.alpha, reinterpret_cast<const void*>(a.a), p.a, reinterpret_cast<const void*>(a.b), p.b,
                   &a.beta, reinterpret_cast<const void*>(a.d), p.d, reinterpret_cast<void*>(a.d), p.d, &algo,
                   reinterpret_cast<void*>(a.workspace), a.workspaceBytes, stream);
}

// Candidates asked of the heuristic when the choice is timed, and split-K variants of its first
// kSplitBase (split 2, 3, 4, fp32 reduction in the workspace): an expert's down GEMM of a MoE
// prefill (M = 5120, ~128 rows) has 40 output tiles for 132 SMs, and splitting K is how one
// GEMM fills the GPU. Variants cuBLASLt rejects for a kernel fail their first run and drop out.
constexpr int kCandidates = 8;
constexpr int kSplitBase = 3;
constexpr int kSplits[] = {2, 3, 4};
constexpr int kMaxTried = kCandidates + kSplitBase * 3;
enum { CUBLASLT_ALGO_CONFIG_SPLITK_NUM = 2, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME = 3, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2 };

// The algorithm for layouts (p.a, lb, ld) — lb/ld are the bucket's n, or the call's own.
//
// Why time instead of trusting the heuristic: its first choice for the MoE expert GEMMs of a
// 1 × 2048 prefill (M = 16384, K = 5120, N ≈ 128 rows per expert) ran at 65% of that GEMM's
// weight-read floor on H100 (docs/PERF.md, CUDA prefill): for such skinny, memory-bound shapes
// its ranking is an estimate, and measuring a few candidates costs milliseconds once per bucket
// (at load, CudaBackend.prepareGemms). So with a `timer` (and beta = 0, so that reruns leave
// D as one run does) every candidate runs on the call's real operands, once untimed (it loads
// the kernel and keeps the GPU busy while the timed runs are queued) and then timed between two
// events, in two interleaved rounds; the fastest per run wins, ties to the heuristic's order.
// The choice is cached per bucket for the process's life, so one shape always runs one
// algorithm. `found` is false when cuBLASLt has none; false return = a CUDA error (`err`).
bool chooseAlgo(BlasLt& lt, const MatmulArgs& a, const MatmulPlan& p, cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t ld,
                const Driver* timer, CUstream stream, bool& found, cublasLtMatmulAlgo_t& algo, std::string& err) {
  const bool timed = timer != nullptr && a.beta == 0.0f;
  cublasLtMatmulHeuristicResult_t r[kCandidates] = {};
  int count = 0;
  cublasStatus_t s = lt.heuristic(lt.handle, p.desc, p.a, lb, ld, ld, p.pref, timed ? kCandidates : 1, r, &count);
  found = false;
  if (s != 0 || count <= 0) return true;  // no algorithm (NOT_SUPPORTED and the like): the caller falls back
  cublasLtMatmulAlgo_t cands[kMaxTried];
  int nUsable = 0;
  for (int i = 0; i < count && i < kCandidates; i++)
    if (r[i].state == 0 && r[i].workspaceSize <= a.workspaceBytes) cands[nUsable++] = r[i].algo;
  if (nUsable == 0) return true;
  found = true;
  algo = cands[0];
  if (!timed) return true;
  if (lt.algoConfigSet) {
    const int base = nUsable < kSplitBase ? nUsable : kSplitBase;
    for (int i = 0; i < base; i++)
      for (int split : kSplits) {
        cublasLtMatmulAlgo_t v = cands[i];
        const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
        if (lt.algoConfigSet(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(split)) == 0 &&
            lt.algoConfigSet(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof(scheme)) == 0)
          cands[nUsable++] = v;
      }
  }
  if (nUsable == 1) return true;
  lt.choicesTimed++;

  auto cu = [&](const char* what, CUresult res) {
    if (res != 0) err = cuErrorText(*timer, what, res);
    return res == 0;
  };
  if (!lt.tuneStart && !cu("cuEventCreate", timer->cuEventCreate(&lt.tuneStart, CU_EVENT_DEFAULT))) return false;
  if (!lt.tuneEnd && !cu("cuEventCreate", timer->cuEventCreate(&lt.tuneEnd, CU_EVENT_DEFAULT))) return false;
  float best[kMaxTried];
  bool runs[kMaxTried];
  for (int j = 0; j < nUsable; j++) best[j] = 3.0e38f, runs[j] = true;
  int reps = 1;
  for (int round = 0; round < 2; round++) {
    for (int j = 0; j < nUsable; j++) {
      if (!runs[j]) continue;
      const cublasLtMatmulAlgo_t& cand = cands[j];
      if (runAlgo(lt, a, p, cand, stream) != 0) {  // e.g. a bucket's candidate that does not take this n
        runs[j] = false;
        continue;
      }
      if (!cu("cuEventRecord", timer->cuEventRecord(lt.tuneStart, stream))) return false;
      bool ran = true;
      for (int i = 0; i < reps && ran; i++) ran = runAlgo(lt, a, p, cand, stream) == 0;
      if (!cu("cuEventRecord", timer->cuEventRecord(lt.tuneEnd, stream))) return false;
      if (!cu("cuEventSynchronize (a GEMM being timed failed)", timer->cuEventSynchronize(lt.tuneEnd))) return false;
      float ms = 0;
      if (!cu("cuEventElapsedTime", timer->cuEventElapsedTime(&ms, lt.tuneStart, lt.tuneEnd))) return false;
      if (!ran) {
        runs[j] = false;
        continue;
      }
      if (ms / reps < best[j]) best[j] = ms / reps;
    }
    // Second round: enough back-to-back runs that the fastest spends ~0.2 ms between the events
    // (small GEMMs are a few µs, near the events' resolution); large ones once.
    float fastest = 3.0e38f;
    for (int j = 0; j < nUsable; j++)
      if (runs[j] && best[j] < fastest) fastest = best[j];
    if (fastest > 1.0e38f) break;  // none ran
    reps = fastest >= 0.2f ? 1 : (fastest < 0.05f ? 4 : static_cast<int>(0.2f / fastest));
  }
  int pick = -1;
  for (int j = 0; j < nUsable; j++)
    if (runs[j] && (pick < 0 || best[j] < best[pick])) pick = j;
  // None ran on this n: keep the heuristic's first (the caller re-plans this n if it fails).
  if (pick >= 0) algo = cands[pick];
  return true;
}
}  // namespace

int64_t blasLtBucket(int64_t n) {
  return bucketN(n);
}

std::string loadBlasLt(const std::string* paths, int count, BlasLt& lt, std::string& loadedFrom) {
  std::string errors;
  loadedFrom = openFirst(paths, count, [&](void* lib) -> std::string {
    std::string missing;
    sym(lib, "cublasLtCreate", lt.create, missing);
    sym(lib, "cublasLtGetVersion", lt.getVersion, missing);
    sym(lib, "cublasLtMatmulDescCreate", lt.descCreate, missing);
    sym(lib, "cublasLtMatmulDescDestroy", lt.descDestroy, missing);
    sym(lib, "cublasLtMatmulDescSetAttribute", lt.descSetAttribute, missing);
    sym(lib, "cublasLtMatrixLayoutCreate", lt.layoutCreate, missing);
    sym(lib, "cublasLtMatrixLayoutDestroy", lt.layoutDestroy, missing);
    sym(lib, "cublasLtMatmulPreferenceCreate", lt.prefCreate, missing);
    sym(lib, "cublasLtMatmulPreferenceDestroy", lt.prefDestroy, missing);
    sym(lib, "cublasLtMatmulPreferenceSetAttribute", lt.prefSetAttribute, missing);
    sym(lib, "cublasLtMatmulAlgoGetHeuristic", lt.heuristic, missing);
    sym(lib, "cublasLtMatmulAlgoConfigSetAttribute", lt.algoConfigSet, missing, false);
    sym(lib, "cublasLtMatmul", lt.matmul, missing);
    sym(lib, "cublasLtGetStatusString", lt.statusString, missing);
    if (!missing.empty()) return "has no " + missing;
    const cublasStatus_t s = lt.create(&lt.handle);
    return s == 0 ? "" : statusText(lt, "cublasLtCreate", s);
  }, errors);
  return loadedFrom.empty() ? "cannot load cuBLASLt (libcublasLt.so.13 or .12); set TSGLANG_CUBLASLT to its path. Tried:" + errors : "";
}

bool blasLtMatmul(BlasLt& lt, const MatmulArgs& a, CUstream stream, const Driver* timer, std::string& err, bool run) {
  const uint32_t align[3] = {alignmentOf(a.a), alignmentOf(a.b), alignmentOf(a.d)};
  auto keyFor = [&](int64_t n) {
    return std::to_string(a.transA) + "," + std::to_string(a.transB) + "," + std::to_string(a.m) + "," +
           std::to_string(n) + "," + std::to_string(a.k) + "," + std::to_string(a.lda) + "," +
           std::to_string(a.ldb) + "," + std::to_string(a.ldd) + "," + std::to_string(a.typeAB) + "," +
           std::to_string(a.typeD) + "," + std::to_string(align[0]) + "," + std::to_string(align[1]) + "," +
           std::to_string(align[2]) + "," + std::to_string(a.workspaceBytes);
  };
  std::string key = keyFor(a.n);
  // An n the bucket's algorithm does not take (or a bucket with none) gets its own, chosen once
  // and kept with the buckets' (so a re-made plan of this n runs the same one).
  auto planExact = [&](MatmulPlan& p) {
    p.exact = true;
    const std::string xkey = "exact," + key;
    auto xi = lt.algos.find(xkey);
    if (xi == lt.algos.end()) {
      lt.exactChoices++;
      bool found = false;
      cublasLtMatmulAlgo_t algo{};
      if (!chooseAlgo(lt, a, p, p.b, p.d, timer, stream, found, algo, err)) return false;
      xi = lt.algos.emplace(xkey, std::make_pair(found, algo)).first;
    }
    p.found = xi->second.first;
    if (p.found) p.algo = xi->second.second;
    return true;
  };
  auto it = lt.plans.find(key);
  if (it == lt.plans.end()) {
    // Every shape is planned once; a serving process sees a bounded set of (batch, layer) shapes
    // (the warm-up plans every expert row count of a chunked prefill: 2 × 8192 by default).
    // Past 32768 the layouts go (cheap to remake); the chosen algorithms stay.
    if (lt.plans.size() > 32768) {
      for (auto& kv : lt.plans) destroyPlan(lt, kv.second);
      lt.plans.clear();
    }
    MatmulPlan p{};
    if (!createPlan(lt, a, align, p, err)) return false;
    lt.plansMade++;
    // The algorithm: the bucket's, chosen once for the bucket's n (the same layouts but for n).
    const int64_t nb = bucketN(a.n);
    p.exact = nb == a.n;
    const std::string bkey = keyFor(nb);
    auto ai = lt.algos.find(bkey);
    if (ai == lt.algos.end()) {
      cublasLtMatrixLayout_t lb = p.b, ld = p.d;
      if (nb != a.n) {
        lb = ld = nullptr;
        cublasStatus_t s = lt.layoutCreate(&lb, a.typeAB, a.transB ? nb : a.k, a.transB ? a.k : nb, a.ldb);
        if (s == 0) s = lt.layoutCreate(&ld, a.typeD, a.m, nb, a.ldd);
        if (s != 0) {
          err = statusText(lt, "cublasLtMatrixLayoutCreate", s);
          if (lb) lt.layoutDestroy(lb);
          destroyPlan(lt, p);
          return false;
        }
      }
      bool found = false;
      cublasLtMatmulAlgo_t algo{};
      const bool ok = chooseAlgo(lt, a, p, lb, ld, timer, stream, found, algo, err);
      if (nb != a.n) {
        lt.layoutDestroy(lb);
        lt.layoutDestroy(ld);
      }
      if (!ok) {
        destroyPlan(lt, p);
        return false;
      }
      ai = lt.algos.emplace(bkey, std::make_pair(found, algo)).first;
    }
    p.found = ai->second.first;
    if (p.found) p.algo = ai->second.second;
    if (!p.found && !p.exact && !planExact(p)) {  // none for the bucket: ask for this n itself
      destroyPlan(lt, p);
      return false;
    }
    it = lt.plans.emplace(key, p).first;
  }
  MatmulPlan& p = it->second;
  if (!p.found) return false;
  if (!run) return true;
  cublasStatus_t s = runAlgo(lt, a, p, p.algo, stream);
  if (s != 0 && !p.exact) {
    // The bucket's algorithm does not take this n: plan this n alone, once.
    if (!planExact(p)) return false;
    if (!p.found) return false;
    s = runAlgo(lt, a, p, p.algo, stream);
  }
  if (s != 0) { err = statusText(lt, "cublasLtMatmul", s); return false; }
  return true;
}
