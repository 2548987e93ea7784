#!/usr/bin/env bash
# The fa3 attention kernels on a CUDA GPU, in one command (repo root, dist/ and build/ built:
# `npm run build`, `npm run build:native`):
#   1. the attention tests (src/runtime/cuda/attention.test.ts: fa3 vs the CPU backend)
#   2. bench/attention_torch.py: torch SDPA flash + cuDNN on causal GQA 40/8 d128 8k tokens and
#      the copy bandwidth; it leaves its inputs and flash output in $io
#   3. bench/attention.ts: our prefill kernel on the same inputs (checked against torch's
#      output) and shapes around it, our decode kernel vs copy bandwidth (checked against the
#      reference kernel)
# JSON and logs go to $OUT (or /tmp/attention_bench): torch.json, attention.json, *.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/attention_bench}
io=${ATTN_IO:-/tmp/attn_io}
mkdir -p "$out" "$io"
status=0
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader || true
if [[ ! -f build/tsglang.node || ! -f build/kernels/attention_fa.fatbin ]]; then bash native/build.sh || status=1; fi
[[ -d dist/bench ]] || { echo "dist/ is missing: run \`npm run build\` first"; exit 1; }

if [[ ${SKIP_TESTS:-} != 1 ]]; then
  echo "== tests"
  timeout 150 node --test --test-reporter=spec dist/src/runtime/cuda/attention.test.js 2>&1 | tee "$out/test.log" | grep -vE '^\s*$' | tail -25
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
echo "== torch sdpa"
PYTHONUNBUFFERED=1 timeout 120 python3 bench/attention_torch.py --io "$io" --json "$out/torch.json" 2>&1 | tee "$out/torch.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1
echo "== ours"
timeout 150 node dist/bench/attention.js --io "$io" --torch "$out/torch.json" --json "$out/attention.json" --commit "$commit" 2>&1 | tee "$out/bench.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1
echo "attention bench: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
