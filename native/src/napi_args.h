// Argument helpers shared by the Node-API entry points (addon.cc, nccl.cc): each throws a JS
// error and returns false on a bad argument. Errors carry the including file's kErrorPrefix
// ("tsglang cuda: ", "tsglang nccl: "), declared before this header is included.
#pragma once
#include <node_api.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

inline void throwError(napi_env env, const std::string& msg) {
  std::string full = kErrorPrefix + msg;
  napi_throw_error(env, nullptr, full.c_str());
}

inline bool getArgs(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc < want) {
    throwError(env, "expected " + std::to_string(want) + " arguments, got " + std::to_string(argc));
    return false;
  }
  return true;
}

// A device pointer or handle: a BigInt, or a non-negative number.
template <typename U>
inline bool getU64(napi_env env, napi_value v, U& out) {
  static_assert(sizeof(U) == 8, "64-bit values only");
  bool lossless = true;
  uint64_t u = 0;
  if (napi_get_value_bigint_uint64(env, v, &u, &lossless) == napi_ok) {
    out = static_cast<U>(u);
    return true;
  }
  double d;
  if (napi_get_value_double(env, v, &d) == napi_ok && d >= 0) {
    out = static_cast<U>(d);
    return true;
  }
  throwError(env, "expected a BigInt pointer/handle or a non-negative number");
  return false;
}

inline bool getI64(napi_env env, napi_value v, int64_t& out) {
  if (napi_get_value_int64(env, v, &out) == napi_ok) return true;
  throwError(env, "expected a number");
  return false;
}

inline bool getBool(napi_env env, napi_value v, bool& out) {
  if (napi_get_value_bool(env, v, &out) == napi_ok) return true;
  throwError(env, "expected a boolean");
  return false;
}

inline bool getF64(napi_env env, napi_value v, double& out) {
  if (napi_get_value_double(env, v, &out) == napi_ok) return true;
  throwError(env, "expected a number");
  return false;
}

// An array of strings (library paths).
inline bool getStrings(napi_env env, napi_value v, std::vector<std::string>& out) {
  uint32_t n = 0;
  if (napi_get_array_length(env, v, &n) != napi_ok) {
    throwError(env, "expected an array of library paths");
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value s;
    napi_get_element(env, v, i, &s);
    size_t len = 0;
    napi_get_value_string_utf8(env, s, nullptr, 0, &len);
    std::string str(len, '\0');
    napi_get_value_string_utf8(env, s, str.data(), len + 1, &len);
    out.push_back(str);
  }
  return true;
}

inline napi_value undefined(napi_env env) {
  napi_value r;
  napi_get_undefined(env, &r);
  return r;
}

}  // namespace
