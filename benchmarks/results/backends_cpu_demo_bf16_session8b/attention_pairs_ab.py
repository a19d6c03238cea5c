"""The prefill attention alone at the demo model's shape, query heads in pairs vs one at a
time (cpu_prefill.c's minerva_prefill_pairs), alternating; run from the worktree root:

    flock /tmp/minerva_bench.lock env PYTHONPATH=src python \
        benchmarks/results/backends_cpu_demo_bf16_session8b/attention_pairs_ab.py

(the run of attention_pairs_ab.txt; only its docstring and layout changed since)."""

import ctypes
import statistics
import sys
import time

import torch

sys.path.insert(0, "tests/unit")
from test_cpu_attention import _step  # noqa: E402

from minerva.attention import cpu_backend, cpu_prefill  # noqa: E402
from minerva.ops import native  # noqa: E402

torch.set_num_threads(2)
cpu_backend.load()
lib = native.load(cpu_prefill.SOURCE)
pairs = ctypes.c_int.in_dll(lib, "minerva_prefill_pairs")
gen = torch.Generator().manual_seed(1)
meta = _step([128], [128], 16, 64, gen)
cache = torch.randn(2, 64, 16, 2, 64, generator=gen).bfloat16()
q = torch.randn(128, 4, 64, generator=gen).bfloat16()
res = {0: [], 1: []}
with torch.inference_mode():
    for _ in range(10):
        for flag in (1, 0):
            pairs.value = flag
            for _ in range(20):
                cpu_backend.paged_attention(q, cache, meta, 0.125, None)
            t = time.perf_counter()
            for _ in range(200):
                cpu_backend.paged_attention(q, cache, meta, 0.125, None)
            res[flag].append((time.perf_counter() - t) / 200 * 1e6)
on, off = res[1], res[0]
print(
    f"pairs us median {statistics.median(on):.1f} min {min(on):.1f} ; "
    f"single median {statistics.median(off):.1f} min {min(off):.1f}"
)
