#!/usr/bin/env bash
# The GGUF-on-CUDA measurements in two steps on one GPU machine (issue: quantized inference on
# CUDA). Needs the llama.cpp source trimmed to its tools in .peer/llama.cpp (see shared PEERS
# notes) and the gguf wheel in .whl; OUT is where results go.
#   step 1: build llama.cpp's tools in the background, kernel tests, a short kernel sweep, the
#           random-weight GGUF files and Minerva's measurements on them
#   step 2: wait for the build, llama.cpp's measurements on the same files, the engine tests
#   step all: one call of under 10 minutes (no sweep, 64 concurrent only), each part time-boxed
#   step profile: the build in the background; 7B files, the kernels of a decode step with the
#           float and the 8-bit-activation GEMVs (decode_variants --gguf), the one-token sweep
#   step batch: kernel tests, the several-token sweep, 64 concurrent with and without the scratch
#   step llama: finish the build (incremental), llama.cpp's measurements on the same files
#   step session5: every GPU test, decode with the producer-quantized x vs a quantize launch, fp8
#   step own: the int8 / int4 weight and fp8 KV tests, Minerva on a random 7B at int8 and int4
set -u
step=${1:?step 1 or 2}
OUT=${OUT:-benchmarks/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src:. PYTHONUNBUFFERED=1
MODELS=${MODELS:-"mistral-7b:Q4_K_M mistral-7b:Q8_0 tinyllama-1.1b:Q4_K_M"}
T=${TIME_SCALE:-100}  # percent of each part's time box
build_llama() {
    setsid nohup bash -c "cmake -S .peer/llama.cpp -B /tmp/llama-build -G Ninja \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        && cmake --build /tmp/llama-build -j ${BUILD_JOBS:-12} --target llama-bench llama-batched-bench" \
        > /tmp/llbuild.log 2>&1 < /dev/null &
}
if [ "$step" = all ]; then
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    build_llama
    timeout $((90 * T / 100)) python3 -m pytest -q -p no:cacheprovider \
        tests/gpu/test_quant_kernels.py 2>&1 | tail -4 | tee "$OUT/tests_quant_kernels.txt"
    timeout $((270 * T / 100)) python3 benchmarks/gpu_quant_bench.py --parts files minerva \
        --models $MODELS --concurrency 64 --output "$OUT" 2>&1 | tail -6
    timeout $((90 * T / 100)) python3 -m pytest -q -p no:cacheprovider \
        tests/gpu/test_quant_engine.py -k "q8_0 or q4_k_m" 2>&1 | tail -6 \
        | tee "$OUT/tests_quant_engine.txt"
    timeout 40 bash -c 'while pgrep -f "cmake --build" > /dev/null; do sleep 2; done'
    tail -1 /tmp/llbuild.log
    timeout $((110 * T / 100)) python3 benchmarks/gpu_quant_bench.py --parts llama \
        --models $MODELS --concurrency 64 --output "$OUT" 2>&1 | tail -8
    exit 0
fi
if [ "$step" = profile ]; then
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    build_llama
    python3 benchmarks/gpu_quant_bench.py --parts files --models $MODELS --output "$OUT" \
        2>&1 | grep -v "^|" | tail -4
    profile() {
        timeout 150 python3 benchmarks/decode_variants.py --gguf "/tmp/qbench/$1.gguf" \
            --variants default int8 --profile --output "$OUT" 2>&1 | grep -v Warning | tail -32
    }
    profile mistral-7b-Q4_K_M
    timeout 150 python3 benchmarks/gpu_quant_kernels.py --types Q4_K Q6_K Q8_0 \
        --parts gemv8 gemv --shapes qkv gate_up down --budget-s 110 --output "$OUT" 2>&1 | tail -12
    profile mistral-7b-Q8_0
    tail -2 /tmp/llbuild.log
    exit 0
fi
if [ "$step" = batch ]; then  # the several-token kernels; 64 concurrent with each path
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 benchmarks/gpu_quant_bench.py --parts files --models mistral-7b:Q4_K_M \
        --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_kernels.py 2>&1 \
        | tail -3 | tee "$OUT/tests_quant_kernels.txt"
    timeout 170 python3 benchmarks/gpu_quant_kernels.py --types Q4_K Q6_K --parts small prefill \
        --small-m 64 256 --shapes gate_up down --budget-s 150 --output "$OUT" 2>&1 | tail -12
    wait
    for rows in 16 256; do
        timeout 110 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
            --models mistral-7b:Q4_K_M --dequant-rows $rows --tag="-rows$rows" --output "$OUT" \
            2>&1 | grep "minerva" | cut -c1-600
    done
    exit 0
fi
if [ "$step" = conc ]; then  # 64 concurrent with each several-token path
    [ -e /tmp/qbench/mistral-7b-Q4_K_M.gguf ] || python3 benchmarks/gpu_quant_bench.py \
        --parts files --models mistral-7b:Q4_K_M --output "$OUT" > /tmp/files.log 2>&1
    for rows in ${ROWS:-16 256}; do
        timeout 150 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
            --models mistral-7b:Q4_K_M --dequant-rows $rows --tag="-rows$rows" --output "$OUT" \
            2>&1 | grep -v Warn | tail -3 | cut -c1-900
    done
    exit 0
fi
if [ "$step" = int8 ]; then  # the int8 tensor-core GEMM: tests, sweep, the engine with it
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 benchmarks/gpu_quant_bench.py --parts files --models mistral-7b:Q4_K_M \
        --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_kernels.py 2>&1 \
        | tail -3 | tee "$OUT/tests_quant_kernels.txt"
    timeout 170 python3 benchmarks/gpu_quant_kernels.py --types Q4_K Q6_K --parts int8 \
        --int8-m 64 512 --shapes gate_up down --budget-s 150 --output "$OUT" 2>&1 | tail -8
    wait
    for v in "256 -int8" "4096 -int8all"; do
        set -- $v
        timeout 120 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
            --models mistral-7b:Q4_K_M --int8-rows $1 --tag="$2" --output "$OUT" \
            2>&1 | grep -v Warn | tail -2 | cut -c1-700
    done
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_engine.py 2>&1 \
        | tail -4 | tee "$OUT/tests_quant_engine.txt"
    exit 0
fi
if [ "$step" = final ]; then  # every GPU test, then Minerva on the three files
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 benchmarks/gpu_quant_bench.py --parts files --models $MODELS \
        --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 220 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -6 \
        | tee "$OUT/tests_gpu.txt"
    wait
    timeout 330 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
        --models $MODELS --output "$OUT" 2>&1 | grep "^|" | tail -5
    exit 0
fi
if [ "$step" = fp8 ]; then  # every GPU test, then in-situ fp8 on a random 7B bf16 folder
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 benchmarks/gpu_quant_bench.py --parts files --models mistral-7b:fp8 \
        --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 240 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu 2>&1 | tail -8 \
        | tee "$OUT/tests_gpu.txt"
    wait
    tail -2 /tmp/files.log
    timeout 240 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
        --models mistral-7b:fp8 --output "$OUT" 2>&1 | grep -v Warn | tail -4 | cut -c1-900
    exit 0
fi
if [ "$step" = own ]; then  # int8 / int4 weights and the fp8 KV cache on Triton: tests, 7B
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 benchmarks/gpu_quant_bench.py --parts files --models mistral-7b:int8 \
        --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu/test_int8.py \
        tests/gpu/test_int4.py tests/gpu/test_kv_cache_fp8.py tests/gpu/test_fp8.py 2>&1 \
        | tail -6 | tee "$OUT/tests_own_formats.txt"
    wait
    timeout 300 python3 benchmarks/gpu_quant_bench.py --parts minerva --concurrency 64 \
        --models mistral-7b:int8 mistral-7b:int4 --output "$OUT" 2>&1 | grep -v Warn | tail -4 \
        | cut -c1-900
    exit 0
fi
if [ "$step" = session5 ]; then  # every GPU test; producer-quantized x; fp8 x in one kernel
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 benchmarks/gpu_quant_bench.py --parts files --models mistral-7b:Q4_K_M \
        mistral-7b:fp8 --output "$OUT" > /tmp/files.log 2>&1 &
    timeout 240 python3 -m pytest -q -p no:cacheprovider -rf tests/gpu 2>&1 | tail -8 \
        | tee "$OUT/tests_gpu.txt"
    wait
    tail -2 /tmp/files.log
    timeout 110 python3 benchmarks/decode_variants.py --gguf /tmp/qbench/mistral-7b-Q4_K_M.gguf \
        --variants unfused-quant fused-quant --output "$OUT" 2>&1 | grep -v Warn | tail -6
    timeout 170 python3 benchmarks/fp8_prefill.py --folder /tmp/qbench/mistral-7b-bf16 \
        --output "$OUT" 2>&1 | grep -v Warn | tail -4
    exit 0
fi
if [ "$step" = llama ]; then
    cmake --build /tmp/llama-build -j 16 --target llama-bench llama-batched-bench 2>&1 | tail -2
    timeout 300 python3 benchmarks/gpu_quant_bench.py --parts llama --models $MODELS \
        --concurrency 64 --output "$OUT" 2>&1 | tail -8
    exit 0
fi
if [ "$step" = 1 ]; then
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    build_llama
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_kernels.py 2>&1 \
        | tail -4 | tee "$OUT/tests_quant_kernels.txt"
    timeout 150 python3 benchmarks/gpu_quant_kernels.py --types Q4_K Q6_K Q8_0 \
        --parts gemv8 gemv --shapes qkv gate_up down --budget-s 60 --output "$OUT" 2>&1 | tail -9
    python3 benchmarks/gpu_quant_bench.py --parts files minerva --models $MODELS \
        --output "$OUT" 2>&1 | tail -8
    tail -2 /tmp/llbuild.log
else
    while pgrep -f "cmake --build" > /dev/null; do sleep 3; done
    tail -2 /tmp/llbuild.log
    python3 benchmarks/gpu_quant_bench.py --parts llama --models $MODELS \
        --output "$OUT" 2>&1 | tail -8
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_engine.py 2>&1 \
        | tail -8 | tee "$OUT/tests_quant_engine.txt"
fi
