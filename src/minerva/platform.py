"""The only hardware probe: which device, which dtype, how much memory, how to synchronize.

Everything else receives these answers; no other module asks torch what the hardware is.
"""

from __future__ import annotations

import os
import platform as _host
import sys
from dataclasses import dataclass

import psutil
import torch

from minerva.dtypes import DTYPES, canonical_dtype
from minerva.errors import ConfigError

FP8_CAPABILITY = (8, 9)
"""The first CUDA compute capability with fp8 (Ada; Hopper is 9.0)."""


@dataclass(frozen=True)
class Platform:
    """What the chosen device is and can do."""

    device: torch.device

    @property
    def kind(self) -> str:
        return self.device.type

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def name(self) -> str:
        if self.is_cuda:
            return torch.cuda.get_device_name(self.device)
        if self.kind == "mps":
            return "Apple MPS"
        return f"CPU ({os.cpu_count()} cores)"

    @property
    def num_sms(self) -> int | None:
        """Streaming multiprocessors of a CUDA GPU (kernel launch grids are sized from it)."""
        if not self.is_cuda:
            return None
        return torch.cuda.get_device_properties(self.device).multi_processor_count

    @property
    def supports_fp8(self) -> bool:
        """8-bit float arithmetic in kernels (Triton's fp8 types, fp8 tensor cores): CUDA
        compute capability 8.9 (Ada) or newer."""
        return self.is_cuda and torch.cuda.get_device_capability(self.device) >= FP8_CAPABILITY

    @property
    def supports_pdl(self) -> bool:
        """Programmatic dependent launch: CUDA compute capability 9.0 (Hopper) or newer, and a
        triton that can launch with it (ops/pdl.py)."""
        if not self.is_cuda or torch.cuda.get_device_capability(self.device)[0] < 9:
            return False
        try:
            from triton.language.extra import cuda  # noqa: PLC0415 - optional dependency
        except ImportError:
            return False
        return hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        if self.is_cuda:
            return dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()
        if self.kind == "mps":
            return dtype in (torch.float16, torch.float32) or _mps_bf16_ok()
        return True

    def default_dtype(self, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
        """dtype="auto": bf16 on CUDA, fp16 on MPS, fp32 on CPU; the checkpoint's where fitting."""
        if self.is_cuda:
            if checkpoint_dtype in (torch.float16, torch.bfloat16):
                return checkpoint_dtype if self.supports_dtype(checkpoint_dtype) else torch.float16
            return torch.bfloat16 if self.supports_dtype(torch.bfloat16) else torch.float16
        if self.kind == "mps":
            return torch.float16
        return torch.float32

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes of the device's memory (host RAM for CPU)."""
        if self.is_cuda:
            free, total = torch.cuda.mem_get_info(self.device)
            return int(free), int(total)
        vm = psutil.virtual_memory()
        if self.kind == "mps":
            # Unified memory: the GPU shares host RAM; recommended max is the practical cap.
            total = int(torch.mps.recommended_max_memory())
            return min(int(vm.available), total), total
        return int(vm.available), int(vm.total)

    def memory_used(self) -> int:
        """Bytes in use by this process on the device (RSS on CPU)."""
        if self.is_cuda:
            return int(torch.cuda.memory_allocated(self.device))
        if self.kind == "mps":
            return int(torch.mps.current_allocated_memory())
        return int(psutil.Process().memory_info().rss)

    def reset_peak_memory(self) -> None:
        """Start a new peak for `peak_memory` (CUDA only; a no-op elsewhere)."""
        if self.is_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int:
        """Most bytes this process held on the device since `reset_peak_memory` (CUDA; else 0)."""
        if self.is_cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return 0

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
        elif self.kind == "mps":
            torch.mps.synchronize()


def _mps_bf16_ok() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except Exception:  # noqa: BLE001 - any failure means unsupported
        return False


def copy_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device. On CUDA through pinned memory, so the copy runs asynchronously
    instead of blocking the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    if device.type == "cpu" and t.device.type == "cpu":
        return t  # what t.to(device) returns, without its dispatch cost (per step on the CPU)
    return t.to(device)


def resolve_platform(device: str = "auto") -> Platform:
    """device="auto" picks CUDA, then Apple MPS, then CPU."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return Platform(torch.device("cuda", torch.cuda.current_device()))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return Platform(torch.device("mps"))
        return Platform(torch.device("cpu"))
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(
            f"device={device!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device!r} but this torch build sees no CUDA GPU; use device=cpu "
            "or install a CUDA build of torch"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r} but MPS is not available here; use device=cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return Platform(dev)


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; 'auto' / None -> None.

    The names are minerva.dtypes' table; each canonical name is the torch attribute."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = canonical_dtype(name)
    if key not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not supported: use {', '.join(DTYPES)}")
    return None if key == "auto" else getattr(torch, key)


def resolve_dtype(platform: Platform, requested: str | None, checkpoint: str | None) -> torch.dtype:
    """Pick the compute dtype; an explicit choice the device cannot run is an error."""
    dtype = parse_dtype(requested)
    if dtype is None:
        ckpt = parse_dtype(checkpoint) if checkpoint and checkpoint.lower() != "auto" else None
        return platform.default_dtype(ckpt)
    if not platform.supports_dtype(dtype):
        raise ConfigError(
            f"dtype={requested} is not supported on {platform.name}; use float16 or float32"
        )
    return dtype


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask: containers, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def busy_cpus() -> int:
    """CPUs other work keeps busy: the 1-minute load average, rounded (0 where unknown)."""
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def default_num_threads(busy: int | None = None) -> int:
    """Physical cores, less the CPUs other work keeps busy, at least 1. OpenMP threads wait
    for each other every step, so one thread that lost its core stalls them all: on a busy
    machine fewer threads decode many times faster (benchmarks/results/cpu_threads.json)."""
    cpus = available_cpus()
    physical = min(psutil.cpu_count(logical=False) or cpus, cpus)
    busy = busy_cpus() if busy is None else busy
    return max(1, min(physical, cpus - busy))


def set_num_threads(num_threads: int | None) -> None:
    """torch's CPU threads: ``num_threads``, else default_num_threads()."""
    torch.set_num_threads(num_threads or default_num_threads())


def native_kernel_arch() -> str | None:
    """The CPU family the C kernels (ops/cpu_gemv.c) build for on this host: "x86_64" or
    "aarch64" on Linux; None elsewhere (macOS torch ships libomp, and the kernel would start a
    second OpenMP thread pool next to torch's)."""
    if not sys.platform.startswith("linux"):
        return None
    machine = _host.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return None


def cpu_signature() -> str:
    """What a -march=native build depends on (CPU model and feature flags), to key caches."""
    lines = [_host.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    lines.append(line.strip())
                elif not line.strip() and len(lines) > 1:
                    break  # the first core describes them all
    except OSError:
        lines.append(_host.processor())
    return "\n".join(lines)
