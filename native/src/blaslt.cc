#include "blaslt.h"

#include <dlfcn.h>

#include <cstdlib>

namespace {
template <typename F>
void sym(void* lib, const char* name, F& out, std::string& missing) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out && missing.empty()) missing = name;
}

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
}  // namespace

std::string loadBlasLt(const std::string* paths, int count, BlasLt& lt, std::string& loadedFrom) {
  std::string errors;
  for (int i = 0; i < count; i++) {
    void* lib = dlopen(paths[i].c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      errors += "\n  " + paths[i] + ": " + (e ? e : "not found");
      continue;
    }
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
    sym(lib, "cublasLtMatmul", lt.matmul, missing);
    sym(lib, "cublasLtGetStatusString", lt.statusString, missing);
    if (!missing.empty()) {
      errors += "\n  " + paths[i] + ": has no " + missing;
      dlclose(lib);
      continue;
    }
    cublasStatus_t s = lt.create(&lt.handle);
    if (s != 0) {
      errors += "\n  " + paths[i] + ": " + statusText(lt, "cublasLtCreate", s);
      dlclose(lib);
      continue;
    }
    loadedFrom = paths[i];
    return "";
  }
  return "cannot load cuBLASLt (libcublasLt.so.13 or .12); set TSGLANG_CUBLASLT to its path. Tried:" + errors;
}

bool blasLtMatmul(BlasLt& lt, const MatmulArgs& a, CUstream stream, std::string& err) {
  const uint32_t alA = alignmentOf(a.a), alB = alignmentOf(a.b), alD = alignmentOf(a.d);
  auto keyFor = [&](int64_t n) {
    return std::to_string(a.transA) + "," + std::to_string(a.transB) + "," + std::to_string(a.m) + "," +
           std::to_string(n) + "," + std::to_string(a.k) + "," + std::to_string(a.lda) + "," +
           std::to_string(a.ldb) + "," + std::to_string(a.ldd) + "," + std::to_string(a.typeAB) + "," +
           std::to_string(a.typeD) + "," + std::to_string(alA) + "," + std::to_string(alB) + "," +
           std::to_string(alD) + "," + std::to_string(a.workspaceBytes);
  };
  std::string key = keyFor(a.n);
  auto it = lt.plans.find(key);
  if (it == lt.plans.end()) {
    // Every shape is planned once; a serving process sees a bounded set of (batch, layer) shapes.
    if (lt.plans.size() > 8192) {
      for (auto& kv : lt.plans) {
        lt.descDestroy(kv.second.desc);
        lt.layoutDestroy(kv.second.a);
        lt.layoutDestroy(kv.second.b);
        lt.layoutDestroy(kv.second.d);
        lt.prefDestroy(kv.second.pref);
      }
      lt.plans.clear();
      lt.algos.clear();
    }
    MatmulPlan p{};
    cublasStatus_t s = lt.descCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s != 0) { err = statusText(lt, "cublasLtMatmulDescCreate", s); return false; }
    lt.descSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &a.transA, sizeof(int));
    lt.descSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &a.transB, sizeof(int));
    // Stored shapes: op N keeps [rows, cols] = [m, k]; op T stores the transpose.
    lt.layoutCreate(&p.a, a.typeAB, a.transA ? a.k : a.m, a.transA ? a.m : a.k, a.lda);
    lt.layoutCreate(&p.b, a.typeAB, a.transB ? a.n : a.k, a.transB ? a.k : a.n, a.ldb);
    lt.layoutCreate(&p.d, a.typeD, a.m, a.n, a.ldd);
    cublasLtMatmulPreference_t pref;
    lt.prefCreate(&pref);
    uint64_t ws = a.workspaceBytes;
    lt.prefSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    lt.prefSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alA, sizeof(alA));
    lt.prefSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alB, sizeof(alB));
    lt.prefSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alD, sizeof(alD));
    lt.prefSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alD, sizeof(alD));
    // The algorithm: the bucket's, chosen once for the bucket's n (the same layouts but for n).
    const int64_t nb = bucketN(a.n);
    p.exact = nb == a.n;
    const std::string bkey = keyFor(nb);
    auto ai = lt.algos.find(bkey);
    if (ai == lt.algos.end()) {
      cublasLtMatrixLayout_t lb = p.b, ld = p.d;
      if (nb != a.n) {
        lt.layoutCreate(&lb, a.typeAB, a.transB ? nb : a.k, a.transB ? a.k : nb, a.ldb);
        lt.layoutCreate(&ld, a.typeD, a.m, nb, a.ldd);
      }
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      s = lt.heuristic(lt.handle, p.desc, p.a, lb, ld, ld, pref, 1, &result, &found);
      if (nb != a.n) {
        lt.layoutDestroy(lb);
        lt.layoutDestroy(ld);
      }
      ai = lt.algos.emplace(bkey, std::make_pair(s == 0 && found > 0, result.algo)).first;
    }
    p.found = ai->second.first;
    if (p.found) p.algo = ai->second.second;
    if (!p.found && nb != a.n) {  // none for the bucket: ask for this n itself
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      s = lt.heuristic(lt.handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
      p.found = (s == 0 && found > 0);
      if (p.found) p.algo = result.algo;
      p.exact = true;
    }
    p.pref = pref;
    it = lt.plans.emplace(key, p).first;
  }
  MatmulPlan& p = it->second;
  if (!p.found) return false;
  auto run = [&]() {
    return lt.matmul(lt.handle, p.desc, &a.alpha, reinterpret_cast<const void*>(a.a), p.a,
                     reinterpret_cast<const void*>(a.b), p.b, &a.beta, reinterpret_cast<const void*>(a.d), p.d,
                     reinterpret_cast<void*>(a.d), p.d, &p.algo, reinterpret_cast<void*>(a.workspace),
                     a.workspaceBytes, stream);
  };
  cublasStatus_t s = run();
  if (s != 0 && !p.exact) {
    // The bucket's algorithm does not take this n: plan this n alone, once.
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t h = lt.heuristic(lt.handle, p.desc, p.a, p.b, p.d, p.d, p.pref, 1, &result, &found);
    p.exact = true;
    p.found = (h == 0 && found > 0);
    if (!p.found) return false;
    p.algo = result.algo;
    s = run();
  }
  if (s != 0) { err = statusText(lt, "cublasLtMatmul", s); return false; }
  return true;
}
