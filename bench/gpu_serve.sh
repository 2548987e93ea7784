#!/usr/bin/env bash
# One GPU, end to end: greedy `generate` on the fixtures through the CUDA backend against
# transformers' references, bench-one-batch on the Scout-width 4-layer model (batch 1 and 64),
# and a serving run of the demo model through `tsglang launch --device cuda`. JSON to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_serve}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for f in scout-tiny maverick-tiny; do
  node -e '
    const { spawnSync } = require("node:child_process");
    const ref = require("./test/fixtures/'$f'/reference.json");
    let same = 0, total = 0;
    for (const p of ref.prompts) {
      const r = spawnSync(process.execPath, ["dist/src/cli/main.js", "generate", "--device", "cuda", "--model-path", "test/fixtures/'$f'",
        "--input-ids", p.prompt_ids.join(","), "--max-new-tokens", "16", "--json"], { encoding: "utf8" });
      if (r.status !== 0) { console.log(r.stderr); process.exit(1); }
      const o = JSON.parse(r.stdout).output_ids;
      // Compare up to the first token whose reference top-2 margin is below 0.5 (bf16 may flip there).
      for (let i = 0; i < p.greedy_ids.length; i++) { if (p.greedy_top2_margins[i] < 0.5) break; total++; if (o[i] === p.greedy_ids[i]) same++; else break; }
    }
    console.log(JSON.stringify({ fixture: "'$f'", clear_margin_tokens: total, identical: same }));
  ' | tee -a "$out/generate_cuda.jsonl"
done
for b in 1 64; do
  node dist/src/cli/main.js bench-one-batch --model-path bench/configs/scout-4layer --load-format dummy \
    --batch-size $b --input-len 1024 --output-len 32 --json | tee -a "$out/scout4_h100.jsonl"
done
node dist/src/cli/main.js launch --device cuda --port 30000 > "$out/launch.log" 2>&1 &
pid=$!
for i in $(seq 1 120); do grep -q "ready to roll" "$out/launch.log" && break; sleep 0.5; done
tail -2 "$out/launch.log"
curl -s http://127.0.0.1:30000/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"default","messages":[{"role":"user","content":"Who are you?"}],"max_tokens":48,"temperature":0}' | tee "$out/chat.json"; echo
for c in 1 32; do
  node dist/bench/serve_smoke.js --requests $((c * 2)) --concurrency $c --input-len 512 --output-len 128 | tee -a "$out/demo_serve_cuda.jsonl"
done
kill $pid; wait $pid 2>/dev/null
