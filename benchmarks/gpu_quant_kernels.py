"""The GGUF Triton kernels (ops/triton_quant.py) on one NVIDIA GPU: a launch-config sweep per type
and path, each config checked against dequantize + float32 matmul before it is timed.

    PYTHONPATH=src python3 benchmarks/gpu_quant_kernels.py [--types Q4_K Q8_0 ...]
        [--parts gemv8 gemv small int8 prefill] [--budget-s 420] [--output DIR]

Shapes are a Mistral-7B layer's (qkv, o, gate_up, down). Weights are random bytes with sane
f16 scales, in several copies cycled so no timing reads from L2. Reports the achieved bandwidth
(plane bytes / median time) next to the copy-bandwidth roofline for the one-token kernel, and
TFLOP/s for the several-token paths (against dequantize-to-bf16 + cuBLAS, the scratch variant).
Writes gpu_quant_kernels_<gpu>.json after every measurement (nothing measured is lost when the
budget runs out) and prints the best config per type and path last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import triton
from triton.testing import do_bench

from minerva.ops import triton_gemv, triton_qgemm_int8, triton_qgemv_int8, triton_quant
from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_planes import from_planes, to_planes
from minerva.quant.gguf_types import GGMLType, row_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import copy_bandwidth  # noqa: E402
from gpu_quant_bench import random_blocks  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def random_planes(ggml_type: GGMLType, n: int, k: int) -> torch.Tensor:
    """Random codes with f16 scales in [1e-3, 1e-2), rewritten into planes on the GPU."""
    blocks = random_blocks(ggml_type, n, k, np.random.default_rng(n + k), (1e-3, 1e-2))
    return to_planes(torch.from_numpy(blocks).cuda(), ggml_type, k)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


class Weights:
    """Copies of one random weight (enough to overflow L2), and its float32 reference."""

    def __init__(self, ggml_type: GGMLType, n: int, k: int, l2_bytes: int) -> None:
        first = random_planes(ggml_type, n, k)
        copies = max(1, math.ceil(3 * l2_bytes / first.numel()))
        self.planes = [first] + [first.clone() for _ in range(copies - 1)]
        self.ref = dequantize(from_planes(first, ggml_type, k), ggml_type)  # on the GPU
        self.nbytes = first.numel()
        self.file_bytes = n * row_bytes(ggml_type, k)
        self._i = itertools.count()

    def next(self) -> torch.Tensor:
        return self.planes[next(self._i) % len(self.planes)]


def gemv_configs(span: int) -> list[tuple]:
    return [
        (bn, bk, w, s)
        for bn in (1, 2, 4, 8)
        for bk in (512, 1024, 2048, 4096)
        for w in (4, 8)
        for s in (2,)
        if bk >= span
    ]


def gemv8_configs(span: int) -> list[tuple]:
    return [
        (bn, bk, w, 2)
        for bn in (2, 4, 8, 16)
        for bk in (512, 1024, 2048)
        for w in (2, 4, 8)
        if bk >= span
    ]


def small_configs(span: int, m: int) -> list[tuple]:
    return [
        (bm, bn, bk, w, 3)
        for bm in ((16,) if m <= 16 else (32, 64))
        for bn in ((32, 64, 128) if m <= 16 else (64, 128))
        for bk in ((64, 128, 256) if m <= 16 else (64, 128))
        for w in (4, 8)
        if bk >= span and not (bm * bn >= 8192 and w == 4)
    ]


def int8_configs(m: int) -> list[tuple]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of ops/triton_qgemm_int8.py."""
    bms = (16,) if m <= 16 else (32, 64) if m <= 64 else (64, 128)
    return [
        (bm, bn, w, s)
        for bm in bms
        for bn in (64, 128, 256)
        for w, s in ((4, 3), (8, 3), (8, 4))
        if not (bm == 128 and bn == 256 and w == 4)
    ]


def prefill_configs(span: int) -> list[tuple]:
    base = [
        (64, 128, 64, 4, 3),
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 3),
        (128, 128, 128, 8, 3),
        (128, 256, 64, 8, 3),
        (64, 64, 128, 4, 4),
        (128, 128, 128, 8, 4),
        (256, 128, 64, 8, 3),
    ]
    return [(bm, bn, max(bk, span), w, s) for bm, bn, bk, w, s in base]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["Q4_K", "Q6_K", "Q8_0", "Q5_K", "Q4_0"])
    ap.add_argument("--parts", nargs="+", default=["gemv8", "gemv", "small", "prefill"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--small-m", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--prefill-m", type=int, default=512)
    ap.add_argument("--int8-m", type=int, nargs="+", default=[16, 64, 256, 512])
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--output", default="benchmarks/results")
    args = ap.parse_args()
    start = time.perf_counter()
    gpu = torch.cuda.get_device_name().split()[1].lower()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    out = Path(args.output) / f"gpu_quant_kernels_{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "copy_bandwidth": copy_bandwidth(),
              "triton": triton.__version__, "torch": torch.__version__, "rows": [],
              "skipped": []}  # fmt: skip
    bw = result["copy_bandwidth"]

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))

    def out_of_time() -> bool:
        return time.perf_counter() - start > args.budget_s

    def measure(row: dict, fn, check) -> None:
        try:
            err = check()
            ms = do_bench(fn, warmup=10, rep=50, return_mode="median")
        except Exception as e:  # a config that does not compile or fit is recorded, not fatal
            row.update(error=f"{type(e).__name__}: {str(e)[:200]}")
        else:
            row.update(ms=ms, rel_err=err, ok=err < 2e-2)
        result["rows"].append(row)

    # the bf16 GEMV as the peer of the one-token kernel, on the same shapes
    if "gemv" in args.parts:
        for shape in args.shapes:
            n, k = SHAPES[shape]
            ws = [torch.randn(n, k, device="cuda").bfloat16() for _ in range(3)]
            x = torch.randn(1, k, device="cuda").bfloat16()
            it = itertools.count()

            def dense(x=x, ws=ws, it=it):
                return triton_gemv.gemv(x, ws[next(it) % 3])

            ms = do_bench(dense, warmup=10, rep=50, return_mode="median")
            nbytes = n * k * 2
            result["rows"].append(dict(part="gemv", type="BF16", shape=shape, ms=ms,
                                       gb_s=nbytes / ms / 1e6, roofline=nbytes / bw * 1e3,
                                       config="default", ok=True))  # fmt: skip
        save()

    def sweep(part: str, key: dict, configs, run, ref, extra) -> None:
        """Check and time run(planes, cfg) for every config (out of budget: skipped)."""
        for cfg in configs:
            if out_of_time():
                result["skipped"].append({**key, "part": part, "config": cfg})
                continue
            row = {**key, "part": part, "config": cfg}
            measure(
                row,
                lambda cfg=cfg: run(w.next(), cfg),
                lambda cfg=cfg: rel_err(run(w.planes[0], cfg), ref),
            )
            if "ms" in row:
                row.update(extra(row["ms"]))
        save()

    for type_name in args.types:
        t = GGMLType[type_name]
        span = triton_quant.SPAN[t]
        for shape in args.shapes:
            n, k = SHAPES[shape]
            w = Weights(t, n, k, l2)
            key = {"type": type_name, "shape": shape}
            if "gemv" in args.parts:
                x1 = torch.randn(1, k, device="cuda").bfloat16()
                sweep(
                    "gemv", key, gemv_configs(span),
                    lambda planes, cfg, x1=x1, t=t: triton_quant.qgemv(x1, planes, t, config=cfg)[0],
                    x1.float() @ w.ref.T,
                    lambda ms, w=w: dict(gb_s=w.nbytes / ms / 1e6, roofline=w.nbytes / bw * 1e3,
                                         file_gb_s=w.file_bytes / ms / 1e6),
                )  # fmt: skip
            if "gemv8" in args.parts:  # 8-bit activations: quantize x once, then dp4a
                x1 = torch.randn(1, k, device="cuda").bfloat16()
                xq = triton_qgemv_int8.quantize_x(x1, k)
                o1 = torch.empty(1, n, device="cuda").bfloat16()
                xhat = xq[0].float().reshape(-1, 32) * xq[1][:, None]

                def int8(planes, cfg, xq=xq, o1=o1, t=t):
                    triton_qgemv_int8.qgemv_int8(xq, planes, t, out=o1, config=cfg)
                    return o1

                sweep(
                    "gemv8", key, gemv8_configs(span), int8, xhat.reshape(1, k) @ w.ref.T,
                    lambda ms, w=w: dict(gb_s=w.nbytes / ms / 1e6, roofline=w.nbytes / bw * 1e3),
                )  # fmt: skip
                quant_ms = do_bench(
                    lambda x1=x1, k=k: triton_qgemv_int8.quantize_x(x1, k), warmup=10, rep=50,
                    return_mode="median",
                )  # fmt: skip
                result["rows"].append({**key, "part": "quantize_x", "ms": quant_ms, "ok": True,
                                       "config": "default", "gb_s": 0.0, "roofline": 0.0})  # fmt: skip
            for m in args.small_m if "small" in args.parts else []:
                xm = torch.randn(m, k, device="cuda").bfloat16()
                sweep(
                    "small", {**key, "m": m}, ["dequant+cublas"],
                    lambda planes, cfg, xm=xm, t=t, k=k: xm @ triton_quant.dequantize(planes, t, k).T,
                    xm.float() @ w.ref.bfloat16().float().T,
                    lambda ms, w=w: dict(gb_s=w.nbytes / ms / 1e6),
                )  # fmt: skip
                sweep(
                    "small", {**key, "m": m}, small_configs(span, m),
                    lambda planes, cfg, xm=xm, t=t: triton_quant.qgemm(xm, planes, t, config=cfg),
                    xm.float() @ w.ref.bfloat16().float().T,
                    lambda ms, w=w: dict(gb_s=w.nbytes / ms / 1e6),
                )  # fmt: skip
            for m in args.int8_m if "int8" in args.parts else []:  # x quantized per launch
                xm = torch.randn(m, k, device="cuda").bfloat16()
                codes, dx, _ = triton_qgemm_int8.quantize_rows(xm)
                xhat = (codes.float().reshape(m, -1, 32) * dx[..., None]).reshape(m, k)
                sweep(
                    "int8", {**key, "m": m}, int8_configs(m),
                    lambda planes, cfg, xm=xm, t=t: triton_qgemm_int8.qgemm_int8(
                        xm, planes, t, config=cfg
                    ),
                    xhat @ w.ref.T,
                    lambda ms, w=w, m=m, n=n, k=k: dict(
                        gb_s=w.nbytes / ms / 1e6, tflop_s=2 * m * n * k / ms / 1e9
                    ),
                )  # fmt: skip
            if "prefill" in args.parts:
                m = args.prefill_m
                xp = torch.randn(m, k, device="cuda").bfloat16()
                ref = xp.float() @ w.ref.bfloat16().float().T
                flop = 2 * m * n * k

                def scratch(planes, cfg, xp=xp, t=t, k=k):  # decode once, then cuBLAS
                    return xp @ triton_quant.dequantize(planes, t, k).T

                def tflops(ms, flop=flop):
                    return dict(tflop_s=flop / ms / 1e9)

                sweep("prefill", {**key, "m": m}, ["dequant+cublas"], scratch, ref, tflops)
                sweep(
                    "prefill", {**key, "m": m}, prefill_configs(span),
                    lambda planes, cfg, xp=xp, t=t: triton_quant.qgemm(xp, planes, t, config=cfg),
                    ref, tflops,
                )  # fmt: skip
            w = None
            torch.cuda.empty_cache()
    result["elapsed_s"] = time.perf_counter() - start
    save()
    print_summary(result)


def print_summary(result: dict) -> None:
    """Best config per (part, type, m) by the sum of its times over the shapes measured."""
    rows = [r for r in result["rows"] if r.get("ok")]
    bad = [r for r in result["rows"] if "error" in r or r.get("ok") is False]
    print(f"{result['device']}: copy {result['copy_bandwidth'] / 1e9:.0f} GB/s, "
          f"{len(rows)} configs ok, {len(bad)} failed or wrong, {len(result['skipped'])} skipped")  # fmt: skip
    for r in bad[:5]:
        print("  bad:", r.get("part"), r.get("type"), r.get("shape"), r.get("config"),
              r.get("error") or f"rel_err {r.get('rel_err'):.2e}")  # fmt: skip
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["part"], r["type"], r.get("m")), []).append(r)
    for (part, t, m), rs in sorted(groups.items(), key=str):
        shapes = sorted({r["shape"] for r in rs})
        by_cfg: dict = {}
        for r in rs:
            by_cfg.setdefault(str(r["config"]), {})[r["shape"]] = r
        full = {c: v for c, v in by_cfg.items() if len(v) == len(shapes)}
        if not full:
            continue
        cfg, best = min(full.items(), key=lambda kv: sum(r["ms"] for r in kv[1].values()))
        cells = []
        for s in shapes:
            r = best[s]
            if part in ("gemv", "gemv8", "quantize_x"):
                cells.append(f"{s} {r['ms'] * 1e3:.1f}us {r['gb_s']:.0f}GB/s "
                             f"({r['roofline'] / r['ms'] * 100:.0f}%)")  # fmt: skip
            elif part == "small":
                cells.append(f"{s} {r['ms'] * 1e3:.0f}us {r['gb_s']:.0f}GB/s")
            else:
                cells.append(f"{s} {r['ms'] * 1e3:.0f}us {r['tflop_s']:.0f}TF/s")
        print(f"{part:7} {t:5} m={m!s:4} {cfg:28} " + " | ".join(cells))


if __name__ == "__main__":
    main()
