"""Fixtures of the model tests: the weight-cache tests' cache directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from minerva.ops import native
from minerva.quant import x8_cache


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """$MINERVA_CACHE_DIR in this test's temp dir (the session's kernels linked in)."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "kernels").symlink_to(native.cache_dir().resolve(), target_is_directory=True)
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(root))
    monkeypatch.setattr(x8_cache, "MIN_FREE_BYTES", 0)  # a nearly full CI disk still caches
    return root / "weights"
