#!/usr/bin/env bash
# Issue 17's trained target/draft pair on one GPU machine, in one call of under 10 minutes:
# train the demo family's bigger sibling (scripts/train_demo_model.py --shape target, same
# corpus and tokenizer), then spec_bench.py --parts pair with the bundled demo model as draft.
#
#   OUT=DIR benchmarks/spec_pair_gpu.sh      (carry build/demo_train: 20 MB of token ids)
#
# The device has no internet and no Debian doc packages, so the data comes carried; without
# it, the script rebuilds it only where the corpus sources are installed (see the demo card).
# Into $OUT, 8 files of at most 15 MiB, copied as soon as they exist (a cut-short run keeps
# them): target/ (3 shards, model.safetensors.index.json, config.json), target_rest.tar
# (generation_config.json, tokenizer files, train_log.json, loss_curve.png), the bench JSON,
# spec_pair_gpu.log. Unpack: mkdir D; cp OUT/target/* D/; tar -xf OUT/target_rest.tar -C D.
#
# Environment (defaults for the H100): STEPS 2000, BATCH 64, LR 2e-3, BUDGET 270 (training
# seconds, compile included: steps are cut to fit), DEVICE cuda, COMPILE --compile, KS "2 4 6",
# K 4, TOKENS 128, REPEATS 3, PROMPTS 6, VAL_BATCHES 8, EVAL_EVERY 200, CALL_SECONDS 570 (the
# benchmark is cut at this many seconds since the start), TARGET (a trained folder, e.g. a
# carried build/demo_target: no data needed, no training). The whole script on a CPU:
#   OUT=/tmp/o DEVICE=cpu COMPILE= STEPS=2 BATCH=1 VAL_BATCHES=1 EVAL_EVERY=1 KS=2 K=2 TOKENS=8 \
#       REPEATS=1 PROMPTS=2 CALL_SECONDS=3000 benchmarks/spec_pair_gpu.sh
set -uo pipefail
OUT=${OUT:?set OUT to the folder whose files come back}
mkdir -p "$OUT/target"
main() {
export PYTHONPATH=src:benchmarks PYTHONUNBUFFERED=1
STEPS=${STEPS:-2000} BATCH=${BATCH:-64} LR=${LR:-2e-3} BUDGET=${BUDGET:-270}
DEVICE=${DEVICE:-cuda} COMPILE=${COMPILE---compile} KS=${KS:-2 4 6} K=${K:-4}
TOKENS=${TOKENS:-128} REPEATS=${REPEATS:-3} PROMPTS=${PROMPTS:-6}
VAL_BATCHES=${VAL_BATCHES:-8} EVAL_EVERY=${EVAL_EVERY:-200}
data=build/demo_train
demo=src/minerva/demo_model
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

# 1. Data: carried, or rebuilt where the corpus sources exist (only to train).
if [ -z "${TARGET:-}" ] && [ ! -f "$data/train.bin" ]; then
    if [ ! -d /usr/share/doc/python3.11/html ]; then
        echo "no $data and no corpus sources here: carry build/demo_train (made by" \
             "build_demo_corpus.py + train_demo_model.py prepare)"; exit 2
    fi
    python3 scripts/build_demo_corpus.py --out build/demo_data || exit 2
    python3 scripts/train_demo_model.py prepare --corpus build/demo_data --data "$data" || exit 2
fi
for f in tokenizer.json tokenizer_config.json; do  # the draft's tokenizer, byte for byte
    src=${TARGET:-$data}
    cmp -s "$src/$f" "$demo/$f" || { echo "$src/$f differs from $demo/$f"; exit 2; }
done

# 2. Train the target (or take TARGET) and send its files back at once.
if [ -n "${TARGET:-}" ]; then
    target=$TARGET
else
    target=$(mktemp -d)/demo_target
    python3 scripts/train_demo_model.py train --shape target --data "$data" --out "$target" \
        --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --eval-every "$EVAL_EVERY" \
        --val-batches "$VAL_BATCHES" --keep-best --time-budget "$BUDGET" --device "$DEVICE" \
        $COMPILE || exit 3
fi
cp "$target"/*.safetensors "$target/config.json" "$OUT/target/" || exit 3
cp "$target/model.safetensors.index.json" "$OUT/target/" 2>/dev/null
rest=(generation_config.json tokenizer.json tokenizer_config.json)
for f in train_log.json loss_curve.png; do [ -f "$target/$f" ] && rest+=("$f"); done
tar -cf "$OUT/target_rest.tar" -C "$target" "${rest[@]}" || exit 3
ls -l "$OUT/target" "$OUT/target_rest.tar"

# 3. Held-out perplexity of the draft on this device (the target's is in train_log.json).
python3 - "$demo" "$DEVICE" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
from train_demo_model import heldout_perplexity
ppl = heldout_perplexity(Path(sys.argv[1]), Path(sys.argv[1]) / "heldout.txt", device=sys.argv[2])
print(f"demo (draft) held-out perplexity {ppl:.3f}")
EOF

# 4. The pair: plain vs draft speculation at batch 1, time-boxed to the call's end.
left=$((${CALL_SECONDS:-570} - SECONDS))
echo "benchmark: $left s left"
timeout "$left" python3 benchmarks/spec_bench.py --device "$DEVICE" --parts pair \
    --target-folder "$target" --ks $KS --k "$K" --tokens "$TOKENS" --repeats "$REPEATS" \
    --pair-prompts "$PROMPTS" --output "$OUT" > /tmp/spec_pair_bench.txt 2>&1
status=$?
grep -v '^ \|^[{}]' /tmp/spec_pair_bench.txt | tail -40  # the log without the JSON dump
[ $status -eq 0 ] || { echo "benchmark failed or cut short (status $status)"; exit 4; }

# 5. The table, last.
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from spec_pair import summary
path = next(Path(sys.argv[1]).glob("spec_bench_pair_*.json"))
result = json.loads(path.read_text())["results"][0]
t = result["target"]
print(f"\ntarget {t.get('num_parameters')} params, {t['num_hidden_layers']} layers x "
      f"{t['hidden_size']}; steps {t.get('steps')} (kept {t.get('kept_step')}); held-out "
      f"perplexity {t.get('heldout_perplexity')}; device {result.get('gpu', 'cpu')}")
print(summary(result))
print(f"files: {sorted(str(p.relative_to(sys.argv[1])) for p in Path(sys.argv[1]).rglob('*') if p.is_file())}")
EOF
}
main 2>&1 | tee -a "$OUT/spec_pair_gpu.log"
exit "${PIPESTATUS[0]}"
