// Resolves the driver entry points with dlsym. Versioned names (_v2) are the ones cuda.h maps the
// plain names to; they are stable in every driver since CUDA 4.
#include "driver.h"

#include "dl.h"

std::string loadDriver(const std::string* paths, int count, Driver& d, std::string& loadedFrom) {
  std::string errors;
  loadedFrom = openFirst(paths, count, [&](void* lib) -> std::string {
    std::string missing;
    sym(lib, "cuInit", d.cuInit, missing);
    sym(lib, "cuDriverGetVersion", d.cuDriverGetVersion, missing);
    sym(lib, "cuDeviceGetCount", d.cuDeviceGetCount, missing);
    sym(lib, "cuDeviceGet", d.cuDeviceGet, missing);
    sym(lib, "cuDeviceGetName", d.cuDeviceGetName, missing);
    sym(lib, "cuDeviceGetAttribute", d.cuDeviceGetAttribute, missing);
    sym(lib, "cuDeviceTotalMem_v2", d.cuDeviceTotalMem, missing);
    sym(lib, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain, missing);
    sym(lib, "cuCtxSetCurrent", d.cuCtxSetCurrent, missing);
    sym(lib, "cuStreamCreate", d.cuStreamCreate, missing);
    sym(lib, "cuStreamSynchronize", d.cuStreamSynchronize, missing);
    sym(lib, "cuMemAlloc_v2", d.cuMemAlloc, missing);
    sym(lib, "cuMemFree_v2", d.cuMemFree, missing);
    sym(lib, "cuMemGetInfo_v2", d.cuMemGetInfo, missing);
    sym(lib, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync, missing);
    sym(lib, "cuMemcpyDtoHAsync_v2", d.cuMemcpyDtoHAsync, missing);
    sym(lib, "cuMemcpyDtoH_v2", d.cuMemcpyDtoH, missing);
    sym(lib, "cuMemcpyDtoDAsync_v2", d.cuMemcpyDtoDAsync, missing);
    sym(lib, "cuMemsetD8Async", d.cuMemsetD8Async, missing);
    sym(lib, "cuMemsetD16Async", d.cuMemsetD16Async, missing);
    sym(lib, "cuMemsetD32Async", d.cuMemsetD32Async, missing);
    sym(lib, "cuModuleLoadData", d.cuModuleLoadData, missing);
    sym(lib, "cuModuleGetFunction", d.cuModuleGetFunction, missing);
    sym(lib, "cuFuncSetAttribute", d.cuFuncSetAttribute, missing);
    sym(lib, "cuLaunchKernel", d.cuLaunchKernel, missing);
    sym(lib, "cuEventCreate", d.cuEventCreate, missing);
    sym(lib, "cuEventRecord", d.cuEventRecord, missing);
    sym(lib, "cuEventSynchronize", d.cuEventSynchronize, missing);
    sym(lib, "cuStreamWaitEvent", d.cuStreamWaitEvent, missing);
    // CUDA 12.8 added a _v2 of cuEventElapsedTime; older drivers have only the plain one.
    if (!sym(lib, "cuEventElapsedTime_v2", d.cuEventElapsedTime, missing, false)) sym(lib, "cuEventElapsedTime", d.cuEventElapsedTime, missing);
    sym(lib, "cuGetErrorName", d.cuGetErrorName, missing);
    sym(lib, "cuGetErrorString", d.cuGetErrorString, missing);
    // CUDA graphs: optional (ignore what is missing; the addon reports graphs as unavailable).
    sym(lib, "cuStreamBeginCapture_v2", d.cuStreamBeginCapture, missing, false);
    sym(lib, "cuStreamEndCapture", d.cuStreamEndCapture, missing, false);
    sym(lib, "cuGraphInstantiateWithFlags", d.cuGraphInstantiateWithFlags, missing, false);
    sym(lib, "cuGraphLaunch", d.cuGraphLaunch, missing, false);
    sym(lib, "cuGraphExecDestroy", d.cuGraphExecDestroy, missing, false);
    sym(lib, "cuGraphDestroy", d.cuGraphDestroy, missing, false);
    sym(lib, "cuMemHostRegister_v2", d.cuMemHostRegister, missing, false);
    sym(lib, "cuMemHostUnregister", d.cuMemHostUnregister, missing, false);
    sym(lib, "cuDeviceCanAccessPeer", d.cuDeviceCanAccessPeer, missing, false);
    sym(lib, "cuCtxEnablePeerAccess", d.cuCtxEnablePeerAccess, missing, false);
    sym(lib, "cuLaunchKernelEx", d.cuLaunchKernelEx, missing, false);
    return missing.empty() ? "" : "has no " + missing + " (driver too old?)";
  }, errors);
  return loadedFrom.empty() ? "cannot load the CUDA driver library (libcuda.so.1); tried:" + errors : "";
}

std::string cuErrorText(const Driver& d, const char* what, CUresult r) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.cuGetErrorName) d.cuGetErrorName(r, &name);
  if (d.cuGetErrorString) d.cuGetErrorString(r, &text);
  std::string s = std::string(what) + ": " + (name ? name : "CUDA error " + std::to_string(r));
  if (text) s += std::string(" (") + text + ")";
  return s;
}
