#!/usr/bin/env bash
# Before/after on one GPU machine in one run: gpu_bench.py and decode_variants.py (default
# variant) of two checkouts, in A B B A order per shape, with nvidia-smi clocks and power
# sampled every second beside them.
#
#   benchmarks/gpu_before_after.sh BEFORE_DIR OUT_DIR SHAPE...
#
# BEFORE_DIR holds the older checkout's src/ and benchmarks/; the current tree is "after".
# Batches 64 and 256 only; transformers and the sync-scheduling comparison are skipped (they
# measure the peer, not the change). Few files, appended after every run, so a run cut short
# keeps what it measured: runs.jsonl (each result JSON with side/shape/repeat), logs.txt,
# nvidia_smi.csv, summary.json (means per side and after/before ratios).
set -uo pipefail
before=$(realpath "$1"); out=$(realpath -m "$2"); shift 2
after=$(pwd)
mkdir -p "$out"
tmp=$(mktemp -d)
nvidia-smi --query-gpu=timestamp,name,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu \
    --format=csv -l 1 >> "$out/nvidia_smi.csv" &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT

collect() {  # side shape repeat dir
    python3 - "$@" "$out/runs.jsonl" <<'EOF'
import json, pathlib, sys
side, shape, rep, folder, runs = sys.argv[1:]
with open(runs, "a") as f:
    for p in sorted(pathlib.Path(folder).glob("*.json")):
        f.write(json.dumps({"side": side, "shape": shape, "repeat": int(rep), "file": p.name,
                            "result": json.loads(p.read_text())}) + "\n")
EOF
}

run() {  # side shape repeat
    local dir=$([ "$1" = before ] && echo "$before" || echo "$after")
    local dest="$tmp/$1_$2_$3"
    mkdir -p "$dest"
    echo "=== $1 $2 #$3 $(date -u +%T)" | tee -a "$out/logs.txt"
    (cd "$dir" && PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py \
        --shape "$2" --batches 64 256 --no-transformers --no-compare-sync --output "$dest") \
        >> "$out/logs.txt" 2>&1 || echo "gpu_bench $1 $2 failed" | tee -a "$out/logs.txt"
    (cd "$dir" && PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1 python3 benchmarks/decode_variants.py \
        --shape "$2" --variants default --output "$dest") \
        >> "$out/logs.txt" 2>&1 || echo "decode_variants $1 $2 failed" | tee -a "$out/logs.txt"
    collect "$1" "$2" "$3" "$dest"
    summarize
}

summarize() {
    python3 - "$out/runs.jsonl" "$out/summary.json" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    res, key = r["result"], (r["shape"], r["side"])
    d = rows.setdefault(key, {})
    if r["file"].startswith("gpu_bench"):
        d.setdefault("decode_batch1", []).append(res["decode_batch1_tok_s"])
        d.setdefault("prefill512", []).append(res["prefill512_tok_s"])
        for b, v in res["decode_only_tok_s"].items():
            d.setdefault(f"decode_steps_{b}", []).append(v)
        for b, v in res["throughput_128in_128out_tok_s"].items():
            d.setdefault(f"whole_run_{b}", []).append(v)
    elif r["file"].startswith("decode_variants"):
        d.setdefault("variants_default_b1", []).append(res["decode_batch1_tok_s"]["default"])
summary = {}
for (shape, side), d in sorted(rows.items()):
    summary.setdefault(shape, {})[side] = {k: statistics.mean(v) for k, v in d.items()}
for shape, s in summary.items():
    if "before" in s and "after" in s:
        s["after_over_before"] = {k: s["after"][k] / s["before"][k] for k in s["after"] if k in s["before"]}
json.dump(summary, open(sys.argv[2], "w"), indent=1)
for shape, s in summary.items():
    for k, v in s.get("after_over_before", {}).items():
        print(f"{shape:15} {k:22} before {s['before'][k]:10.1f} after {s['after'][k]:10.1f} ratio {v:.3f}")
EOF
}

for shape in "$@"; do
    run before "$shape" 1; run after "$shape" 1; run after "$shape" 2; run before "$shape" 2
done
