#!/usr/bin/env bash
# `minerva tune` on one GPU (issue #16): a random-weight model of a released shape, the grid
# that matters there (CUDA graphs on/off, concurrency, KV dtype), 3 interleaved rounds, then
# each written file measured again twice (does it reproduce within its noise?).
#   bash benchmarks/tune_gpu.sh [shape: tinyllama-1.1b | mistral-7b] [out dir]
# Writes <out>/{throughput,latency}.{toml,json,png} and log.txt (commands, GPU, load).
set -euo pipefail
shape=${1:-tinyllama-1.1b}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cd 'A-Za-z0-9' | tr A-Z a-z)
out=${2:-benchmarks/results/tune_${shape}_${gpu}}
mkdir -p "$out"
dir=$(mktemp -d)
PYTHONPATH=src:benchmarks python3 - "$dir" "$shape" <<'PY'
import json, sys
from shapes import hf_config
open(f"{sys.argv[1]}/config.json", "w").write(json.dumps(hf_config(sys.argv[2], dtype="bfloat16")))
PY
log="$out/log.txt"
{ echo "# $(date -u) $shape on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"; } > "$log"
tune() { echo "\$ minerva tune $*" >> "$log"; PYTHONPATH=src COLUMNS=160 python3 -m minerva.cli tune "$@" >> "$log" 2>&1; }
common=(--model "$dir" --load-format dummy --device cuda --dtype bfloat16 --rounds 3)
tune --goal throughput "${common[@]}" --max-num-seqs 64,256 --enforce-eager false,true \
  --max-num-batched-tokens 8192 --input-len 128 --output-len 128 --num-prompts 256 \
  --output "$out/throughput.toml"
tune --goal latency "${common[@]}" --enforce-eager false,true --max-num-batched-tokens 2048 \
  --input-len 128 --output-len 128 --output "$out/latency.toml"
for goal in throughput latency; do
  for i in 1 2; do
    extra=()
    [ "$goal" = throughput ] && extra=(--input-len 128 --output-len 128 --num-prompts 256)
    [ "$goal" = latency ] && extra=(--input-len 128 --output-len 128)
    tune --goal "$goal" --config "$out/$goal.toml" --rounds 3 "${extra[@]}"
  done
done
echo "# $(date -u) done" >> "$log"
grep -E "best:|now \(the file" "$log"
