"""minerva.ops.native: building C kernels into the cache, and every way that can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from minerva.ops import cpu_linear, native
from minerva.platform import native_kernel_arch

can_build = native_kernel_arch() is not None and shutil.which("cc") is not None


@pytest.mark.skipif(not can_build, reason="no C kernel build on this host")
def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(tmp_path))
    native.build_and_load(cpu_linear.SOURCE)
    built = list((tmp_path / "kernels").glob("*/*"))
    assert [p.name for p in built] == ["libcpu_gemv.so"]  # no temp file left behind
    mtime = built[0].stat().st_mtime_ns
    native.build_and_load(cpu_linear.SOURCE)  # second load: from the cache, not rebuilt
    assert built[0].stat().st_mtime_ns == mtime


@pytest.mark.skipif(not can_build, reason="no C kernel build on this host")
def test_the_compiler_version_is_asked_once_per_process(monkeypatch):
    """Every library's cache key holds `cc --version`; one subprocess serves them all."""
    calls = []
    run = native.subprocess.run
    monkeypatch.setattr(
        native.subprocess, "run", lambda cmd, **kw: (calls.append(cmd), run(cmd, **kw))[1]
    )
    native.compiler_version.cache_clear()
    for _ in range(2):
        for source in (cpu_linear.SOURCE, cpu_linear.SOURCE.with_name("cpu_quant_x8.c")):
            native.build_and_load(source)  # built by the session already: from the cache
    assert [c for c in calls if "--version" in c] == [[native.compiler(), "--version"]]


def test_no_compiler_means_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "compiler", lambda: None)
    monkeypatch.setattr(native, "native_kernel_arch", lambda: "x86_64")
    with pytest.raises(native.BuildError, match="no C compiler"):
        native.build_and_load(cpu_linear.SOURCE)


def test_unsupported_platform_means_torch(monkeypatch):
    monkeypatch.setattr(native, "native_kernel_arch", lambda: None)
    with pytest.raises(native.BuildError, match="no kernel build"):
        native.build_and_load(cpu_linear.SOURCE)


@pytest.mark.skipif(not can_build, reason="no C kernel build on this host")
def test_failed_build_is_logged_once_and_returns_none(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    with caplog.at_level("INFO", logger="minerva.ops.native"):
        assert native.load(broken) is None
        assert native.load(broken) is None
    assert native.problem(broken).startswith("compiling failed")
    assert len([r for r in caplog.records if "broken.c" in r.getMessage()]) == 1
    assert not list((tmp_path / "kernels").glob("*/*"))  # neither a library nor a temp file


@pytest.mark.skipif(not can_build, reason="no C kernel build on this host")
def test_another_packages_private_openmp_copy_leaves_the_kernels_on():
    """sentencepiece's wheel maps its own libgomp (under a private name) when imported, as
    `import gguf` does; the kernels still bind to torch's runtime and load."""
    pytest.importorskip("sentencepiece")
    import sentencepiece  # noqa: F401

    source = Path(native.__file__).with_name("cpu_glue.c")
    assert native.build_and_load(source) is not None
