"""Fixtures shared by the unit tests."""

from __future__ import annotations

import shutil

import pytest

from minerva.ops import cpu_linear
from minerva.platform import native_kernel_arch


@pytest.fixture(scope="module")
def cpu_linear_kernel():
    """ops.cpu_linear with its C kernel loaded; a failure where it should build, else a skip."""
    if not cpu_linear.load():
        if native_kernel_arch() and shutil.which("cc"):
            pytest.fail(f"the kernel should build here: {cpu_linear.status()}")
        pytest.skip(f"no CPU kernel here: {cpu_linear.status()}")
    return cpu_linear
