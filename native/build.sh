#!/usr/bin/env bash
# Builds tsglang's native layer into build/:
#   build/tsglang.node        the Node-API addon (g++, against Node's headers; no CUDA headers or
#                              libraries: it dlopens libcuda and cuBLASLt at run time)
#   build/kernels/<name>.fatbin one per native/kernels/<name>.cu (nvcc: sm_90a + sm_80 SASS,
#                              compute_80 PTX), loaded with cuModuleLoadData
#   build/bench/<name>          one per bench/micro/<name>.cu: stand-alone sm_90a measurement
#                              programs (nvcc links the CUDA runtime), built so they keep compiling
# Missing tools are not an error: the package then runs on the CPU backend. A compile error is.
# Env: TSGLANG_SKIP_NATIVE=1 skips everything; CXX, NVCC, TSGLANG_NODE_INCLUDE override the tools.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build
if [[ ${TSGLANG_SKIP_NATIVE:-} == 1 ]]; then echo "tsglang: TSGLANG_SKIP_NATIVE=1, CPU-only install"; exit 0; fi

# Node's headers: an explicit override, the running node's prefix, node-gyp's cache, system paths.
nodeVersion=$(node -p 'process.versions.node' 2>/dev/null || true)
nodePrefix=$(dirname "$(dirname "$(command -v node 2>/dev/null || echo /usr/bin/node)")")
include=
for d in "${TSGLANG_NODE_INCLUDE:-}" "$nodePrefix/include/node" \
         "${npm_config_devdir:-$HOME/.cache/node-gyp}/$nodeVersion/include/node" \
         "$HOME/.node-gyp/$nodeVersion/include/node" /usr/include/node /usr/local/include/node; do
  if [[ -n $d && -f $d/node_api.h ]]; then include=$d; break; fi
done
CXX=${CXX:-g++}
if ! command -v "$CXX" >/dev/null 2>&1; then echo "tsglang: no C++ compiler ($CXX), CPU-only install"; exit 0; fi
if [[ -z $include ]]; then echo "tsglang: Node headers (node_api.h) not found, CPU-only install"; exit 0; fi

mkdir -p "$out/kernels"
# Rebuild only what is older than its sources.
stale() { local target=$1; shift; [[ ! -f $target ]] && return 0; for s in "$@"; do [[ $s -nt $target ]] && return 0; done; return 1; }

addonSources=("$root"/native/src/*.cc "$root"/native/src/*.h)
if stale "$out/tsglang.node" "${addonSources[@]}" "$0"; then
  "$CXX" -std=c++17 -O2 -fPIC -shared -Wall -Wextra -I"$include" "$root"/native/src/*.cc -o "$out/tsglang.node.tmp" -ldl
  mv "$out/tsglang.node.tmp" "$out/tsglang.node"
  echo "tsglang: built build/tsglang.node"
fi

NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z $NVCC && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z $NVCC ]]; then echo "tsglang: nvcc not found, CPU-only install"; exit 0; fi

# No --use_fast_math: RoPE needs the accurate sincosf (llama4-spec §1.5).
flags=(-fatbin -O3 -std=c++17 -Xptxas -warn-spills
       -gencode arch=compute_90a,code=sm_90a
       -gencode arch=compute_80,code=sm_80
       -gencode arch=compute_80,code=compute_80)
pids=()
for cu in "$root"/native/kernels/*.cu; do
  name=$(basename "$cu" .cu)
  target=$out/kernels/$name.fatbin
  if stale "$target" "$cu" "$root"/native/kernels/*.cuh "$0"; then
    ("$NVCC" "${flags[@]}" -o "$target.tmp" "$cu" && mv "$target.tmp" "$target") &
    pids+=($!)
  fi
done
mkdir -p "$out/bench"
for cu in "$root"/bench/micro/*.cu; do
  [[ -f $cu ]] || continue
  target=$out/bench/$(basename "$cu" .cu)
  if stale "$target" "$cu" "$0"; then
    ("$NVCC" -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o "$target.tmp" "$cu" && mv "$target.tmp" "$target") &
    pids+=($!)
  fi
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
if [[ $status != 0 ]]; then echo "tsglang: nvcc failed on a kernel (see above)" >&2; exit 1; fi
echo "tsglang: kernels in build/kernels ($("$NVCC" --version | grep -o 'release [0-9.]*'))"
