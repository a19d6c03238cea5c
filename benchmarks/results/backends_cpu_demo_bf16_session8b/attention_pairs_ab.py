import ctypes, torch, sys, time, statistics
sys.path.insert(0,'tests/unit')
from test_cpu_attention import _step
from minerva.attention import cpu_backend, cpu_prefill
from minerva.ops import native
torch.set_num_threads(2)
cpu_backend.load()
lib = native.load(cpu_prefill.SOURCE); pairs = ctypes.c_int.in_dll(lib, "minerva_prefill_pairs")
gen = torch.Generator().manual_seed(1)
meta = _step([128], [128], 16, 64, gen)
cache = torch.randn(2, 64, 16, 2, 64, generator=gen).bfloat16()
q = torch.randn(128, 4, 64, generator=gen).bfloat16()
res={0:[],1:[]}
with torch.inference_mode():
  for r in range(10):
    for f in (1,0):
        pairs.value=f
        for _ in range(20): cpu_backend.paged_attention(q, cache, meta, 0.125, None)
        t=time.perf_counter()
        for _ in range(200): cpu_backend.paged_attention(q, cache, meta, 0.125, None)
        res[f].append((time.perf_counter()-t)/200*1e6)
print("pairs us median %.1f min %.1f ; single median %.1f min %.1f"%(statistics.median(res[1]),min(res[1]),statistics.median(res[0]),min(res[0])))
