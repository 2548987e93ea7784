// tsglang's Node-API addon: a thin, policy-free layer over the CUDA driver API and cuBLASLt.
// Both libraries are dlopen'ed on request, so the addon loads (and the package runs on the CPU)
// on machines without CUDA. Device pointers and handles cross into JS as BigInt. Everything
// asynchronous goes on the thread's current stream (a thread is bound to one device by init()):
// its main stream, or a side stream between useSideStream(true) and useSideStream(false), joined
// to the main one by events (streamWaitEvent). The JS side (src/runtime/cuda/native.ts) types
// this interface. NCCL lives in nccl.cc.
#define NAPI_VERSION 8
#include <node_api.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "blaslt.h"
#include "driver.h"
#include "nccl.h"

namespace {
constexpr char kErrorPrefix[] = "tsglang cuda: ";
}  // namespace
#include "napi_args.h"

namespace {

Driver drv{};
bool driverLoaded = false;
std::mutex driverLock;
// Per thread: each tensor-parallel rank is a worker thread bound to its own GPU (init(rank)),
// with its own context, stream and cuBLASLt handle (whose plan cache is not thread-safe).
thread_local CUcontext ctx = nullptr;
thread_local CUstream stream = nullptr;  // the current stream: mainStream or sideStream
thread_local CUstream mainStream = nullptr;
thread_local CUstream sideStream = nullptr;  // created on first use
thread_local CUdevice device = 0;
// Programmatic dependent launch is possible: cuLaunchKernelEx exists and the device is sm_90, the
// only target build.sh compiles with griddepcontrol (sm_90a SASS). Other devices run sm_80 SASS or
// JIT the compute_80 PTX, whose kernels never wait for their predecessor, so they must not overlap it.
thread_local bool pdlCapable = false;
thread_local BlasLt lt{};
thread_local bool blasLtLoaded = false;
// Between graphBeginCapture and graphEndCapture: work is recorded, not run, so cuBLASLt planning
// must not time candidates (blasLtMatmul's timer) then.
thread_local bool capturing = false;

// ---- argument helpers: each throws a JS error and returns false on a bad argument ----

bool getBytes(napi_env env, napi_value v, void*& data, size_t& bytes) {
  bool isTyped = false;
  napi_is_typedarray(env, v, &isTyped);
  if (isTyped) {
    napi_typedarray_type type;
    size_t length;
    napi_value buffer;
    size_t offset;
    napi_get_typedarray_info(env, v, &type, &length, &data, &buffer, &offset);
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;
    }
    bytes = length * elem;
    return true;
  }
  bool isDv = false;
  napi_is_dataview(env, v, &isDv);
  if (isDv) {
    napi_value buffer;
    size_t offset;
    napi_get_dataview_info(env, v, &bytes, &data, &buffer, &offset);
    return true;
  }
  throwError(env, "expected a typed array or DataView");
  return false;
}

napi_value bigint(napi_env env, uint64_t v) {
  napi_value r;
  napi_create_bigint_uint64(env, v, &r);
  return r;
}

napi_value number(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

napi_value string(napi_env env, const std::string& s) {
  napi_value r;
  napi_create_string_utf8(env, s.c_str(), s.size(), &r);
  return r;
}

void setProp(napi_env env, napi_value obj, const char* name, napi_value v) { napi_set_named_property(env, obj, name, v); }

bool ensureDevice(napi_env env) {
  if (ctx) return true;
  throwError(env, "no CUDA context: call init() first");
  return false;
}

// The one argument of a call on this thread's device: a handle, address or byte count.
bool deviceU64Arg(napi_env env, napi_callback_info info, uint64_t& out) {
  napi_value argv[1];
  return getArgs(env, info, 1, argv) && ensureDevice(env) && getU64(env, argv[0], out);
}

bool check(napi_env env, const char* what, CUresult r) {
  if (r == 0) return true;
  throwError(env, cuErrorText(drv, what, r));
  return false;
}

#define CHECK(what, call) \
  if (!check(env, what, call)) return nullptr

// ---- exported functions ----

// openDriver(paths: string[]): string — the path that loaded.
napi_value OpenDriver(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv)) return nullptr;
  std::vector<std::string> paths;
  if (!getStrings(env, argv[0], paths)) return nullptr;
  std::string from;
  std::lock_guard<std::mutex> hold(driverLock);
  if (!driverLoaded) {
    std::string err = loadDriver(paths.data(), static_cast<int>(paths.size()), drv, from);
    if (!err.empty()) {
      throwError(env, err);
      return nullptr;
    }
    driverLoaded = true;
  }
  return string(env, from);
}

// init(ordinal): DeviceInfo — cuInit, the device's primary context, one non-blocking stream.
napi_value Init(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv)) return nullptr;
  int64_t ordinal;
  if (!getI64(env, argv[0], ordinal)) return nullptr;
  if (!driverLoaded) {
    throwError(env, "openDriver() first");
    return nullptr;
  }
  if (!ctx) {
    CHECK("cuInit", drv.cuInit(0));
    int count = 0;
    CHECK("cuDeviceGetCount", drv.cuDeviceGetCount(&count));
    if (ordinal >= count) {
      throwError(env, "no CUDA device " + std::to_string(ordinal) + " (" + std::to_string(count) + " visible)");
      return nullptr;
    }
    CHECK("cuDeviceGet", drv.cuDeviceGet(&device, static_cast<int>(ordinal)));
    CHECK("cuDevicePrimaryCtxRetain", drv.cuDevicePrimaryCtxRetain(&ctx, device));
    CHECK("cuCtxSetCurrent", drv.cuCtxSetCurrent(ctx));
    CHECK("cuStreamCreate", drv.cuStreamCreate(&mainStream, CU_STREAM_NON_BLOCKING));
    stream = mainStream;
  } else {
    CUdevice want = 0;
    CHECK("cuDeviceGet", drv.cuDeviceGet(&want, static_cast<int>(ordinal)));
    if (want != device) {
      throwError(env, "this thread is bound to CUDA device " + std::to_string(device) + ", not " + std::to_string(ordinal) + " (one device per thread)");
      return nullptr;
    }
    CHECK("cuCtxSetCurrent", drv.cuCtxSetCurrent(ctx));
  }
  char name[256] = {0};
  drv.cuDeviceGetName(name, sizeof(name) - 1, device);
  int major = 0, minor = 0, sms = 0, l2 = 0, smem = 0, version = 0;
  drv.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
  drv.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
  pdlCapable = drv.cuLaunchKernelEx != nullptr && major == 9 && minor == 0;
  drv.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device);
  drv.cuDeviceGetAttribute(&l2, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, device);
  drv.cuDeviceGetAttribute(&smem, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device);
  drv.cuDriverGetVersion(&version);
  size_t total = 0;
  drv.cuDeviceTotalMem(&total, device);
  napi_value o;
  napi_create_object(env, &o);
  setProp(env, o, "name", string(env, name));
  setProp(env, o, "ccMajor", number(env, major));
  setProp(env, o, "ccMinor", number(env, minor));
  setProp(env, o, "smCount", number(env, sms));
  setProp(env, o, "l2Bytes", number(env, l2));
  setProp(env, o, "maxSharedPerBlock", number(env, smem));
  setProp(env, o, "totalBytes", number(env, static_cast<double>(total)));
  setProp(env, o, "driverVersion", number(env, version));
  return o;
}

// deviceCount(): number — cuInit, then the number of visible devices (0 when the driver says none).
napi_value DeviceCount(napi_env env, napi_callback_info /*info*/) {
  if (!driverLoaded) {
    throwError(env, "openDriver() first");
    return nullptr;
  }
  CUresult r = drv.cuInit(0);
  const int CUDA_ERROR_NO_DEVICE = 100;
  if (r == CUDA_ERROR_NO_DEVICE) return number(env, 0);
  CHECK("cuInit", r);
  int count = 0;
  CHECK("cuDeviceGetCount", drv.cuDeviceGetCount(&count));
  return number(env, count);
}

// openBlasLt(paths: string[]): { path, version }
napi_value OpenBlasLt(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  std::vector<std::string> paths;
  if (!getStrings(env, argv[0], paths)) return nullptr;
  static thread_local std::string from;
  if (!blasLtLoaded) {
    std::string err = loadBlasLt(paths.data(), static_cast<int>(paths.size()), lt, from);
    if (!err.empty()) {
      throwError(env, err);
      return nullptr;
    }
    blasLtLoaded = true;
  }
  napi_value o;
  napi_create_object(env, &o);
  setProp(env, o, "path", string(env, from));
  setProp(env, o, "version", number(env, static_cast<double>(lt.getVersion())));
  return o;
}

napi_value MemGetInfo(napi_env env, napi_callback_info /*info*/) {
  if (!ensureDevice(env)) return nullptr;
  size_t free = 0, total = 0;
  CHECK("cuMemGetInfo", drv.cuMemGetInfo(&free, &total));
  napi_value o;
  napi_create_object(env, &o);
  setProp(env, o, "free", number(env, static_cast<double>(free)));
  setProp(env, o, "total", number(env, static_cast<double>(total)));
  return o;
}

napi_value MemAlloc(napi_env env, napi_callback_info info) {
  uint64_t bytes;
  if (!deviceU64Arg(env, info, bytes)) return nullptr;
  CUdeviceptr p = 0;
  CHECK("cuMemAlloc", drv.cuMemAlloc(&p, bytes));
  return bigint(env, p);
}

napi_value MemFree(napi_env env, napi_callback_info info) {
  uint64_t p;
  if (!deviceU64Arg(env, info, p)) return nullptr;
  CHECK("cuMemFree", drv.cuMemFree(p));
  return undefined(env);
}

// htod(dst, src): queued on the stream. From pageable memory the driver stages the bytes before
// returning, so the JS buffer may be reused at once.
napi_value HtoD(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!getArgs(env, info, 2, argv) || !ensureDevice(env)) return nullptr;
  uint64_t dst;
  void* src;
  size_t bytes;
  if (!getU64(env, argv[0], dst) || !getBytes(env, argv[1], src, bytes)) return nullptr;
  if (bytes) CHECK("cuMemcpyHtoDAsync", drv.cuMemcpyHtoDAsync(dst, src, bytes, stream));
  return undefined(env);
}

// dtoh(dst, src): waits for the stream, so it also reports earlier kernels' faults.
napi_value DtoH(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!getArgs(env, info, 2, argv) || !ensureDevice(env)) return nullptr;
  uint64_t src;
  void* dst;
  size_t bytes;
  if (!getBytes(env, argv[0], dst, bytes) || !getU64(env, argv[1], src)) return nullptr;
  if (bytes) CHECK("cuMemcpyDtoHAsync", drv.cuMemcpyDtoHAsync(dst, src, bytes, stream));
  CHECK("cuStreamSynchronize (a kernel or copy before this download failed)", drv.cuStreamSynchronize(stream));
  return undefined(env);
}

// dtohAfter(dst, src, event): waits for `event` (recorded on the stream) only, then copies — work
// queued on the stream after the event keeps running (our stream does not sync with the legacy
// default stream the synchronous copy uses).
napi_value DtoHAfter(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!getArgs(env, info, 3, argv) || !ensureDevice(env)) return nullptr;
  uint64_t src, ev;
  void* dst;
  size_t bytes;
  if (!getBytes(env, argv[0], dst, bytes) || !getU64(env, argv[1], src) || !getU64(env, argv[2], ev)) return nullptr;
  CHECK("cuEventSynchronize (a kernel or copy before this download failed)", drv.cuEventSynchronize(reinterpret_cast<CUevent>(ev)));
  if (bytes) CHECK("cuMemcpyDtoH", drv.cuMemcpyDtoH(dst, src, bytes));
  return undefined(env);
}

napi_value DtoD(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!getArgs(env, info, 3, argv) || !ensureDevice(env)) return nullptr;
  uint64_t dst, src, bytes;
  if (!getU64(env, argv[0], dst) || !getU64(env, argv[1], src) || !getU64(env, argv[2], bytes)) return nullptr;
  if (bytes) CHECK("cuMemcpyDtoDAsync", drv.cuMemcpyDtoDAsync(dst, src, bytes, stream));
  return undefined(env);
}

// memset(dst, value, count, elementBytes 1|2|4)
napi_value Memset(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!getArgs(env, info, 4, argv) || !ensureDevice(env)) return nullptr;
  uint64_t dst, value, count;
  int64_t width;
  if (!getU64(env, argv[0], dst) || !getU64(env, argv[1], value) || !getU64(env, argv[2], count) ||
      !getI64(env, argv[3], width))
    return nullptr;
  if (count == 0) return undefined(env);
  if (width == 4) {
    CHECK("cuMemsetD32Async", drv.cuMemsetD32Async(dst, static_cast<unsigned>(value), count, stream));
  } else if (width == 2) {
    CHECK("cuMemsetD16Async", drv.cuMemsetD16Async(dst, static_cast<unsigned short>(value), count, stream));
  } else {
    CHECK("cuMemsetD8Async", drv.cuMemsetD8Async(dst, static_cast<unsigned char>(value), count, stream));
  }
  return undefined(env);
}

napi_value Synchronize(napi_env env, napi_callback_info /*info*/) {
  if (!ensureDevice(env)) return nullptr;
  CHECK("cuStreamSynchronize", drv.cuStreamSynchronize(mainStream));
  if (sideStream) CHECK("cuStreamSynchronize (side stream)", drv.cuStreamSynchronize(sideStream));
  return undefined(env);
}

// useSideStream(on): later work goes on the side stream (created on first use, non-blocking) or
// back on the main one. Work on the two may overlap on the GPU; order them with events.
napi_value UseSideStream(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  bool on = false;
  if (!getBool(env, argv[0], on)) return nullptr;
  if (on && !sideStream) CHECK("cuStreamCreate", drv.cuStreamCreate(&sideStream, CU_STREAM_NON_BLOCKING));
  stream = on ? sideStream : mainStream;
  return undefined(env);
}

// streamWaitEvent(ev): work queued on the current stream from now on waits for `ev` (recorded on either stream).
napi_value StreamWaitEvent(napi_env env, napi_callback_info info) {
  uint64_t ev;
  if (!deviceU64Arg(env, info, ev)) return nullptr;
  CHECK("cuStreamWaitEvent", drv.cuStreamWaitEvent(stream, reinterpret_cast<CUevent>(ev), 0));
  return undefined(env);
}

napi_value ModuleLoad(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  void* image;
  size_t bytes;
  if (!getBytes(env, argv[0], image, bytes)) return nullptr;
  CUmodule mod = nullptr;
  CHECK("cuModuleLoadData", drv.cuModuleLoadData(&mod, image));
  return bigint(env, reinterpret_cast<uint64_t>(mod));
}

napi_value GetFunction(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!getArgs(env, info, 2, argv) || !ensureDevice(env)) return nullptr;
  uint64_t mod;
  if (!getU64(env, argv[0], mod)) return nullptr;
  size_t len = 0;
  napi_get_value_string_utf8(env, argv[1], nullptr, 0, &len);
  std::string name(len, '\0');
  napi_get_value_string_utf8(env, argv[1], name.data(), len + 1, &len);
  CUfunction fn = nullptr;
  CUresult r = drv.cuModuleGetFunction(&fn, reinterpret_cast<CUmodule>(mod), name.c_str());
  if (r != 0) {
    throwError(env, cuErrorText(drv, ("cuModuleGetFunction(" + name + ")").c_str(), r));
    return nullptr;
  }
  return bigint(env, reinterpret_cast<uint64_t>(fn));
}

napi_value SetMaxDynamicShared(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!getArgs(env, info, 2, argv) || !ensureDevice(env)) return nullptr;
  uint64_t fn;
  int64_t bytes;
  if (!getU64(env, argv[0], fn) || !getI64(env, argv[1], bytes)) return nullptr;
  CHECK("cuFuncSetAttribute", drv.cuFuncSetAttribute(reinterpret_cast<CUfunction>(fn),
                                                     CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                                     static_cast<int>(bytes)));
  return undefined(env);
}

// launch(fn, gx, gy, gz, bx, by, bz, sharedBytes, args, pdl): args is the kernel's parameter block,
// packed by JS with C alignment, handed over whole through CU_LAUNCH_PARAM_BUFFER_POINTER. pdl: the
// kernel may start before the previous one in the stream ends (programmatic dependent launch; it
// must then wait for it with griddepcontrol.wait before touching memory) — honoured only where
// pdlCapable, else an ordinary launch.
napi_value Launch(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  if (!getArgs(env, info, 10, argv) || !ensureDevice(env)) return nullptr;
  uint64_t fn;
  int64_t g[3], b[3], smem;
  void* params;
  size_t bytes;
  bool pdl;
  if (!getU64(env, argv[0], fn)) return nullptr;
  for (int i = 0; i < 3; i++)
    if (!getI64(env, argv[1 + i], g[i]) || !getI64(env, argv[4 + i], b[i])) return nullptr;
  if (!getI64(env, argv[7], smem) || !getBytes(env, argv[8], params, bytes) || !getBool(env, argv[9], pdl)) return nullptr;
  size_t size = bytes;
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, params, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
  if (pdl && pdlCapable) {
    CUlaunchAttribute attr{};
    attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig config{};
    config.gridDimX = static_cast<unsigned>(g[0]);
    config.gridDimY = static_cast<unsigned>(g[1]);
    config.gridDimZ = static_cast<unsigned>(g[2]);
    config.blockDimX = static_cast<unsigned>(b[0]);
    config.blockDimY = static_cast<unsigned>(b[1]);
    config.blockDimZ = static_cast<unsigned>(b[2]);
    config.sharedMemBytes = static_cast<unsigned>(smem);
    config.hStream = stream;
    config.attrs = &attr;
    config.numAttrs = 1;
    CHECK("cuLaunchKernelEx", drv.cuLaunchKernelEx(&config, reinterpret_cast<CUfunction>(fn), nullptr, extra));
    return undefined(env);
  }
  CHECK("cuLaunchKernel", drv.cuLaunchKernel(reinterpret_cast<CUfunction>(fn), g[0], g[1], g[2], b[0], b[1], b[2],
                                             static_cast<unsigned>(smem), stream, nullptr, extra));
  return undefined(env);
}

// matmul(transA, transB, m, n, k, a, lda, b, ldb, d, ldd, typeAB, typeD, alpha, beta, workspace, wsBytes): boolean
// Column-major D[m,n] = alpha·op(A)·op(B) + beta·D; false when cuBLASLt has no algorithm for it.
// matmulPlan(same arguments): plans that call (blaslt.cc) without running it.
napi_value MatmulCall(napi_env env, napi_callback_info info, bool run) {
  napi_value argv[17];
  if (!getArgs(env, info, 17, argv) || !ensureDevice(env)) return nullptr;
  if (!blasLtLoaded) {
    throwError(env, "openBlasLt() first");
    return nullptr;
  }
  MatmulArgs a{};
  int64_t ta, tb, tab, td;
  double alpha, beta;
  uint64_t ws;
  if (!getI64(env, argv[0], ta) || !getI64(env, argv[1], tb) || !getI64(env, argv[2], a.m) ||
      !getI64(env, argv[3], a.n) || !getI64(env, argv[4], a.k) || !getU64(env, argv[5], a.a) ||
      !getI64(env, argv[6], a.lda) || !getU64(env, argv[7], a.b) || !getI64(env, argv[8], a.ldb) ||
      !getU64(env, argv[9], a.d) || !getI64(env, argv[10], a.ldd) || !getI64(env, argv[11], tab) ||
      !getI64(env, argv[12], td) || !getF64(env, argv[13], alpha) || !getF64(env, argv[14], beta) ||
      !getU64(env, argv[15], a.workspace) || !getU64(env, argv[16], ws))
    return nullptr;
  a.transA = static_cast<int>(ta);
  a.transB = static_cast<int>(tb);
  a.typeAB = static_cast<int>(tab);
  a.typeD = static_cast<int>(td);
  a.alpha = static_cast<float>(alpha);
  a.beta = static_cast<float>(beta);
  a.workspaceBytes = ws;
  std::string err;
  bool ok = blasLtMatmul(lt, a, stream, capturing ? nullptr : &drv, err, run);
  if (!err.empty()) {
    throwError(env, err);
    return nullptr;
  }
  napi_value r;
  napi_get_boolean(env, ok, &r);
  return r;
}

napi_value Matmul(napi_env env, napi_callback_info info) { return MatmulCall(env, info, true); }
napi_value MatmulPlanOnly(napi_env env, napi_callback_info info) { return MatmulCall(env, info, false); }

// matmulBucket(n): the n whose planned algorithm matmul uses for n (blaslt.cc), so a warm-up
// can plan every bucket once.
napi_value MatmulBucket(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv)) return nullptr;
  int64_t n;
  if (!getI64(env, argv[0], n)) return nullptr;
  if (n < 1) {
    throwError(env, "matmulBucket: n must be ≥ 1");
    return nullptr;
  }
  return number(env, static_cast<double>(blasLtBucket(n)));
}

// matmulStats(): {plans, timed, exact} — this thread's cuBLASLt planning so far (blaslt.h).
napi_value MatmulStats(napi_env env, napi_callback_info /*info*/) {
  napi_value r;
  napi_create_object(env, &r);
  napi_set_named_property(env, r, "plans", number(env, static_cast<double>(lt.plansMade)));
  napi_set_named_property(env, r, "timed", number(env, static_cast<double>(lt.choicesTimed)));
  napi_set_named_property(env, r, "exact", number(env, static_cast<double>(lt.exactChoices)));
  return r;
}

napi_value EventCreate(napi_env env, napi_callback_info /*info*/) {
  if (!ensureDevice(env)) return nullptr;
  CUevent ev = nullptr;
  CHECK("cuEventCreate", drv.cuEventCreate(&ev, CU_EVENT_DEFAULT));
  return bigint(env, reinterpret_cast<uint64_t>(ev));
}

napi_value EventRecord(napi_env env, napi_callback_info info) {
  uint64_t ev;
  if (!deviceU64Arg(env, info, ev)) return nullptr;
  CHECK("cuEventRecord", drv.cuEventRecord(reinterpret_cast<CUevent>(ev), stream));
  return undefined(env);
}

// eventElapsed(start, end): milliseconds; waits for `end`.
napi_value EventElapsed(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!getArgs(env, info, 2, argv) || !ensureDevice(env)) return nullptr;
  uint64_t a, b;
  if (!getU64(env, argv[0], a) || !getU64(env, argv[1], b)) return nullptr;
  CHECK("cuEventSynchronize", drv.cuEventSynchronize(reinterpret_cast<CUevent>(b)));
  float ms = 0;
  CHECK("cuEventElapsedTime", drv.cuEventElapsedTime(&ms, reinterpret_cast<CUevent>(a), reinterpret_cast<CUevent>(b)));
  return number(env, ms);
}

// ---- CUDA graphs: capture this thread's stream, instantiate, replay ----

bool graphsLoaded() {
  return drv.cuStreamBeginCapture && drv.cuStreamEndCapture && drv.cuGraphInstantiateWithFlags && drv.cuGraphLaunch &&
         drv.cuGraphExecDestroy && drv.cuGraphDestroy;
}

// graphBeginCapture(): everything queued on the stream from now on is recorded, not run.
napi_value GraphBeginCapture(napi_env env, napi_callback_info /*info*/) {
  if (!ensureDevice(env)) return nullptr;
  if (!graphsLoaded()) {
    throwError(env, "the CUDA driver has no stream-capture entry points (CUDA graphs need driver 11.4+)");
    return nullptr;
  }
  CHECK("cuStreamBeginCapture", drv.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_RELAXED));
  capturing = true;
  return undefined(env);
}

// graphEndCapture(): ends the capture (always, so the stream is usable again) and returns the
// instantiated executable graph; throws when the capture was invalidated.
napi_value GraphEndCapture(napi_env env, napi_callback_info /*info*/) {
  if (!ensureDevice(env)) return nullptr;
  if (!graphsLoaded()) {
    throwError(env, "the CUDA driver has no stream-capture entry points");
    return nullptr;
  }
  CUgraph graph = nullptr;
  CUresult r = drv.cuStreamEndCapture(stream, &graph);
  capturing = false;
  if (r != 0) {
    if (graph) drv.cuGraphDestroy(graph);
    throwError(env, cuErrorText(drv, "cuStreamEndCapture (something in the captured region is not capturable)", r));
    return nullptr;
  }
  CUgraphExec exec = nullptr;
  r = drv.cuGraphInstantiateWithFlags(&exec, graph, 0);
  drv.cuGraphDestroy(graph);  // the executable graph does not need it
  CHECK("cuGraphInstantiateWithFlags", r);
  return bigint(env, reinterpret_cast<uint64_t>(exec));
}

// graphLaunch(exec): replays the graph on the stream.
napi_value GraphLaunch(napi_env env, napi_callback_info info) {
  uint64_t exec;
  if (!deviceU64Arg(env, info, exec)) return nullptr;
  CHECK("cuGraphLaunch", drv.cuGraphLaunch(reinterpret_cast<CUgraphExec>(exec), stream));
  return undefined(env);
}

napi_value GraphDestroy(napi_env env, napi_callback_info info) {
  uint64_t exec;
  if (!deviceU64Arg(env, info, exec)) return nullptr;
  CHECK("cuGraphExecDestroy", drv.cuGraphExecDestroy(reinterpret_cast<CUgraphExec>(exec)));
  return undefined(env);
}

// hostRegister(view): page-locks the memory under a typed array (its ArrayBuffer must stay alive
// until hostUnregister), so device→host copies into it run at full PCIe speed.
napi_value HostRegister(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  void* data;
  size_t bytes;
  if (!getBytes(env, argv[0], data, bytes)) return nullptr;
  if (!drv.cuMemHostRegister) {
    throwError(env, "the CUDA driver has no cuMemHostRegister");
    return nullptr;
  }
  CHECK("cuMemHostRegister", drv.cuMemHostRegister(data, bytes, 0));
  return undefined(env);
}

napi_value HostUnregister(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  void* data;
  size_t bytes;
  if (!getBytes(env, argv[0], data, bytes)) return nullptr;
  if (!drv.cuMemHostUnregister) {
    throwError(env, "the CUDA driver has no cuMemHostUnregister");
    return nullptr;
  }
  CHECK("cuMemHostUnregister", drv.cuMemHostUnregister(data));
  return undefined(env);
}

// ---- peer access (tensor-parallel ranks are threads of one process, one GPU each) ----

// canAccessPeer(ordinal): boolean — can this thread's device address device `ordinal`'s memory?
napi_value CanAccessPeer(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  int64_t ordinal;
  if (!getI64(env, argv[0], ordinal)) return nullptr;
  int can = 0;
  if (drv.cuDeviceCanAccessPeer) {
    CUdevice peer = 0;
    CHECK("cuDeviceGet", drv.cuDeviceGet(&peer, static_cast<int>(ordinal)));
    CHECK("cuDeviceCanAccessPeer", drv.cuDeviceCanAccessPeer(&can, device, peer));
  }
  napi_value r;
  napi_get_boolean(env, can != 0, &r);
  return r;
}

// enablePeerAccess(ordinal): kernels of this thread's context may then read and write every
// cuMemAlloc block of device `ordinal`'s primary context (the peer rank's), present and future.
// Enabling twice is fine (ranks of an earlier group already did).
napi_value EnablePeerAccess(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!getArgs(env, info, 1, argv) || !ensureDevice(env)) return nullptr;
  int64_t ordinal;
  if (!getI64(env, argv[0], ordinal)) return nullptr;
  if (!drv.cuCtxEnablePeerAccess) {
    throwError(env, "the CUDA driver has no cuCtxEnablePeerAccess");
    return nullptr;
  }
  CUdevice peer = 0;
  CHECK("cuDeviceGet", drv.cuDeviceGet(&peer, static_cast<int>(ordinal)));
  if (peer == device) return undefined(env);
  CUcontext peerCtx = nullptr;
  CHECK("cuDevicePrimaryCtxRetain", drv.cuDevicePrimaryCtxRetain(&peerCtx, peer));
  CHECK("cuCtxSetCurrent", drv.cuCtxSetCurrent(ctx));  // the access is granted to the current context
  const CUresult CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED = 704;
  CUresult r = drv.cuCtxEnablePeerAccess(peerCtx, 0);
  if (r != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) CHECK("cuCtxEnablePeerAccess", r);
  return undefined(env);
}

}  // namespace

NAPI_MODULE_INIT() {
  const struct {
    const char* name;
    napi_callback fn;
  } fns[] = {
      {"openDriver", OpenDriver}, {"deviceCount", DeviceCount}, {"init", Init}, {"openBlasLt", OpenBlasLt}, {"memGetInfo", MemGetInfo},
      {"memAlloc", MemAlloc}, {"memFree", MemFree}, {"htod", HtoD}, {"dtoh", DtoH}, {"dtod", DtoD},
      {"memset", Memset}, {"synchronize", Synchronize}, {"moduleLoad", ModuleLoad}, {"getFunction", GetFunction},
      {"setMaxDynamicShared", SetMaxDynamicShared}, {"launch", Launch}, {"matmul", Matmul}, {"matmulPlan", MatmulPlanOnly},
      {"matmulBucket", MatmulBucket}, {"matmulStats", MatmulStats},
      {"useSideStream", UseSideStream}, {"streamWaitEvent", StreamWaitEvent},
      {"dtohAfter", DtoHAfter}, {"eventCreate", EventCreate}, {"eventRecord", EventRecord}, {"eventElapsed", EventElapsed},
      {"graphBeginCapture", GraphBeginCapture}, {"graphEndCapture", GraphEndCapture}, {"graphLaunch", GraphLaunch},
      {"graphDestroy", GraphDestroy}, {"hostRegister", HostRegister}, {"hostUnregister", HostUnregister},
      {"canAccessPeer", CanAccessPeer}, {"enablePeerAccess", EnablePeerAccess},
  };
  for (const auto& f : fns) {
    napi_value v;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.fn, nullptr, &v);
    napi_set_named_property(env, exports, f.name, v);
  }
  registerNccl(env, exports, [] { return stream; });  // native/src/nccl.cc
  return exports;
}
