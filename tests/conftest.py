"""Session setup for the whole suite.

The C kernels refuse to load into a process that already holds a second OpenMP runtime (they
share torch's thread pool; ops/native.py). Tests of other engines import llama.cpp's bindings,
which bring their own, so the kernels are built and loaded here, first, and every test sees
them whatever order the tests run in.

MINERVA_CACHE_DIR points at a temp dir for the session, so no test writes the weight cache (or
anything else) into the user's real cache; its kernels/ is a link to the real kernel cache, so
the C kernels are not rebuilt at every session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_session_cache: list[Path] = []


def _redirect_cache_dir(kernels: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="minerva-test-cache-"))
    try:
        kernels.mkdir(parents=True, exist_ok=True)
        (root / "kernels").symlink_to(kernels, target_is_directory=True)
    except OSError:
        pass  # kernels are then built into the temp dir: slower, still correct
    os.environ["MINERVA_CACHE_DIR"] = str(root)
    _session_cache.append(root)


def pytest_sessionstart(session) -> None:
    from minerva.ops import native

    _redirect_cache_dir(native.cache_dir())
    root = Path(native.__file__).resolve().parent.parent
    for source in sorted([*root.glob("ops/*.c"), *root.glob("attention/*.c")]):
        native.load(source)  # a machine that cannot build them falls back as it always does


def pytest_sessionfinish(session, exitstatus) -> None:
    for root in _session_cache:
        shutil.rmtree(root, ignore_errors=True)  # the link goes, not the kernels it points at
