"""Launch configurations of the int4 kernels (ops/triton_int4.py) on a GPU, at the 7B shape's
layers: each config's output checked against dequantize + matmul, then timed.

    PYTHONPATH=src python benchmarks/int4_sweep.py --output DIR [--budget-s 150]

The one-token GEMV in both variants: x quantized to 8 bits with dp4a products (its quantize
launch timed with it) and the float kernel; the several-token GEMM's configs beside the scratch
path (dequantize + cuBLAS, quant/int4.DEQUANT_ROWS). Prints the fastest configs per shape and
part and writes int4_sweep_<gpu>.json: every config's time, achieved bandwidth (GEMV) or
TFLOP/s (GEMM) and its error. The GEMV's bytes are the codes, scales and offsets it reads (x
is negligible).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import triton.testing

from minerva.ops import triton_int4
from minerva.quant.int4 import dequantize_rows, quantize_rows

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
GEMV_CONFIGS = list(itertools.product((4, 8, 16), (2, 4, 8), (4, 8), (2, 4)))
DP4A_CONFIGS = list(itertools.product((1, 2, 4, 8), (8, 16, 32), (1, 2, 4), (2, 3)))
# the one-token kernels: (name, int8_x, the config function's name in ops/triton_int4, configs)
GEMV_VARIANTS = (
    ("dp4a", True, "gemv_dp4a_config", DP4A_CONFIGS),
    ("float", False, "gemv_config", GEMV_CONFIGS),
)
GEMM_CONFIGS = {
    64: list(itertools.product((16, 32, 64), (64, 128), (4, 8), (3, 4))),
    512: list(itertools.product((64, 128), (64, 128, 256), (4, 8), (2, 3))),
}


def weights(n: int, k: int, gen: torch.Generator):
    w = torch.randn(n, k, generator=gen, device="cuda", dtype=torch.float32) * 0.02
    codes, scale, offset = quantize_rows(w.bfloat16())
    return codes, scale, offset, dequantize_rows(codes, scale, offset).float()


def error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--budget-s", type=float, default=150.0)
    args = ap.parse_args()
    start = time.perf_counter()
    gen = torch.Generator(device="cuda").manual_seed(0)
    gpu = torch.cuda.get_device_name()
    results: dict = {"gpu": gpu, "torch": torch.__version__, "gemv": {}, "gemm": {}}
    slug = next((s for s in ("h100", "h200") if s in gpu.lower()), "gpu")
    out_path = args.output / f"int4_sweep_{slug}.json"
    args.output.mkdir(parents=True, exist_ok=True)
    default_gemm = triton_int4.gemm_config
    for name, (n, k) in SHAPES.items():
        codes, scale, offset, w = weights(n, k, gen)
        nbytes = codes.numel() + 2 * (scale.numel() + offset.numel())
        x = torch.randn(1, k, generator=gen, device="cuda").bfloat16()
        ref = x.float() @ w.T
        for variant, int8_x, config_fn, configs in GEMV_VARIANTS:
            # each (shape, variant) gets its slice of the GEMV budget, the default first
            until = time.perf_counter() + args.budget_s * 0.6 / len(SHAPES) / len(GEMV_VARIANTS)
            default = getattr(triton_int4, config_fn)
            rows = results["gemv"][f"{name}_{variant}"] = []
            for cfg in [None, *configs]:
                if time.perf_counter() > until:
                    break
                setattr(triton_int4, config_fn, default if cfg is None else (lambda n, k, c=cfg: c))
                try:
                    out = triton_int4.gemv(x, codes, scale, offset, int8_x=int8_x)
                    ms = triton.testing.do_bench(
                        lambda a=(x, codes, scale, offset), q=int8_x: triton_int4.gemv(*a, int8_x=q)
                    )
                except Exception as e:  # a config that does not compile or fit: recorded
                    rows.append({"config": cfg, "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                rows.append({"config": cfg or "default", "ms": ms, "gb_s": nbytes / ms / 1e6,
                             "rel_error": error(out, ref)})  # fmt: skip
            setattr(triton_int4, config_fn, default)
        for m, configs in GEMM_CONFIGS.items():
            xm = torch.randn(m, k, generator=gen, device="cuda").bfloat16()
            refm = xm.float() @ w.T
            rows = results["gemm"][f"{name}_m{m}"] = []

            # the scratch path of quant/int4.py (DEQUANT_ROWS): decode once, then cuBLAS
            def scratch(a=(xm, codes, scale, offset)):
                return a[0] @ triton_int4.dequantize(*a[1:], a[0].dtype).T

            out = scratch()
            ms = triton.testing.do_bench(scratch)
            rows.append({"config": "dequantize+cublas", "ms": ms,
                         "tflop_s": 2 * m * n * k / ms / 1e9, "rel_error": error(out, refm)})  # fmt: skip
            for cfg in [None, *configs]:
                if time.perf_counter() - start > args.budget_s:
                    break
                triton_int4.gemm_config = default_gemm if cfg is None else (lambda m, c=cfg: c)
                try:
                    out = triton_int4.gemm(xm, codes, scale, offset)
                    ms = triton.testing.do_bench(
                        lambda a=(xm, codes, scale, offset): triton_int4.gemm(*a)
                    )
                except Exception as e:
                    rows.append({"config": cfg, "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                rows.append({"config": cfg or "default", "ms": ms,
                             "tflop_s": 2 * m * n * k / ms / 1e9, "rel_error": error(out, refm)})  # fmt: skip
            triton_int4.gemm_config = default_gemm
        out_path.write_text(json.dumps(results, indent=1))  # after each shape: nothing is lost
    out_path.write_text(json.dumps(results, indent=1))
    for part in ("gemv", "gemm"):
        for name, rows in results[part].items():
            ok = [r for r in rows if "ms" in r and r["rel_error"] < 2e-2]
            if not ok:
                continue
            default = next((r for r in ok if r["config"] == "default"), None)
            best = min(ok, key=lambda r: r["ms"])
            rate = "gb_s" if part == "gemv" else "tflop_s"
            print(f"{part:4} {name:12} default {default and round(default['ms'] * 1e3, 1)} us "
                  f"best {best['config']} {best['ms'] * 1e3:.1f} us ({best[rate]:.0f} "
                  f"{'GB/s' if part == 'gemv' else 'TFLOP/s'}) of {len(rows)}")  # fmt: skip


if __name__ == "__main__":
    main()
