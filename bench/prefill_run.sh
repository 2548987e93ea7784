#!/usr/bin/env bash
# The prefill work's device run, all in one command (dist/ and build/ built beforehand):
# bench-one-batch 1 × 2048 (the issue's shape) cold as before (no warm-up, every cuBLASLt shape
# planned exactly), with the warm-up alone, and with warm-up + bucketed planning (the default);
# 64 × 1024; bench/prefill_profile.ts (cold/warm/new-prompt prefills and a per-op breakdown);
# then the CUDA tests. Logs and JSON in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/prefill_run}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
bob() { # name, batch, input len, flags, then VAR=value settings
  local name=$1 bs=$2 len=$3 flags=$4; shift 4
  env "$@" timeout 60 node dist/src/cli/main.js bench-one-batch --model-path bench/configs/scout-4layer --load-format dummy \
    --device cuda --batch-size "$bs" --input-len "$len" --output-len 4 --json $flags >"$out/bob.tmp" 2>>"$out/bob.err"
  local rc=$?
  echo "{\"run\":\"$name\",\"rc\":$rc,\"result\":$(tr -d '\n' <"$out/bob.tmp" | grep . || echo null)}" >>"$out/bob.jsonl"
  rm -f "$out/bob.tmp"
  tail -1 "$out/bob.jsonl" | node -e 'const j=JSON.parse(require("fs").readFileSync(0,"utf8"));const r=j.result||{};console.log(`${j.run.padEnd(34)} rc=${j.rc} prefill ${(r.prefill_s*1e3).toFixed(2)} ms ${Number(r.prefill_tflops).toFixed(1)} TFLOP/s cold ${r.prefill_cold_s==null?"-":(r.prefill_cold_s*1e3).toFixed(1)+" ms"}`)'
}
bob bs1_2048_before 1 2048 --no-warmup TSGLANG_BLASLT_EXACT=1
bob bs1_2048_warmup_exact 1 2048 "" TSGLANG_BLASLT_EXACT=1
bob bs1_2048_after 1 2048 "" X=1
bob bs1_2048_after_again 1 2048 "" X=1
bob bs1_1024_after 1 1024 "" X=1
bob bs64_1024_after 64 1024 "" X=1
timeout 60 node dist/bench/prefill_profile.js 2048 >"$out/profile.log" 2>&1
echo "profile rc=$?"; head -8 "$out/profile.log"
OUT= TSGLANG_BLASLT_EXACT=1 timeout 60 node dist/bench/prefill_profile.js 2048 >"$out/profile_exact.log" 2>&1
echo "exact:"; head -7 "$out/profile_exact.log"
echo "== tests"
timeout 200 node --test --test-reporter=spec dist/src/runtime/cuda/ >"$out/test.log" 2>&1
echo "tests rc=$?"
grep -E "✖|ℹ (tests|pass|fail|skipped)" "$out/test.log" | head -30
echo done
