"""`minerva doctor`: what this machine can do for Minerva, and what to set.

Reports the software (torch, triton, the optional packages), each device Minerva could run on
(CPU with its SIMD features and C-kernel build, CUDA GPUs with the features the fast path
uses, Apple MPS), a measured memory bandwidth, and for a model (the bundled demo model unless
--model is given) what it costs on the chosen device: weight bytes, KV cache per token, how
many tokens of KV fit in `memory_fraction`, and the batch-1 decode ceiling that the bandwidth
sets (every weight is read once per token). Ends with a recommended profile
(config_profiles.py) and the settings to use.

    minerva doctor [--model PATH] [--device auto] [--dtype auto] [--json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform as host
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from minerva import __version__
from minerva.backends import BACKENDS, probe_backend
from minerva.config import EngineConfig, load_config_from_args
from minerva.config_profiles import PROFILES
from minerva.errors import MinervaError
from minerva.platform import (
    Platform,
    available_cpus,
    cpu_signature,
    default_num_threads,
    native_kernel_arch,
    resolve_platform,
)

OPTIONAL = ("triton", "transformers", "fastapi", "uvicorn", "prometheus_client", "matplotlib")
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "asimd", "sve")
GIB = 2**30


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def software() -> dict[str, Any]:
    return {
        "minerva": __version__,
        "python": host.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "optional": {name: _version(name) for name in OPTIONAL},
    }


def measure_bandwidth(platform: Platform, mib: int | None = None, repeats: int = 5) -> float:
    """Best GB/s over `mib` MiB: on a GPU a device-to-device copy, bytes read + written (the
    measure gpu_bench's roofline uses); on the CPU a sum, bytes read (a copy's writes cost
    more than its reads there). Batch-1 decode reads each weight once per token. Default size:
    1 GiB on a GPU (smaller copies read below the full bandwidth there), 256 MiB elsewhere."""
    mib = mib or (1024 if platform.is_cuda else 256)
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=platform.device)
    dst = torch.empty_like(src) if platform.kind != "cpu" else None
    best = float("inf")
    for _ in range(repeats):
        platform.synchronize()
        t = time.perf_counter()
        if dst is None:
            src.sum()
        else:
            dst.copy_(src)
        platform.synchronize()
        best = min(best, time.perf_counter() - t)
    moved = src.numel() * 4 * (1 if dst is None else 2)
    return moved / best / 1e9


def cpu_info() -> dict[str, Any]:
    from minerva.ops import cpu_linear  # noqa: PLC0415 - builds C kernels on first use
    from minerva.ops.native import compiler  # noqa: PLC0415

    lines = (line.split(":", 1) for line in cpu_signature().splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in lines}
    name = fields.get("model name") or host.processor() or host.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    vm = psutil.virtual_memory()
    arch = native_kernel_arch()
    kernels = arch is not None and cpu_linear.load()
    return {
        "name": name,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_total_gib": vm.total / GIB,
        "ram_available_gib": vm.available / GIB,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "c_compiler": compiler(),
        "c_kernels": kernels,
        "c_kernels_problem": None
        if kernels
        else (cpu_linear.status() or f"no C kernels for {host.machine()} on {sys.platform}"),
    }


def thread_scan(configured: int | None, repeats: int = 3) -> dict[str, Any]:
    """Matrix-vector products per second (what batch-1 decode does) at each thread count up
    to the CPUs this process may use, and the default Minerva picks (physical cores less the
    busy ones). A busy machine can make more threads much slower (OpenMP barriers wait for a
    thread that lost its core); benchmarks/results/cpu_threads.json has decode figures."""
    cpus, before = available_cpus(), torch.get_num_threads()
    counts = sorted({1, 2, 4, 8, 16, cpus, default_num_threads()} & set(range(1, cpus + 1)))
    # One small layer's matvec: each one is a parallel region whose barrier waits for every
    # thread, as each op of a decode step does.
    weight = torch.randn(1024, 1024)
    x = torch.randn(1024)
    measured = []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            torch.mv(weight, x)  # wake this many threads
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(50):
                    torch.mv(weight, x)
                best = min(best, (time.perf_counter() - t) / 50)
            measured.append({"threads": threads, "matvec_per_s": 1 / best})
    finally:
        torch.set_num_threads(before)
    fastest = max(measured, key=lambda m: m["matvec_per_s"])
    return {
        "available_cpus": cpus,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "default": default_num_threads(),
        "configured": configured,
        "measured": measured,
        "best": fastest["threads"],
    }


def thread_advice(scan: dict[str, Any]) -> str:
    """What to set for --num-threads, from the scan."""
    used = scan["configured"] or scan["default"]
    speed = {m["threads"]: m["matvec_per_s"] for m in scan["measured"]}
    best = scan["best"]
    load = scan["load_average"]
    where = f"{scan['available_cpus']} CPUs" + (f", load {load:.1f}" if load is not None else "")
    how = "--num-threads" if scan["configured"] else f"the default ({scan['default']})"
    if used in speed and best != used and speed[best] > 1.2 * speed[used]:
        return (
            f"{best} CPU threads ran {speed[best] / speed[used]:.1f}x faster than {used}, "
            f"{how}, here ({where}): set --num-threads {best} (MINERVA_NUM_THREADS={best}) "
            "if the machine stays this busy (benchmarks/cpu_threads.py measures decode)"
        )
    return f"{used} CPU threads ({how}) measured as fast as any count here ({where})"


def triton_cache_files() -> tuple[str, int]:
    """(Triton's kernel cache folder, how many files it holds). An empty cache means the next
    engine start compiles every kernel first (engine_start_s in
    benchmarks/results/gpu_bench_mistral-7b_h100_pdl_modes.json)."""
    folder = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    count = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    return str(folder), count


def cuda_info(index: int) -> dict[str, Any]:
    p = Platform(torch.device("cuda", index))
    props = torch.cuda.get_device_properties(index)
    free, total = p.memory()
    from minerva.attention import triton_available  # noqa: PLC0415

    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_total_gib": total / GIB,
        "memory_free_gib": free / GIB,
        "bf16": torch.cuda.is_bf16_supported(),
        "triton_kernels": triton_available(),
        "pdl": p.supports_pdl,
        "triton_cache": dict(zip(("path", "files"), triton_cache_files())),
    }


def model_fit(config: EngineConfig, platform: Platform, bandwidth_gb_s: float) -> dict[str, Any]:
    """What the configured model costs on `platform`: weights, KV per token, tokens of KV the
    memory budget leaves, and the batch-1 decode ceiling the bandwidth sets."""
    from minerva.platform import resolve_dtype  # noqa: PLC0415
    from minerva.runner import model_loading  # noqa: PLC0415
    from minerva.runner.kv_cache import (  # noqa: PLC0415
        KVCacheSpec,
        kv_cache_budget,
        memory_budget,
        resolve_kv_cache_dtype,
    )

    source = model_loading.open_model_source(config)
    hf = source.config
    dtype = resolve_dtype(platform, config.model.dtype, getattr(hf, "torch_dtype", None))
    spec = KVCacheSpec(
        num_layers=hf.num_hidden_layers,
        num_kv_heads=hf.num_key_value_heads,
        head_dim=hf.head_dim,
        block_size=config.cache.block_size,
        dtype=resolve_kv_cache_dtype(
            config.cache.kv_cache_dtype, dtype, platform, config.device.attention_backend
        ),
    )
    weights = model_loading.weight_bytes_of(source, dtype, config.model.quantization)
    kv_per_token = spec.bytes_per_block // spec.block_size
    activations = model_loading.estimate_activation_bytes(hf, config, dtype)
    cache = config.cache
    # Not loaded yet: the weights count like the activations against the budget.
    kv_room, _ = kv_cache_budget(
        platform, cache.memory_fraction, cache.kv_cache_memory, weights + activations,
        memory_limit=cache.memory_limit,
    )  # fmt: skip
    budget = memory_budget(platform, cache.memory_fraction, cache.memory_limit)[0]
    max_model_len = config.model.max_model_len or hf.max_position_embeddings
    return {
        "path": str(source.path),
        "architecture": hf.architectures[0],
        "dtype": str(dtype).removeprefix("torch."),
        "quantization": source.quantization or config.model.quantization,
        "weight_gib": weights / GIB,
        "kv_cache_dtype": str(spec.dtype).removeprefix("torch."),
        "kv_bytes_per_token": kv_per_token,
        "kv_tokens": max(kv_room, 0) // kv_per_token,
        "max_model_len": max_model_len,
        "fits": weights + kv_per_token * max_model_len + activations <= budget,
        "decode_ceiling_tok_s": bandwidth_gb_s * 1e9 / weights,
        "memory_fraction": config.cache.memory_fraction,
    }


def advice(report: dict[str, Any]) -> list[str]:
    """The settings to use, from what the report found."""
    out = []
    dev, fit = report["device"], report.get("model")
    if dev["kind"] == "cpu" and report["software"]["torch_cuda"]:
        out.append("torch is a CUDA build but sees no GPU: check the driver (nvidia-smi)")
    if gpu := dev.get("gpu"):
        if not gpu["triton_kernels"]:
            out.append("install triton (CUDA builds of torch ship it) for the fast kernels")
        if not gpu["pdl"]:
            out.append("programmatic dependent launch needs sm_90+ (Hopper): off on this GPU")
        if not gpu["bf16"]:
            out.append("this GPU has no bf16: set dtype=float16")
        if gpu["triton_kernels"] and not gpu["triton_cache"]["files"]:
            path = gpu["triton_cache"]["path"]
            out.append(
                f"the Triton kernel cache ({path}) is empty: the first engine start compiles "
                "the kernels and takes longer; later starts reuse them (keep that folder)"
            )
    if scan := dev.get("threads"):
        out.append(thread_advice(scan))
    cpu = dev["cpu"]
    if dev["kind"] == "cpu" and not cpu["c_kernels"]:
        why = cpu["c_kernels_problem"]
        out.append(f"C kernels are off ({why}): install a C compiler (gcc) for faster decode")
    if not fit:
        return out
    if dev["kind"] == "cpu" and fit["dtype"] == "float32":
        out.append("dtype=bfloat16 halves the bytes read per token (decode is bandwidth-bound)")
    n = fit["max_model_len"]
    if not fit["fits"]:
        out.append(
            f"{fit['weight_gib']:.2f} GiB of weights + one {n}-token sequence do not fit in "
            f"memory_fraction={fit['memory_fraction']}: lower max_model_len, or use a smaller "
            "dtype or model"
        )
    else:
        seqs = fit["kv_tokens"] // max(n, 1)
        out.append(
            f"the KV cache holds {fit['kv_tokens']:,} tokens = {seqs} sequences of "
            f"max_model_len={n}; a lower max_model_len lets more requests run at once"
        )
    ceiling = _rate(fit["decode_ceiling_tok_s"])
    out.append(f"batch-1 decode cannot beat {ceiling} tok/s here (bandwidth / weight bytes)")
    return out


def recommend(report: dict[str, Any]) -> dict[str, Any] | None:
    """The profile (config_profiles.py) and settings for this device and model, and why."""
    fit = report.get("model")
    if not fit:
        return None
    n = max(fit["max_model_len"], 1)
    seqs = fit["kv_tokens"] // n
    kind = report["device"]["kind"]
    if not fit["fits"] or seqs < 4:
        profile = "memory-constrained"
        why = f"the memory left holds {seqs} sequences of max_model_len={n}"
    elif kind == "cuda" and seqs >= 64:
        profile = "high-throughput"
        why = f"a GPU with KV room for {seqs} sequences of max_model_len={n}: serve many at once"
    else:
        profile = "low-latency"
        why = f"a {kind} device, where each step's time grows with the batch: keep it small"
    settings = dict(PROFILES[profile].values)
    if fit["fits"] and seqs >= 1:  # more running sequences than the KV holds only preempt
        settings["max_num_seqs"] = min(settings["max_num_seqs"], seqs)
    if not fit["fits"] and not fit.get("quantization"):
        settings["quantization"] = "q4_k_m"  # about a third of bf16's bytes (quant_quality.md)
    return {"profile": profile, "why": why, "settings": settings}


def collect(config: EngineConfig, with_model: bool = True) -> dict[str, Any]:
    """The whole report as plain data (what --json prints)."""
    platform = resolve_platform(config.device.device)
    device: dict[str, Any] = {"kind": platform.kind, "name": platform.name}
    device["cpu"] = cpu_info()
    if platform.is_cuda:
        device["gpu"] = cuda_info(platform.device.index or 0)
    device["bandwidth_gb_s"] = measure_bandwidth(platform)
    if platform.kind == "cpu":
        device["threads"] = thread_scan(config.device.num_threads)
    report: dict[str, Any] = {"software": software(), "device": device}
    report["cuda_devices"] = [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    report["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    report["backend"] = config.model.backend
    report["backends"] = {name: probe_backend(name) for name in BACKENDS}
    if with_model:
        report["model"] = model_fit(config, platform, device["bandwidth_gb_s"])
    report["recommendation"] = recommend(report)
    report["advice"] = advice(report)
    if rec := report["recommendation"]:
        shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in rec["settings"].items())
        report["advice"].insert(
            0, f"recommended: --profile {rec['profile']} ({rec['why']}), i.e. {shown}"
        )
    return report


def _rate(tok_s: float) -> str:
    return f"{tok_s:.0f}" if tok_s >= 10 else f"{tok_s:.2f}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report as (label, value) lines for the table."""
    sw, dev = report["software"], report["device"]
    cpu = dev["cpu"]
    out = [
        ("minerva / python", f"{sw['minerva']} / {sw['python']}"),
        ("torch", f"{sw['torch']} (CUDA {sw['torch_cuda'] or 'none'})"),
        ("optional packages", ", ".join(f"{k} {v or '-'}" for k, v in sw["optional"].items())),
        ("CPU", f"{cpu['name']}: {cpu['physical_cores']} cores / {cpu['logical_cores']} threads"),
        ("SIMD", " ".join(cpu["simd"]) or "-"),
        ("RAM", f"{cpu['ram_available_gib']:.1f} of {cpu['ram_total_gib']:.1f} GiB available"),
        ("C kernels", "on" if cpu["c_kernels"] else f"off: {cpu['c_kernels_problem']}"),
        ("GPUs", ", ".join(report["cuda_devices"]) or ("Apple MPS" if report["mps"] else "none")),
    ]
    out += _backend_rows(report)
    if "gpu" in dev:
        g = dev["gpu"]
        sm = g["compute_capability"].replace(".", "")
        free = f"{g['memory_free_gib']:.1f} of {g['memory_total_gib']:.1f} GiB free"
        out.append(("chosen GPU", f"{g['name']} (sm_{sm}, {g['sms']} SMs), {free}"))
        out.append(("Triton kernels / bf16", f"{_yes(g['triton_kernels'])} / {_yes(g['bf16'])}"))
        out.append(("dependent launch (PDL)", _yes(g["pdl"])))
        cache = g["triton_cache"]
        out.append(("Triton kernel cache", f"{cache['files']} files in {cache['path']}"))
    if scan := dev.get("threads"):
        figures = ", ".join(f"{m['threads']}: {m['matvec_per_s']:.0f}/s" for m in scan["measured"])
        out.append(("CPU threads (matvec speed)", f"{figures}; default {scan['default']}"))
    how = "sum: bytes read" if dev["kind"] == "cpu" else "copy: bytes read + written"
    out.append((f"{dev['kind']} memory bandwidth", f"{dev['bandwidth_gb_s']:.1f} GB/s ({how})"))
    if fit := report.get("model"):
        kv_kib = fit["kv_bytes_per_token"] / 1024
        numbers = ", ".join(filter(None, (fit["dtype"], fit.get("quantization"))))
        out += [
            ("model", f"{fit['path']} ({fit['architecture']}, {numbers})"),
            (
                "weights / KV per token",
                f"{fit['weight_gib']:.2f} GiB / {kv_kib:.1f} KiB ({fit['kv_cache_dtype']})",
            ),
            ("KV cache room", f"{fit['kv_tokens']:,} tokens"),
            ("batch-1 decode ceiling", f"{_rate(fit['decode_ceiling_tok_s'])} tok/s"),
        ]
    return out


def _backend_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """One line of every engine; the chosen one's findings in full."""
    backends = report.get("backends", {})
    state = {
        n: b.get("version", "yes") if b["installed"] == "yes" else "-" for n, b in backends.items()
    }
    out = [("backends", ", ".join(f"{n} {v}" for n, v in state.items()))]
    chosen = report.get("backend", "minerva")
    for key, value in backends.get(chosen, {}).items():
        if key not in ("installed", "version"):
            out.append((f"{chosen}: {key}", value))
    return out


def _backend_state(probe: dict[str, str]) -> str:
    if probe["installed"] != "yes":
        return "-"
    return "(broken)" if "problem" in probe else probe.get("version", "yes")


def render(report: dict[str, Any]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="minerva doctor", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows(report):
        table.add_row(label, value)
    console = Console()
    console.print(table)
    for line in report["advice"]:
        console.print(f"- {line}", markup=False)


def run_doctor(args: argparse.Namespace) -> int:
    try:
        config, _ = load_config_from_args(args)
        report = collect(config, with_model=not args.no_model)
    except MinervaError as e:
        print(f"minerva doctor: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    return 0
