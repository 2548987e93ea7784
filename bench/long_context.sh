#!/usr/bin/env bash
# One request of LEN tokens (default 1,000,000) through prefill and 32 decode steps: full Scout
# architecture (48 layers, dummy weights), hybrid KV cache (--swa-full-tokens-ratio RATIO, default
# 0.8; `auto` sizes it for the context), --tp TP (default 4), through
# `tsglang launch` and /generate. Device memory is polled every 0.5 s (nvidia-smi) and rank 0's
# allocator figures read from /get_server_info, to set beside `tsglang plan` for the same flags.
# Run from the repo root with dist/ and build/ present, on a TP-GPU machine. Results to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/long_context}; mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
len=${LEN:-1000000}; tp=${TP:-4}; ctx=$((len + 64)); ratio=${RATIO:-0.8}
cfg=models/configs/llama4-scout-17b-16e-instruct
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$gpu" in *H200*) g=h200 ;; *) g=h100 ;; esac
echo "$gpu × $(nvidia-smi -L | wc -l)"
node dist/src/cli/main.js plan --model-config $cfg/config.json --tp $tp --gpu $g --context-length $ctx --swa-full-tokens-ratio $ratio --json | tee "$out/plan.json"
nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits -lms 500 > "$out/nvsmi.csv" &
smi=$!
t0=$(date +%s)
node dist/src/cli/main.js launch --model-path $cfg --tokenizer-path models/llama4-demo --load-format dummy \
  --tp $tp --port 30000 --context-length $ctx --swa-full-tokens-ratio $ratio > "$out/launch.log" 2>&1 &
pid=$!
for i in $(seq 1 400); do grep -q "ready to roll" "$out/launch.log" && break; kill -0 $pid 2>/dev/null || break; sleep 1; done
echo "launch: $(( $(date +%s) - t0 )) s"; tail -4 "$out/launch.log"
# Progress while it runs: the engine's counters every 20 s.
( while sleep 20; do echo "$(date +%s) $(curl -s http://127.0.0.1:30000/get_server_info | grep -o '"forward_tokens":[0-9]*')"; done ) > "$out/progress.txt" 2>&1 &
prog=$!
node dist/bench/long_context.js --url http://127.0.0.1:30000 --input-len $len --output-len 32 | tee "$out/long_context.jsonl"
kill $prog $pid; wait $pid 2>/dev/null; kill $smi
# Peak device memory per GPU over the run (MiB), from the poll.
awk -F', ' '{ if ($2 > peak[$1]) peak[$1] = $2; total[$1] = $3 } END { for (i in peak) printf "gpu %s: peak %d MiB of %d MiB\n", i, peak[i], total[i] }' "$out/nvsmi.csv" | sort | tee "$out/peak.txt"
