#!/usr/bin/env bash
# CPU decode and prefill of the bundled demo model at batch 1 (issue: zero-setup default).
# Usage: bash bench/cpu_demo.sh  (after npm install); prints bench-one-batch's JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
for len in 128 1024; do
  node dist/src/cli/main.js bench-one-batch --model-path models/llama4-demo --device cpu \
    --batch-size 1 --input-len "$len" --output-len 64 --json
done
