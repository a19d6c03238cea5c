"""Build and load Minerva's small C kernels (ops/cpu_gemv.c, ...) with the system compiler.

Each source is compiled once per (source, flags, compiler, CPU) into
$MINERVA_CACHE_DIR/kernels/<hash>/ (default ~/.cache/minerva), through a temp file and a rename
so that two processes never load half a file, and loaded with ctypes. Where that cannot work
(no compiler, a failed build, an OS/CPU without a build recipe) `load` returns None and the
caller keeps its torch path; the reason is logged once.

The kernels use OpenMP. Loaded after torch (this module imports it first), a library built
with -fopenmp binds to the runtime torch already loaded (the CPU wheels ship libgomp.so.1), so
it shares torch's thread pool; if loading it maps another OpenMP runtime, the library is refused.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch  # noqa: F401 - loaded first, so the kernels bind to torch's OpenMP runtime

from minerva.platform import cpu_signature, native_kernel_arch

INCLUDE = Path(__file__).parent  # simd.h, quant_act.h: headers shared by the kernels

logger = logging.getLogger(__name__)

ARCH_FLAGS = {"x86_64": ["-march=native"], "aarch64": ["-mcpu=native"]}
FLAGS = ["-O2", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-lm"]

_libraries: dict[Path, ctypes.CDLL | None] = {}
_problems: dict[Path, str] = {}
_lock = threading.Lock()


class BuildError(Exception):
    """Why a kernel library is not available (the caller falls back to torch)."""


def load(source: Path) -> ctypes.CDLL | None:
    """The compiled library of `source`, built on first use; None (logged once) if impossible."""
    source = Path(source)
    with _lock:
        if source not in _libraries:
            try:
                _libraries[source] = build_and_load(source)
                logger.debug("loaded C kernels %s", source.name)
            except BuildError as e:
                _libraries[source], _problems[source] = None, str(e)
                logger.info("C kernels %s off (%s); using torch", source.name, e)
        return _libraries[source]


def problem(source: Path) -> str | None:
    """Why `load(source)` returned None, if it did."""
    return _problems.get(Path(source))


def cache_root() -> Path:
    """$MINERVA_CACHE_DIR, else ~/.cache/minerva (kernels/ and weights/ live under it)."""
    root = os.environ.get("MINERVA_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "minerva"


def cache_dir() -> Path:
    """$MINERVA_CACHE_DIR/kernels, else ~/.cache/minerva/kernels."""
    return cache_root() / "kernels"


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@functools.cache
def compiler_version(cc: str) -> str:
    """`cc --version`, asked once per process (each library's cache key holds it, and a
    subprocess per library would slow every load)."""
    return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout


def build_and_load(source: Path) -> ctypes.CDLL:
    """Compile (unless cached) and load `source`; raises BuildError with the reason."""
    arch = native_kernel_arch()
    if arch is None:
        raise BuildError("no kernel build for this OS / CPU")
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler (cc, gcc, clang) on PATH")
    flags = ARCH_FLAGS[arch] + FLAGS
    try:
        version = compiler_version(cc)
        headers = sorted(INCLUDE.glob("*.h"))  # what the sources may include
        text = b"".join(p.read_bytes() for p in [source, *headers])
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(str(e)) from e
    parts = [text, " ".join(flags).encode(), version.encode(), cpu_signature().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    path = cache_dir() / key / f"lib{source.stem}.so"
    if not path.exists():
        _compile(cc, flags, source, path)
    before = _openmp_runtimes()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise BuildError(f"loading {path} failed: {e}") from e
    if _openmp_runtimes() - before:  # it did not bind to the runtime torch loaded
        raise BuildError("it would load a second OpenMP runtime next to torch's")
    return lib


def _compile(cc: str, flags: list[str], source: Path, path: Path) -> None:
    """Compile into a temp file next to `path`, then rename: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cannot write to {path.parent}: {e}") from e
    try:
        cmd = [cc, str(source), f"-I{INCLUDE}", *flags, "-o", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            logger.debug("%s failed:\n%s", " ".join(cmd), result.stderr)
            lines = result.stderr.strip().splitlines()
            raise BuildError(f"compiling failed: {lines[0] if lines else result.returncode}")
        os.replace(tmp, path)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"compiling failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtime files mapped into this process (empty where unknown). Another
    package's private copy (sentencepiece's, under its own name) is no concern; a library of
    ours that maps a new one is."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    names = ("libgomp", "libomp", "libiomp")
    return {line.split()[-1] for line in maps.splitlines() if any(n in line for n in names)}
