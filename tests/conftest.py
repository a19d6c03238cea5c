"""Session setup for the whole suite.

The C kernels refuse to load into a process that already holds a second OpenMP runtime (they
share torch's thread pool; ops/native.py). Tests of other engines import llama.cpp's bindings,
which bring their own, so the kernels are built and loaded here, first, and every test sees
them whatever order the tests run in.
"""

from __future__ import annotations

from pathlib import Path


def pytest_sessionstart(session) -> None:
    from minerva.ops import native

    root = Path(native.__file__).resolve().parent.parent
    for source in sorted([*root.glob("ops/*.c"), *root.glob("attention/*.c")]):
        native.load(source)  # a machine that cannot build them falls back as it always does
