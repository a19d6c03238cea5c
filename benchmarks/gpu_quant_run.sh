#!/usr/bin/env bash
# The GGUF-on-CUDA measurements in two steps on one GPU machine (issue: quantized inference on
# CUDA). Needs the llama.cpp source trimmed to its tools in .peer/llama.cpp (see shared PEERS
# notes) and the gguf wheel in .whl; OUT is where results go.
#   step 1: build llama.cpp's tools in the background, kernel tests, a short kernel sweep, the
#           random-weight GGUF files and Minerva's measurements on them
#   step 2: wait for the build, llama.cpp's measurements on the same files, the engine tests
#   step all: one call of under 10 minutes (no sweep, 64 concurrent only), each part time-boxed
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
        && cmake --build /tmp/llama-build -j 12 --target llama-bench llama-batched-bench" \
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
