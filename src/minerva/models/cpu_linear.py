"""A faster `F.linear` for CPU decode: cpu_gemv.c, compiled at first use with the system compiler.

torch's CPU matrix-vector product streams bf16/fp16 weights at about half the memory bandwidth
(it has no fast path without AVX512_BF16) and slows down further for 2-64 rows. The kernel
streams the weights once in their own dtype and sums in fp32. `load()` builds it into a cache
folder keyed by source, flags, compiler and CPU; `linear` falls back to F.linear wherever the
kernel does not apply (other devices, autograd, unsupported dtypes, non-contiguous inputs) or
could not be built.

The library is built with -fopenmp and loaded after torch, so it binds to the OpenMP runtime
torch already loaded (the CPU wheels ship libgomp.so.1) and shares torch's thread pool; it runs
with torch.get_num_threads() threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from minerva.platform import cpu_signature, native_kernel_arch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_gemv.c")
_ARCH_FLAGS = {"x86_64": ["-march=native"], "aarch64": ["-mcpu=native"]}
_FLAGS = ["-O2", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

# Most rows of x the kernel takes; above, torch's GEMM is faster (fp32) or about as fast.
# Measured on a 2-core AVX-512 Xeon (benchmarks/cpu_gemv.py): in fp32 the kernel wins up to
# ~32 rows; in bf16/fp16, where torch has no fast path without AVX512_BF16, at every length.
MAX_ROWS = {torch.float32: 32, torch.bfloat16: 1 << 30, torch.float16: 1 << 30}

_kernels: dict[torch.dtype, object] = {}  # dtype -> ctypes function; empty until load()
_max_rows: dict[torch.dtype, int] = {}
_state: str | None = None  # None = not tried; "ok"; or why the kernel is off
_lock = threading.Lock()


def load() -> bool:
    """Build (once per cache key) and load the kernel; False, logged once, when it cannot be."""
    global _state
    with _lock:
        if _state is None:
            try:
                _state = _load()
            except Exception as e:  # noqa: BLE001 - any failure means: use torch
                _state = f"{type(e).__name__}: {e}"
            if _state == "ok":
                logger.debug("CPU GEMV kernel loaded for %s", sorted(map(str, _kernels)))
            else:
                logger.info("CPU GEMV kernel off (%s); using torch's linear", _state)
    return _state == "ok"


def status() -> str | None:
    """None before load(); "ok"; or why the kernel is off."""
    return _state


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear(x, weight, bias), through the C kernel where it applies."""
    fn = _kernels.get(x.dtype)
    if (
        fn is None
        or not x.is_cpu
        or x.dim() != 2
        or weight.dtype != x.dtype
        or not 0 < x.shape[0] <= _max_rows[x.dtype]
        or not x.is_contiguous()
        or not weight.is_contiguous()
        or torch.is_grad_enabled()
    ):
        if fn is not None and x.dim() > 2 and x.is_cpu:  # flatten the leading dims
            out = linear(x.reshape(-1, x.shape[-1]), weight, bias)
            return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, weight, bias)
    m, k = x.shape
    n, wk = weight.shape
    if wk != k:
        return F.linear(x, weight, bias)  # torch raises its usual shape error
    if bias is None:
        bias_ptr = None
    elif bias.dtype == x.dtype and bias.is_contiguous() and bias.shape == (n,):
        bias_ptr = bias.data_ptr()
    else:
        return F.linear(x, weight, bias)
    y = torch.empty(m, n, dtype=x.dtype)
    fn(weight.data_ptr(), x.data_ptr(), bias_ptr, y.data_ptr(), m, n, k, torch.get_num_threads())
    return y


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """The kernel itself, for any number of rows (benchmarks); inputs must be eligible."""
    fn = _kernels[x.dtype]
    (m, k), n = x.shape, weight.shape[0]
    assert x.is_contiguous() and weight.is_contiguous() and weight.shape == (n, k)
    assert weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)
    y = torch.empty(m, n, dtype=x.dtype)
    b = None if bias is None else bias.contiguous().data_ptr()
    fn(weight.data_ptr(), x.data_ptr(), b, y.data_ptr(), m, n, k, torch.get_num_threads())
    return y


# ---- building and loading ------------------------------------------------------------------


def cache_dir() -> Path:
    """$MINERVA_CACHE_DIR/kernels, else ~/.cache/minerva/kernels."""
    root = os.environ.get("MINERVA_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "minerva"
    return base / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _load() -> str:
    arch = native_kernel_arch()
    if arch is None:
        return "no kernel build for this OS / CPU"
    cc = _compiler()
    if cc is None:
        return "no C compiler (cc, gcc, clang) on PATH"
    flags = _ARCH_FLAGS[arch] + _FLAGS
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [source, " ".join(flags).encode(), version.stdout.encode(), cpu_signature().encode()]
        )
    ).hexdigest()[:16]
    path = cache_dir() / key / "libminerva_gemv.so"
    if not path.exists():
        problem = _compile(cc, flags, path)
        if problem:
            return problem
    lib = ctypes.CDLL(str(path))
    if _second_openmp_runtime():
        return "it would load a second OpenMP runtime next to torch's"
    sig = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    for dtype, suffix in _SUFFIX.items():
        if suffix == "f16" and not lib.minerva_gemv_has_f16():
            continue
        fn = getattr(lib, f"minerva_gemv_{suffix}")
        fn.argtypes, fn.restype = sig, ctypes.c_int
        _kernels[dtype] = fn
    _max_rows.update(MAX_ROWS)
    return "ok"


def _compile(cc: str, flags: list[str], path: Path) -> str | None:
    """Compile into a temp file next to `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags, "-o", tmp, str(SOURCE)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            logger.debug("%s failed:\n%s", " ".join(cmd), result.stderr)
            err = result.stderr.strip().splitlines()
            return f"compiling failed: {err[0] if err else result.returncode}"
        os.replace(tmp, path)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _second_openmp_runtime() -> bool:
    """True when more than one OpenMP runtime file is mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    names = ("libgomp", "libomp", "libiomp")
    files = {line.split()[-1] for line in maps.splitlines() if any(n in line for n in names)}
    return len(files) > 1
