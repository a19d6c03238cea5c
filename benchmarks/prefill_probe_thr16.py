# One prefill step of 16 fresh 128-token prompts (demo model), timed REPS times: min and median.
# usage (from a tree root): PYTHONPATH=src python3 benchmarks/prefill_probe_thr16.py QUANT REPS LABEL
import sys
import time

import torch

sys.path.insert(0, "src")
from minerva import LLM, SamplingParams

llm = LLM(model="demo", device="cpu", quantization=sys.argv[1], progress=False)
sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
eng = llm.engine
ts = []
for r in range(int(sys.argv[2])):
    for i in range(16):
        eng.add_request(
            torch.randint(
                3, 4000, (128,), generator=torch.Generator().manual_seed(7000 + 16 * r + i)
            ).tolist(),
            sp,
            request_id=f"r{r}-{i}",
        )
    t = time.perf_counter()
    eng.step()
    ts.append(time.perf_counter() - t)
    while eng.has_unfinished_requests():
        eng.step()
ts = ts[1:]
print(
    f"{sys.argv[3]} {sys.argv[1]} prefill of 16x128: min {1e3 * min(ts):.1f} med {1e3 * sorted(ts)[len(ts) // 2]:.1f} ms"
)
