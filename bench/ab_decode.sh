#!/usr/bin/env bash
# Decode A/B of two builds on the same machine in one call: the baseline tree BASE (a directory
# holding dist/, build/ and package.json of the other commit) and this tree, alternated REPS times
# per case, so run-to-run and machine-to-machine spread shows beside the difference (the third
# pass's before/after rows in docs/PERF.md came from this loop, run by hand before it was a script).
#   BASE=/path/to/old-tree [REPS=2] [CASES="..."] bash bench/ab_decode.sh
# A case is "<config dir>:<bench-one-batch args>"; the default is batch 1 on one Scout tp-4 rank's
# shapes and on the 4-layer Scout-width config, 1K context. Extra environment for the new build
# only: NEW_ENV="TSGLANG_PDL=0". DEVICE=cpu runs it without a GPU (a check of the script).
# Results to $OUT/ab.jsonl (each line labelled); each run's median step is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-/tmp/ab_decode}; mkdir -p "$out"
base=${BASE:?BASE must name the baseline tree (dist/, build/, package.json)}
reps=${REPS:-2}
cases=${CASES:-"bench/configs/scout-tp4-rank:--batch-size 1 --input-len 1024 --output-len 64
bench/configs/scout-4layer:--batch-size 1 --input-len 1024 --output-len 64"}
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1

run() { # label, tree, env, config, args
  local label=$1 tree=$2 env=$3 cfg=$4 args=$5
  (cd "$tree" && env $env node dist/src/cli/main.js bench-one-batch --load-format dummy --device "${DEVICE:-cuda}" --json \
    --model-path "$root/$cfg" $args) > "$out/last.json" 2> "$out/last.err" || { tail -3 "$out/last.err"; return; }
  echo "$label $(grep -o '"decode_step_s_median":[0-9.]*' "$out/last.json") $(grep -o '"fraction_of_bound":[0-9.]*' "$out/last.json")"
  sed "s|^{|{\"label\":\"$label\",|" "$out/last.json" >> "$out/ab.jsonl"
}

while IFS= read -r c; do
  [[ -z $c ]] && continue
  cfg=${c%%:*}; args=${c#*:}
  name=$(basename "$cfg")
  for i in $(seq 1 "$reps"); do
    run "$name-base" "$base" "X=1" "$cfg" "$args"
    run "$name-new" "$root" "${NEW_ENV:-X=1}" "$cfg" "$args"
  done
done <<< "$cases"
