"""The on-disk cache of x8-repacked GGUF weights (quant/x8_cache.py), through whole loads: a
cached load maps the same bytes and gives the same tokens and logprobs as a fresh repack, and
repacks nothing; a corrupt or outdated file is rebuilt; no space, no cache and a cap behave."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from minerva import LLM  # noqa: E402
from minerva.loader.checkpoint import iter_checkpoint_tensors  # noqa: E402
from minerva.loader.gguf_export import write_gguf  # noqa: E402
from minerva.loader.hf_config import load_model_config  # noqa: E402
from minerva.ops import cpu_quant_x8, native  # noqa: E402
from minerva.quant import x8_cache  # noqa: E402
from minerva.quant.gguf_quantize import quantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType  # noqa: E402
from tests.model.weight_cache_common import (  # noqa: E402
    cache_files,
    run,
    x8_bytes,
)
from tests.tiny_models import build_tiny_model  # noqa: E402


def q4_k_m_plan(name: str, shape) -> GGMLType:
    """Two types inside the fused qkv and gate_up layers, as a real Q4_K_M file has."""
    if name == "output.weight" or name.endswith(("attn_v.weight", "ffn_down.weight")):
        return GGMLType.Q6_K
    if name.endswith("attn_q.weight"):
        return GGMLType.Q8_0
    return GGMLType.Q4_K


def make_gguf(folder: Path, out: Path) -> Path:
    config = load_model_config(folder)
    tensors = iter_checkpoint_tensors(folder, "cpu", torch.float32, progress=False)
    return write_gguf(config, tensors, out, q4_k_m_plan, quantize=quantize_tensor)


@pytest.fixture
def gguf(tiny_folder, tmp_path) -> Path:
    return make_gguf(tiny_folder, tmp_path / "m.gguf")


@pytest.fixture
def repacks(monkeypatch) -> list[int]:
    """Counts cpu_quant_x8.repack calls."""
    calls: list[int] = []
    real = cpu_quant_x8.repack

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_quant_x8, "repack", counted)
    return calls


def load(path: Path, **kwargs) -> LLM:
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=128, **kwargs)
    x8_cache.wait_for_writes()
    return llm


@pytest.fixture
def reference(gguf, weights_dir):
    """x8 bytes and greedy run without the cache."""
    llm = load(gguf, weight_cache=False)
    ref = x8_bytes(llm), run(llm)
    assert cache_files(weights_dir) == []  # off: nothing written
    if not ref[0]:
        pytest.skip("no x8 layout on this CPU")
    return ref


def test_a_cached_load_maps_the_same_bytes_and_repacks_nothing(
    gguf, weights_dir, reference, repacks
):
    first = load(gguf)
    assert repacks  # the miss repacked, into the file
    (path,) = cache_files(weights_dir)
    assert list(weights_dir.iterdir()) == [path]  # no temp file left
    ref_bytes, ref_run = reference
    for llm in (first, None):
        if llm is None:
            repacks.clear()
            llm = load(gguf)
            assert repacks == []  # the hit: every x8 group mapped from the file
        got = x8_bytes(llm)
        assert got.keys() == ref_bytes.keys()
        assert all(torch.equal(got[k], ref_bytes[k]) for k in got)
        assert run(llm) == ref_run


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _bad_magic(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(-x8_cache.FOOTER.size, os.SEEK_END)
        f.write(b"NOTMAGIC")


def _garbage_index(path: Path) -> None:
    data = path.read_bytes()
    magic, version, offset, length = x8_cache.FOOTER.unpack(data[-x8_cache.FOOTER.size :])
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * length)


def _wrong_sizes(path: Path) -> None:
    """Bytes between the index and the footer: the footer's offset and length still match."""
    data = path.read_bytes()
    footer = data[-x8_cache.FOOTER.size :]
    path.write_bytes(data[: -x8_cache.FOOTER.size] + b"\0" * 4096 + footer)


def _shorter_than_a_footer(path: Path) -> None:
    os.truncate(path, x8_cache.FOOTER.size - 1)


def _empty(path: Path) -> None:
    os.truncate(path, 0)


def _other_groups(path: Path) -> None:
    """A whole, valid file whose index names another shape (one row count changed)."""
    data = bytearray(path.read_bytes())
    magic, version, offset, length = x8_cache.FOOTER.unpack(data[-x8_cache.FOOTER.size :])
    index = data[offset : offset + length].replace(b'"model.layers.0', b'"model.layerz.0')
    data[offset : offset + length] = index
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _shorter_than_a_footer,
        _empty,
        _bad_magic,
        _garbage_index,
        _wrong_sizes,
        _other_groups,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_damaged_cache_file_is_rebuilt(gguf, weights_dir, reference, repacks, damage):
    load(gguf)
    (path,) = cache_files(weights_dir)
    damage(path)
    repacks.clear()
    llm = load(gguf)
    assert repacks  # not trusted: repacked again
    assert run(llm) == reference[1]
    assert cache_files(weights_dir) == [path]  # and written again, whole
    repacks.clear()
    assert run(load(gguf)) == reference[1]
    assert repacks == []


def test_a_changed_gguf_file_is_not_served_from_the_old_cache(
    tiny_folder, gguf, weights_dir, reference, repacks
):
    load(gguf)
    (old,) = cache_files(weights_dir)
    other = make_gguf(tiny_folder, gguf.with_name("other.gguf"))  # same weights, new file
    st = gguf.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` would
    os.replace(other, gguf)  # another inode at the same path, same size and mtime
    repacks.clear()
    llm = load(gguf)
    assert repacks
    assert run(llm) == reference[1]
    new = cache_files(weights_dir)
    assert old in new and len(new) == 2  # a new key; the old file waits for eviction


def test_a_touched_gguf_file_is_rebuilt(gguf, weights_dir, reference, repacks):
    load(gguf)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    repacks.clear()
    assert run(load(gguf)) == reference[1]
    assert repacks


def test_no_space_for_the_cache_loads_into_memory(gguf, weights_dir, reference, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    llm = load(gguf)
    assert run(llm) == reference[1]
    assert all(torch.equal(v, reference[0][k]) for k, v in x8_bytes(llm).items())
    assert list(weights_dir.iterdir()) == []  # the temp file went too


def test_the_size_cap_evicts_the_least_recently_used_file(
    tiny_folder, gguf, weights_dir, reference
):
    paths = [gguf, make_gguf(tiny_folder, gguf.with_name("b.gguf"))]
    load(paths[0])
    (a,) = cache_files(weights_dir)
    load(paths[1])
    (b,) = set(cache_files(weights_dir)) - {a}
    size = a.stat().st_size
    os.utime(a, (1000, 1000))
    os.utime(b, (2000, 2000))  # b used after a ...
    load(paths[0])  # ... then a again (a hit touches it)
    c = make_gguf(tiny_folder, gguf.with_name("c.gguf"))
    load(c, weight_cache_size=2 * size + size // 2)  # room for two files
    left = cache_files(weights_dir)
    assert a in left and b not in left and len(left) == 2
    load(gguf.with_name("b.gguf"), weight_cache_size=size // 2)  # larger than the cap
    assert cache_files(weights_dir) == left


def test_leftover_temp_files_of_dead_processes_are_removed(gguf, weights_dir, reference):
    weights_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = weights_dir / f"{x8_cache.TEMP_PREFIX}{int(dead.stdout)}-0000{x8_cache.SUFFIX}"
    live = weights_dir / f"{x8_cache.TEMP_PREFIX}{os.getpid()}-0000{x8_cache.SUFFIX}"
    for p in (stale, live):
        p.write_bytes(b"partial")
    load(gguf)
    assert not stale.exists() and live.exists()
    assert len(cache_files(weights_dir)) == 1


def test_a_new_x8_layout_version_is_not_served_from_the_old_cache(
    gguf, weights_dir, reference, repacks, monkeypatch
):
    load(gguf)
    monkeypatch.setattr(cpu_quant_x8, "LAYOUT_VERSION", cpu_quant_x8.LAYOUT_VERSION + 1)
    repacks.clear()
    assert run(load(gguf)) == reference[1]
    assert repacks


def test_a_process_that_exits_right_after_loading_publishes_its_cache_file(gguf, weights_dir):
    """The write finishes in a thread the interpreter waits for, though loading runs in a
    daemon thread (runner/openmp_pools.py)."""
    code = (
        "import os, sys, time; from minerva import LLM; fsync = os.fsync; "
        "os.fsync = lambda fd: (time.sleep(1), fsync(fd)); "  # a disk slower than the exit
        "LLM(model=sys.argv[1], device='cpu', dtype='float32', max_model_len=128)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(native.__file__).parents[2]))
    subprocess.run([sys.executable, "-c", code, str(gguf)], env=env, check=True, timeout=300)
    assert len(cache_files(weights_dir)) == 1
    assert list(weights_dir.glob(f"{x8_cache.TEMP_PREFIX}*")) == []


def test_the_file_is_on_disk_before_it_is_published(gguf, weights_dir, reference, monkeypatch):
    """fsync, then rename: a crash or power loss can leave a temp file, never a partial one
    under the final name."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), replace(a, b))[1])
    load(gguf)
    assert events == ["fsync", "rename"]


def test_a_failed_write_publishes_nothing_and_leaves_nothing(
    gguf, weights_dir, reference, monkeypatch
):
    def broken(fd, data, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", broken)
    assert run(load(gguf)) == reference[1]  # the model runs from memory all the same
    assert list(weights_dir.iterdir()) == []


def test_a_hit_never_unpermutes_the_q_and_k_rows(gguf, weights_dir, reference, monkeypatch):
    """llama.cpp's q/k row order is undone by a copy made only when the rows are read
    (loader/gguf.py): the miss reads them to repack, a hit never does."""
    from minerva.loader import gguf as gguf_loader

    calls: list[int] = []
    real = gguf_loader.unpermute_rows
    monkeypatch.setattr(gguf_loader, "unpermute_rows", lambda *a: (calls.append(1), real(*a))[1])
    load(gguf)
    assert len(calls) == 2 * 2  # q and k of both layers
    calls.clear()
    assert run(load(gguf)) == reference[1]
    assert calls == []


def test_the_cache_never_takes_the_disks_last_free_space(
    gguf, weights_dir, reference, monkeypatch, caplog
):
    monkeypatch.setattr(x8_cache, "MIN_FREE_BYTES", 1 << 62)  # more than any disk has
    with caplog.at_level("WARNING", logger="minerva.quant.x8_cache"):
        assert run(load(gguf)) == reference[1]
    assert list(weights_dir.iterdir()) == []
    assert "too little free disk space" in caplog.text


def test_two_loads_writing_at_once_leave_one_whole_file(
    gguf, weights_dir, reference, repacks, monkeypatch
):
    """Each writer has its own temp file and renames it whole: the last rename wins."""
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.5), fsync(fd))[1])
    for _ in range(2):  # the second starts while the first is still writing
        LLM(model=str(gguf), device="cpu", dtype="float32", max_model_len=128)
    x8_cache.wait_for_writes()
    assert len(cache_files(weights_dir)) == 1
    assert list(weights_dir.glob(f"{x8_cache.TEMP_PREFIX}*")) == []
    repacks.clear()
    assert run(load(gguf)) == reference[1]
    assert repacks == []


def test_every_shard_of_a_split_file_is_part_of_the_key(tmp_path, weights_dir, repacks):
    """A split GGUF's cache file is rebuilt when any shard changes, not only the first."""
    from tests.gguf_fixtures import write_gguf as write_split

    model = build_tiny_model(tmp_path / "hf", hidden_size=256, intermediate_size=512)
    write_split(model, tmp_path / "split.gguf", quant_type="Q8_0", split_max_tensors=8)
    shards = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(shards) > 2
    tokens = run(load(shards[0]))
    assert len(cache_files(weights_dir)) == 1
    repacks.clear()
    assert run(load(shards[0])) == tokens and repacks == []  # a hit
    st = shards[-1].stat()
    os.utime(shards[-1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run(load(shards[0])) == tokens
    assert repacks  # the last shard changed: rebuilt
