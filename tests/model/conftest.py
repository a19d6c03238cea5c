"""Fixtures of the model tests: the weight-cache tests' cache directory and tiny float folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from minerva.ops import native
from minerva.quant import x8_cache
from tests.tiny_models import build_tiny_model


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """$MINERVA_CACHE_DIR in this test's temp dir (the session's kernels linked in)."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "kernels").symlink_to(native.cache_dir().resolve(), target_is_directory=True)
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(root))
    monkeypatch.setattr(x8_cache, "MIN_FREE_BYTES", 0)  # a nearly full CI disk still caches
    return root / "weights"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Llama folder whose widths take k-quants (one per test module: some tests
    touch its files)."""
    path = tmp_path_factory.mktemp("st")
    build_tiny_model(path, hidden_size=256, intermediate_size=512)
    return path
