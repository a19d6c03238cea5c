"""What machine and software a benchmark ran on (the report's system section)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import psutil


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        try:
            import subprocess  # noqa: PLC0415

            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            )
            return out.stdout.strip() or platform.machine()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> dict:
    """GPU names, memory and driver from NVML; else from torch if it sees CUDA."""
    try:
        import pynvml  # noqa: PLC0415 - optional (nvidia-ml-py)

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        driver = pynvml.nvmlSystemGetDriverVersion()
        names = [pynvml.nvmlDeviceGetName(h) for h in handles]
        mems = [pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles]
        return {
            "gpus": [n.decode() if isinstance(n, bytes) else n for n in names],
            "gpu_memory_gib": [round(m / 2**30, 1) for m in mems],
            "driver": driver.decode() if isinstance(driver, bytes) else driver,
        }
    except Exception:  # noqa: BLE001 - no NVML: ask torch
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        return {
            "gpus": [p.name for p in props],
            "gpu_memory_gib": [round(p.total_memory / 2**30, 1) for p in props],
            "driver": None,
            "cuda": torch.version.cuda,
        }
    return {"gpus": []}


def _is_local(url: str) -> bool:
    from urllib.parse import urlparse  # noqa: PLC0415

    return urlparse(url).hostname in ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def describe_machine(server_urls: list[str] | None = None) -> str:
    """Whose hardware the system section shows: the engines', or only the client's."""
    if not server_urls:
        return "this machine ran the engines (in-process)"
    remote = [u for u in server_urls if not _is_local(u)]
    if not remote:
        return "this machine ran the servers and the benchmark client"
    return (
        f"this machine ran only the benchmark client; the server{'s' if len(remote) > 1 else ''}"
        f" at {', '.join(remote)} {'are' if len(remote) > 1 else 'is'} remote and "
        "not described here"
    )


def system_info(server_urls: list[str] | None = None) -> dict:
    """CPU, cores, RAM, GPUs, driver, OS and the versions of Python, torch and minerva, with
    which role this machine played (``server_urls``: the HTTP targets, if any)."""
    from minerva import __version__

    torch = sys.modules.get("torch")
    return {
        "machine": describe_machine(server_urls),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        **_gpus(),
        "python": platform.python_version(),
        "torch": torch.__version__ if torch is not None else _version("torch"),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "transformers": _version("transformers"),
        "minerva": __version__,
    }
