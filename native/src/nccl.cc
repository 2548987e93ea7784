// NCCL opened at run time (libnccl.so.2; TSGLANG_NCCL or the candidates from JS), declared here
// so no NCCL headers are needed to build: the values below are the stable ABI of nccl.h.
// The library is process-wide (loaded once, under a lock); communicators and streams belong to
// the calling thread's rank.
#include "nccl.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {
constexpr char kErrorPrefix[] = "tsglang nccl: ";
}  // namespace
#include "dl.h"
#include "napi_args.h"

namespace {

typedef int ncclResult_t;  // 0 = ncclSuccess
typedef struct ncclComm* ncclComm_t;
constexpr size_t NCCL_UNIQUE_ID_BYTES = 128;
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;
enum { ncclSum = 0 };
// ncclDataType_t values accepted from JS: ncclFloat32 = 7, ncclBfloat16 = 9 (NCCL ≥ 2.10).
enum { ncclFloat32 = 7, ncclBfloat16 = 9 };

struct Nccl {
  ncclResult_t (*getVersion)(int*);
  ncclResult_t (*getUniqueId)(ncclUniqueId*);
  ncclResult_t (*commInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*commDestroy)(ncclComm_t);
  ncclResult_t (*allReduce)(const void*, void*, size_t, int, int, ncclComm_t, CUstream);
  ncclResult_t (*allGather)(const void*, void*, size_t, int, ncclComm_t, CUstream);
  const char* (*getErrorString)(ncclResult_t);
  const char* (*getLastError)(ncclComm_t);  // NCCL ≥ 2.13; may be null
};

Nccl nccl{};
bool loaded = false;
std::string loadedFrom;
int version = 0;
std::mutex loadLock;
CUstream (*streamOf)() = nullptr;

bool ready(napi_env env) {
  if (!loaded) {
    throwError(env, "ncclOpen() first");
    return false;
  }
  return true;
}

bool onStream(napi_env env, CUstream& s) {
  s = streamOf ? streamOf() : nullptr;
  if (s) return true;
  throwError(env, "this thread has no CUDA context: call init(device) on it first");
  return false;
}

bool check(napi_env env, const char* what, ncclResult_t r, ncclComm_t comm = nullptr) {
  if (r == 0) return true;
  std::string msg = std::string(what) + ": " + (nccl.getErrorString ? nccl.getErrorString(r) : "error " + std::to_string(r));
  const char* last = nccl.getLastError ? nccl.getLastError(comm) : nullptr;
  if (last && *last) msg += std::string(" (") + last + ")";
  throwError(env, msg);
  return false;
}

bool dtypeOk(napi_env env, int64_t t) {
  if (t == ncclFloat32 || t == ncclBfloat16) return true;
  throwError(env, "unsupported data type " + std::to_string(t) + " (7 = float32, 9 = bfloat16)");
  return false;
}

// ncclOpen(paths: string[]): { path, version } — the first library that loads with every entry point.
napi_value Open(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv)) return nullptr;
  std::lock_guard<std::mutex> hold(loadLock);
  if (!loaded) {
    std::vector<std::string> paths;
    if (!getStrings(env, argv[0], paths)) return nullptr;
    std::string errors;
    loadedFrom = openFirst(paths.data(), static_cast<int>(paths.size()), [&](void* lib) -> std::string {
      Nccl t{};
      std::string missing;
      sym(lib, "ncclGetVersion", t.getVersion, missing);
      sym(lib, "ncclGetUniqueId", t.getUniqueId, missing);
      sym(lib, "ncclCommInitRank", t.commInitRank, missing);
      sym(lib, "ncclCommDestroy", t.commDestroy, missing);
      sym(lib, "ncclAllReduce", t.allReduce, missing);
      sym(lib, "ncclAllGather", t.allGather, missing);
      sym(lib, "ncclGetErrorString", t.getErrorString, missing);
      sym(lib, "ncclGetLastError", t.getLastError, missing, false);
      int v = 0;
      if (missing.empty() && t.getVersion(&v) == 0 && v < 21000) missing = "bfloat16 support (NCCL " + std::to_string(v) + " < 2.10)";
      if (!missing.empty()) return "has no " + missing;
      nccl = t;
      version = v;
      return "";
    }, errors);
    loaded = !loadedFrom.empty();
    if (!loaded) {
      throwError(env, "cannot load NCCL (libnccl.so.2), needed for --tp > 1 on CUDA; install it (e.g. the nvidia-nccl-cu12/cu13 wheel or the libnccl2 package) or set TSGLANG_NCCL to its path. Tried:" + errors);
      return nullptr;
    }
  }
  napi_value o, p, v;
  napi_create_object(env, &o);
  napi_create_string_utf8(env, loadedFrom.c_str(), loadedFrom.size(), &p);
  napi_create_double(env, version, &v);
  napi_set_named_property(env, o, "path", p);
  napi_set_named_property(env, o, "version", v);
  return o;
}

// ncclGetUniqueId(): Uint8Array(128) — made once by rank 0 and handed to every rank.
napi_value GetUniqueId(napi_env env, napi_callback_info /*info*/) {
  if (!ready(env)) return nullptr;
  ncclUniqueId id;
  if (!check(env, "ncclGetUniqueId", nccl.getUniqueId(&id))) return nullptr;
  void* data = nullptr;
  napi_value buf, arr;
  napi_create_arraybuffer(env, NCCL_UNIQUE_ID_BYTES, &data, &buf);
  std::memcpy(data, id.internal, NCCL_UNIQUE_ID_BYTES);
  napi_create_typedarray(env, napi_uint8_array, NCCL_UNIQUE_ID_BYTES, buf, 0, &arr);
  return arr;
}

// ncclCommInitRank(nranks, id: Uint8Array(128), rank): comm — on this thread's device; blocks
// until all nranks ranks have called it.
napi_value CommInitRank(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  CUstream s;
  if (!getArgs(env, info, 3, argv) || !ready(env) || !onStream(env, s)) return nullptr;
  int64_t nranks, rank;
  if (!getI64(env, argv[0], nranks) || !getI64(env, argv[2], rank)) return nullptr;
  bool isTyped = false;
  napi_is_typedarray(env, argv[1], &isTyped);
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;
  void* data = nullptr;
  if (isTyped) {
    napi_value ab;
    size_t offset;
    napi_get_typedarray_info(env, argv[1], &type, &length, &data, &ab, &offset);
  }
  if (!isTyped || type != napi_uint8_array || length != NCCL_UNIQUE_ID_BYTES) {
    throwError(env, "the unique id must be the Uint8Array(128) from ncclGetUniqueId()");
    return nullptr;
  }
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    throwError(env, "rank " + std::to_string(rank) + " outside a group of " + std::to_string(nranks));
    return nullptr;
  }
  ncclUniqueId id;
  std::memcpy(id.internal, data, NCCL_UNIQUE_ID_BYTES);
  ncclComm_t comm = nullptr;
  if (!check(env, "ncclCommInitRank", nccl.commInitRank(&comm, static_cast<int>(nranks), id, static_cast<int>(rank)))) return nullptr;
  napi_value r;
  napi_create_bigint_uint64(env, reinterpret_cast<uint64_t>(comm), &r);
  return r;
}

// ncclAllReduce(comm, send, recv, count, dtype): sum over ranks, queued on this thread's stream
// (send == recv is in place).
napi_value AllReduce(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  CUstream s;
  if (!getArgs(env, info, 5, argv) || !ready(env) || !onStream(env, s)) return nullptr;
  uint64_t comm, send, recv, count;
  int64_t dtype;
  if (!getU64(env, argv[0], comm) || !getU64(env, argv[1], send) || !getU64(env, argv[2], recv) ||
      !getU64(env, argv[3], count) || !getI64(env, argv[4], dtype) || !dtypeOk(env, dtype))
    return nullptr;
  ncclComm_t c = reinterpret_cast<ncclComm_t>(comm);
  if (!check(env, "ncclAllReduce",
             nccl.allReduce(reinterpret_cast<const void*>(send), reinterpret_cast<void*>(recv), count,
                            static_cast<int>(dtype), ncclSum, c, s),
             c))
    return nullptr;
  return undefined(env);
}

// ncclAllGather(comm, send, recv, sendCount, dtype): recv = every rank's send, in rank order.
napi_value AllGather(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  CUstream s;
  if (!getArgs(env, info, 5, argv) || !ready(env) || !onStream(env, s)) return nullptr;
  uint64_t comm, send, recv, count;
  int64_t dtype;
  if (!getU64(env, argv[0], comm) || !getU64(env, argv[1], send) || !getU64(env, argv[2], recv) ||
      !getU64(env, argv[3], count) || !getI64(env, argv[4], dtype) || !dtypeOk(env, dtype))
    return nullptr;
  ncclComm_t c = reinterpret_cast<ncclComm_t>(comm);
  if (!check(env, "ncclAllGather",
             nccl.allGather(reinterpret_cast<const void*>(send), reinterpret_cast<void*>(recv), count,
                            static_cast<int>(dtype), c, s),
             c))
    return nullptr;
  return undefined(env);
}

// ncclCommDestroy(comm): every rank destroys its communicator (concurrently: it may wait for peers).
napi_value CommDestroy(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ready(env)) return nullptr;
  uint64_t comm;
  if (!getU64(env, argv[0], comm)) return nullptr;
  if (!check(env, "ncclCommDestroy", nccl.commDestroy(reinterpret_cast<ncclComm_t>(comm)))) return nullptr;
  return undefined(env);
}

}  // namespace

void registerNccl(napi_env env, napi_value exports, CUstream (*currentStream)()) {
  streamOf = currentStream;
  const struct {
    const char* name;
    napi_callback fn;
  } fns[] = {
      {"ncclOpen", Open},          {"ncclGetUniqueId", GetUniqueId}, {"ncclCommInitRank", CommInitRank},
      {"ncclAllReduce", AllReduce}, {"ncclAllGather", AllGather},    {"ncclCommDestroy", CommDestroy},
  };
  for (const auto& f : fns) {
    napi_value v;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.fn, nullptr, &v);
    napi_set_named_property(env, exports, f.name, v);
  }
}
