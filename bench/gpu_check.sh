#!/usr/bin/env bash
# Every GPU check of the CUDA backend in one command, on a machine with a CUDA GPU, from the
# repo root with dist/ and build/ present (build them where g++ and nvcc are: `npm run build`,
# `npm run build:native`; this script builds build/ itself when missing and the tools exist):
#   1. the device (nvidia-smi) and the cuBLASLt to use
#   2. the CUDA tests: every op vs the CPU backend, goldens through the model (f32 and bf16)
#   3. the tests again under compute-sanitizer: memcheck (out-of-bounds, misaligned accesses)
#      over all of them, racecheck (shared-memory races) over the op tests
#   4. bench/gpu_check.ts: timings next to their bandwidth / FLOP floors
#   5. tsglang bench-one-batch end to end: the demo model, and Scout cut to 4 layers (dummy weights)
# Logs go to $OUT (or /tmp/gpu_check). Exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || echo "nvidia-smi failed"
if [[ ! -f build/tsglang.node || ! -d build/kernels ]]; then bash native/build.sh || status=1; fi
if [[ ! -d dist/src/runtime/cuda ]]; then echo "dist/ is missing: run \`npm run build\` first"; exit 1; fi
# cuBLASLt: the loader's path and CUDA_HOME are searched by the backend; else find one here.
if [[ -z ${TSGLANG_CUBLASLT:-} ]] && ! ldconfig -p | grep -q 'libcublasLt.so.1[23]'; then
  lib=$(find /usr/local/cuda/ /usr/local/ /opt/ /usr/lib/ -name 'libcublasLt.so.1[23]' 2>/dev/null | head -1)
  if [[ -n $lib ]]; then export TSGLANG_CUBLASLT=$lib; echo "cuBLASLt: $lib"; fi
fi

echo "== tests (each launch synchronised, so a fault names its kernel)"
TSGLANG_CUDA_SYNC=1 node --test --test-reporter=spec dist/src/runtime/cuda/ 2>&1 | tee "$out/test.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

# The kernel lookup probes each module with cuModuleGetFunction, so "not found" API errors are
# expected: only memory errors and races count here.
sanitize() { # tool, test-name pattern
  timeout 150 compute-sanitizer --tool "$1" --target-processes all --report-api-errors no --error-exitcode 1 --print-limit 20 \
    node --test --test-reporter=spec --test-name-pattern="$2" dist/src/runtime/cuda/ >"$out/$1.log" 2>&1
  local rc=$?
  echo "$1 ($2): $(grep -E '(ERROR|RACECHECK) SUMMARY' "$out/$1.log" | sed 's/^=* *//' | tr '\n' ' ')$(grep -E 'ℹ (pass|fail)' "$out/$1.log" | tr '\n' ' ')"
  [[ $rc == 0 ]] || { echo "$1 exit $rc"; status=1; }
}
if command -v compute-sanitizer >/dev/null 2>&1; then
  echo "== compute-sanitizer"
  sanitize memcheck '.'
  sanitize racecheck 'cuda ops'
else
  echo "compute-sanitizer not found, skipped"
fi

echo "== bench"
node dist/bench/gpu_check.js 2>&1 | tee "$out/bench.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1
echo "== tsglang bench-one-batch: the bundled demo model, and Scout's shapes cut to 4 layers (dummy weights)"
node dist/src/cli/main.js bench-one-batch --model-path models/llama4-demo --device cuda --batch-size 8 --input-len 256 --output-len 16 2>&1 | tee "$out/bob_demo.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1
scout=bench/configs/scout-4layer
for bs in 1 32; do
  node dist/src/cli/main.js bench-one-batch --model-path "$scout" --load-format dummy --device cuda --batch-size $bs --input-len 512 --output-len 8 2>&1 | tee "$out/bob_scout4_bs$bs.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
done

echo "gpu_check: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
