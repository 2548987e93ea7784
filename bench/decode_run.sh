#!/usr/bin/env bash
# The decode work's device run, all in one command (dist/ and build/ built beforehand):
# bench-one-batch on Scout's widths cut to 4 layers (batch 1 and 64; greedy on the device or logits
# to the host; CUDA graphs on and off; the first backend's paths: cuBLASLt, host-sorted MoE, no
# graphs), the CUDA tests, and bench/decode_check.ts. Logs and JSON in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/decode_run}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [[ -z ${TSGLANG_CUBLASLT:-} ]] && ! ldconfig -p | grep -q 'libcublasLt.so.1[23]'; then
  lib=$(find /usr/local/cuda/ /usr/local/ /opt/ /usr/lib/ -name 'libcublasLt.so.1[23]' 2>/dev/null | head -1)
  [[ -n $lib ]] && export TSGLANG_CUBLASLT=$lib
fi
bob() { # name, then VAR=value settings for the run
  local name=$1; shift
  env "$@" timeout 45 node dist/src/cli/main.js bench-one-batch --model-path bench/configs/scout-4layer --load-format dummy \
    --device cuda --input-len 1024 --output-len 32 --json --batch-size "${BS}" ${FLAGS:-} >"$out/bob.tmp" 2>"$out/bob.errtmp"
  local rc=$?
  echo "{\"run\":\"$name\",\"rc\":$rc,\"result\":$(tr -d '\n' <"$out/bob.tmp" | grep . || echo null)}" >>"$out/bob.jsonl"
  { echo "== $name"; cat "$out/bob.errtmp"; } >>"$out/bob.err"
  rm -f "$out/bob.tmp" "$out/bob.errtmp"
  echo "bob $name rc=$rc: $(tail -1 "$out/bob.jsonl" | head -c 1300)"
}
BS=1 bob bs1 X=1
echo "== tests"
TSGLANG_CUDA_SYNC=1 timeout 100 node --test --test-reporter=spec dist/src/runtime/cuda/ >"$out/test.log" 2>&1
echo "tests rc=$?"
grep -E "^# |✖|ℹ (tests|pass|fail|skipped)" "$out/test.log" | head -40
BS=64 bob bs64 X=1
echo "== decode_check"
timeout 90 node dist/bench/decode_check.js >"$out/decode_check.log" 2>&1
echo "decode_check rc=$?"
head -60 "$out/decode_check.log"
BS=1 FLAGS=--host-logits bob bs1_hostlogits X=1
BS=64 FLAGS=--host-logits bob bs64_hostlogits X=1
BS=1 bob bs1_nographs TSGLANG_CUDA_GRAPHS=0
BS=64 bob bs64_nographs TSGLANG_CUDA_GRAPHS=0
BS=1 FLAGS=--host-logits bob bs1_old TSGLANG_CUDA_GRAPHS=0 TSGLANG_GEMV_MAX_N=0 TSGLANG_MOE_DEVICE_MAX_N=0
BS=64 FLAGS=--host-logits bob bs64_old TSGLANG_CUDA_GRAPHS=0 TSGLANG_GEMV_MAX_N=0 TSGLANG_MOE_DEVICE_MAX_N=0
grep -i "graphs turned off\|error" "$out/bob.err" | head -5
echo done
