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

// Opens the first of `paths` that `use(lib)` accepts (returns ""): its path, or "" after every
// candidate failed, each failure ("path: why") appended to `errors`. A rejected library is closed.
template <typename Use>
inline std::string openFirst(const std::string* paths, int count, Use use, std::string& errors) {
  for (int i = 0; i < count; i++) {
    void* lib = dlopen(paths[i].c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      errors += "\n  " + paths[i] + ": " + (e ? e : "not found");
      continue;
    }
    const std::string why = use(lib);
    if (why.empty()) return paths[i];
    errors += "\n  " + paths[i] + ": " + why;
    dlclose(lib);
  }
  return "";
}
