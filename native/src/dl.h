// Entry points of a library opened at run time with dlopen (libcuda, cuBLASLt, NCCL): no CUDA
// headers or link-time dependency, so the addon builds and loads where CUDA is absent.
#pragma once
#include <dlfcn.h>

#include <string>

// out = `name` from `lib`. A required symbol that is absent is recorded in `missing` (the first
// such name, for the error message); an optional one just leaves `out` null. True if found.
template <typename F>
inline bool sym(void* lib, const char* name, F& out, std::string& missing, bool required = true) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out && required && missing.empty()) missing = name;
  return out != nullptr;
}
