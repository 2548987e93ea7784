#!/usr/bin/env bash
# Full Scout architecture (48 layers, dummy weights) at --tp 4 on four GPUs: bench-one-batch at
# batch 1 and 64, then a short serving run through `tsglang launch`. Results to $OUT (JSON lines).
# Run from the repo root with dist/ and build/ present, on a 4-GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/scout_tp4}; mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
cfg=models/configs/llama4-scout-17b-16e-instruct
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -4
for b in 1 64; do
  node dist/src/cli/main.js bench-one-batch --model-path $cfg --load-format dummy --tp 4 \
    --batch-size $b --input-len 1024 --output-len 32 --json | tee -a "$out/scout_tp4.jsonl"
done
# Serving: the demo tokenizer stands in (prompts are token ids; no Llama 4 tokenizer travels here).
node dist/src/cli/main.js launch --model-path $cfg --tokenizer-path models/llama4-demo --load-format dummy \
  --tp 4 --port 30000 --context-length 8192 > "$out/launch.log" 2>&1 &
pid=$!
for i in $(seq 1 300); do grep -q "ready to roll" "$out/launch.log" && break; sleep 1; done
tail -3 "$out/launch.log"
for c in 1 16; do
  node dist/bench/serve_smoke.js --url http://127.0.0.1:30000 --requests $((c * 2)) --concurrency $c \
    --input-len 1024 --output-len 128 | tee -a "$out/scout_tp4_serve.jsonl"
done
kill $pid; wait $pid 2>/dev/null
