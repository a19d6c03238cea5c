#!/usr/bin/env bash
# GPU figures of speculative decoding (#17) and structured output (#18), and the GPU tests, on one
# lent GPU machine. Needs the llguidance and gguf wheels in .whl (carry .whl); OUT gets the results.
#   step first:      tests/gpu, structured at the 7B shape, the spec ceiling (one call)
#   step second:     int8 / int4 7B, spec n-gram + 64 concurrent, producer-quantized x
#   step combined:   tests/gpu, structured at 7B, spec n-gram + 64, TinyLlama prefill before /
#                    after (BEFORE_SRC=<old checkout>/src) (one call)
#   step rest:       spec ceiling, int4 sweep, int4 7B end to end, dp4a and float x
#   step priority:   int4 and Qwen3 tests, int4 7B end to end, structured at 7B, spec n-gram + 64
#                    (one call of ~460 s, when few machines are lent)
#   step minimal:    priority without spec (~350 s)
#   step later:      TinyLlama prefill before / after (BEFORE_SRC), tests/gpu, spec ceiling, int4
#                    with float x (the call after priority)
#   step tests:      tests/gpu, the summary line into $OUT/gpu_tests.txt
#   step structured: constrained vs free decode steps at 1/64/256 (demo model, 7B-shaped body)
#   step spec:       spec_bench ceiling (7B target, TinyLlama-shaped draft), n-gram, 64 concurrent
set -u
step=${1:?step: first, second, combined, priority, minimal, later, rest, tests, structured or spec}
OUT=${OUT:-benchmarks/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1  # absolute: the structured step runs in benchmarks/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
prefill_abba() {  # #11: TinyLlama 512-token prefill, BEFORE_SRC (an older checkout's src) vs this
    for side in before after after before; do
        src=$([ $side = before ] && echo "${BEFORE_SRC:?}" || echo "$PWD/src")
        PYTHONPATH=/tmp/site:$src:$PWD/benchmarks timeout 40 python3 benchmarks/prefill_profile.py \
            --shape tinyllama-1.1b --label $side --output "$OUT" 2>&1 | grep -v Warn | tail -9
    done
}
minimal_parts() {  # what ~400 s of device time allows: int4 and Qwen3 tests, int4 7B, #18 at 7B
    timeout 80 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu/test_int4.py \
        tests/gpu/test_cuda_engine.py::test_qwen3_graphs_match_transformers 2>&1 | tail -6
    timeout 170 python3 benchmarks/gpu_quant_bench.py --parts files minerva --concurrency 64 \
        --models mistral-7b:int4 --output "$OUT" 2>&1 | grep -v Warn | tail -3 | cut -c1-1500
    (cd benchmarks && timeout 80 python3 structured_decoding.py --device cuda --shape mistral-7b \
        --batches 1 64 256 --output "$OUT/structured_decoding_cuda_mistral-7b.json" 2>&1 \
        | grep -v Warn | tail -4)
}
case "$step" in
first)  # every GPU test (cut by SIGINT so pytest still prints its summary), #18 at 7B, #17 ceiling
    timeout -s INT 250 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu 2>&1 | tail -14 \
        | tee "$OUT/gpu_tests.txt"
    (cd benchmarks && timeout 140 python3 structured_decoding.py --device cuda --shape mistral-7b \
        --output "$OUT/structured_decoding_cuda_mistral-7b.json" 2>&1 | grep -v Warn | tail -5)
    timeout 160 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b \
        --draft-shape tinyllama-1.1b --k 4 --parts ceiling --output "$OUT" 2>&1 | tail -24 ;;
second)  # a random 7B at int8 / int4 (#13), #17 n-gram and 64 concurrent, producer-quantized x
    python3 benchmarks/gpu_quant_bench.py --parts files --models mistral-7b:int8 \
        mistral-7b:Q4_K_M --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 200 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b --k 4 \
        --concurrency 64 --parts ngram concurrency --output "$OUT" 2>&1 | tail -30
    wait
    timeout 230 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
        --models mistral-7b:int8 mistral-7b:int4 --output "$OUT" 2>&1 | grep -v Warn | tail -4 \
        | cut -c1-900
    timeout 100 python3 benchmarks/decode_variants.py --gguf /tmp/qbench/mistral-7b-Q4_K_M.gguf \
        --variants unfused-quant fused-quant --output "$OUT" 2>&1 | grep -v Warn | tail -6 ;;
combined)  # one call when few are lent: GPU tests, #18 at 7B, #17 n-gram / 64, #11 TinyLlama prefill
    timeout -s INT 220 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu 2>&1 | tail -14 \
        | tee "$OUT/gpu_tests.txt"
    (cd benchmarks && timeout 85 python3 structured_decoding.py --device cuda --shape mistral-7b \
        --batches 1 64 256 --output "$OUT/structured_decoding_cuda_mistral-7b.json" 2>&1 \
        | grep -v Warn | tail -4)
    timeout 110 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b --k 4 \
        --concurrency 64 --parts ngram concurrency --output "$OUT" 2>&1 \
        | grep -E "speedup|tok_s" | head -20
    prefill_abba ;;
priority)  # minimal, then spec n-gram + 64 concurrent
    minimal_parts
    timeout 110 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b --k 4 \
        --concurrency 64 --parts ngram concurrency --output "$OUT" 2>&1 \
        | grep -E "speedup|tok_s" | head -20 ;;
minimal) minimal_parts ;;
later)
    prefill_abba
    timeout -s INT 300 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu 2>&1 | tail -14 \
        | tee "$OUT/gpu_tests.txt"
    timeout 120 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b \
        --draft-shape tinyllama-1.1b --k 4 --parts ceiling --output "$OUT" 2>&1 \
        | grep -E "speedup|rounds|tok_s|acceptance" | head -20
    timeout 150 python3 benchmarks/gpu_quant_bench.py --parts files minerva --concurrency 64 \
        --int4-float-x --tag -floatx --models mistral-7b:int4 --output "$OUT" 2>&1 \
        | grep -v Warn | tail -3 | cut -c1-1500 ;;
rest)  # the second call: #17 ceiling, int4 sweep, int4 7B end to end (dp4a and float x)
    timeout 120 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b \
        --draft-shape tinyllama-1.1b --k 4 --parts ceiling --output "$OUT" 2>&1 \
        | grep -E "speedup|rounds|tok_s|acceptance" | head -20
    timeout 70 python3 benchmarks/int4_sweep.py --budget-s 50 --output "$OUT" 2>&1 | tail -14
    timeout 170 python3 benchmarks/gpu_quant_bench.py --parts files minerva --concurrency 64 \
        --models mistral-7b:int4 --output "$OUT" 2>&1 | grep -v Warn | tail -3 | cut -c1-1500
    timeout 100 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
        --int4-float-x --tag -floatx --models mistral-7b:int4 --output "$OUT" 2>&1 \
        | grep -v Warn | tail -3 | cut -c1-1500 ;;
tests)
    timeout 330 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -15 \
        | tee "$OUT/gpu_tests.txt" ;;
structured)
    cd benchmarks || exit 1
    timeout 200 python3 structured_decoding.py --device cuda \
        --output "$OUT/structured_decoding_cuda.json" 2>&1 | grep -v Warn | tail -5
    timeout 250 python3 structured_decoding.py --device cuda --shape mistral-7b \
        --output "$OUT/structured_decoding_cuda_mistral-7b.json" 2>&1 | grep -v Warn | tail -5 ;;
spec)
    timeout 280 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b \
        --draft-shape tinyllama-1.1b --k 4 --parts ceiling --output "$OUT" 2>&1 | tail -30
    timeout 280 python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b --k 4 \
        --concurrency 64 --parts ngram concurrency --output "$OUT" 2>&1 | tail -40 ;;
esac
