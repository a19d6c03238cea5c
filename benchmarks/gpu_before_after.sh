#!/usr/bin/env bash
# Before/after on one GPU machine in one run: gpu_bench.py and decode_variants.py (default
# variant) of two checkouts, in A B B A order per shape, with nvidia-smi clocks and power
# sampled every second beside them. Everything lands in one tarball (the device returns few files).
#
#   benchmarks/gpu_before_after.sh BEFORE_DIR OUT_DIR SHAPE... 
#
# BEFORE_DIR holds the older checkout's src/ and benchmarks/; the current tree is "after".
# Batches 64 and 256 only; transformers and the sync-scheduling comparison are skipped (they
# measure the peer, not the change).
set -uo pipefail
before=$(realpath "$1"); out=$(realpath -m "$2"); shift 2
after=$(pwd)
mkdir -p "$out/work"
nvidia-smi --query-gpu=timestamp,name,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu \
    --format=csv -l 1 > "$out/work/nvidia_smi.csv" &
smi=$!
run() {  # side shape
    local dir=$([ "$1" = before ] && echo "$before" || echo "$after")
    local dest="$out/work/$1_$2_$3"
    mkdir -p "$dest"
    echo "=== $1 $2 $(date -u +%T)" | tee -a "$out/work/order.txt"
    (cd "$dir" && PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py \
        --shape "$2" --batches 64 256 --no-transformers --no-compare-sync --output "$dest") \
        > "$dest/gpu_bench.log" 2>&1 || echo "gpu_bench $1 $2 failed" | tee -a "$out/work/order.txt"
    (cd "$dir" && PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1 python3 benchmarks/decode_variants.py \
        --shape "$2" --variants default --output "$dest") \
        > "$dest/decode_variants.log" 2>&1 || echo "decode_variants $1 $2 failed" | tee -a "$out/work/order.txt"
    tail -3 "$dest/gpu_bench.log" "$dest/decode_variants.log"
}
for shape in "$@"; do
    run before "$shape" 1; run after "$shape" 1; run after "$shape" 2; run before "$shape" 2
done
kill $smi
python3 - "$out/work" <<'EOF'
import json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1])
rows = {}
for d in sorted(p for p in work.iterdir() if p.is_dir()):
    side, shape, _ = d.name.split("_", 2)
    for f in d.glob("gpu_bench_*.json"):
        g = json.loads(f.read_text())
        r = rows.setdefault((shape, side), {})
        r.setdefault("decode1", []).append(g["decode_batch1_tok_s"])
        r.setdefault("prefill512", []).append(g["prefill512_tok_s"])
        for b, v in g["decode_only_tok_s"].items():
            r.setdefault(f"decode_steps_{b}", []).append(v)
        for b, v in g["throughput_128in_128out_tok_s"].items():
            r.setdefault(f"whole_run_{b}", []).append(v)
    for f in d.glob("decode_variants_*.json"):
        v = json.loads(f.read_text())
        rows.setdefault((shape, side), {}).setdefault("variants_default", []).append(v["decode_batch1_tok_s"]["default"])
summary = {}
for (shape, side), r in sorted(rows.items()):
    summary.setdefault(shape, {})[side] = {k: statistics.mean([x for x in v if x]) for k, v in r.items() if any(v)}
for shape, s in summary.items():
    if "before" in s and "after" in s:
        s["after_over_before"] = {k: s["after"][k] / s["before"][k] for k in s["after"] if k in s["before"]}
(work / "summary.json").write_text(json.dumps(summary, indent=1))
for shape, s in summary.items():
    print(shape)
    for k, v in s.get("after_over_before", {}).items():
        print(f"  {k:24} before {s['before'][k]:10.1f}  after {s['after'][k]:10.1f}  ratio {v:.3f}")
EOF
tar -C "$out" -czf "$out/before_after.tar.gz" work && rm -rf "$out/work"
