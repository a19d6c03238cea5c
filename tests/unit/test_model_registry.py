"""ModelRegistry (``minerva serve --models-dir``) over fake backends: load on demand, LRU
unloads under a memory limit, keep_alive with an injected clock, requests during a load, and
unloads that wait for in-flight requests. No sleeps decide an outcome: the clock is injected
and loads and requests are gated by events the test sets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest

from minerva.backends.base import BackendStats
from minerva.errors import EngineUnavailableError, RequestError
from minerva.server.api_errors import APIError
from minerva.server.model_dir import LocalModel, scan
from minerva.server.model_registry import WAIT_DIGEST_BYTES, ModelRegistry
from tests.unit.test_server_fake_backend import FakeBackend

MB = 1 << 20


class SizedBackend(FakeBackend):
    """A FakeBackend that reports its memory and whether its engine still runs requests."""

    def __init__(self, name: str, memory: int) -> None:
        super().__init__()
        self.name, self.memory, self.in_flight = name, memory, 0
        self.events: list[str] = []

    def stats(self) -> BackendStats:
        return BackendStats(num_requests_in_flight=self.in_flight, model_memory_bytes=self.memory)

    async def shutdown(self) -> None:
        self.events.append("shutdown")
        await super().shutdown()


class Loader:
    """The registry's load function: one SizedBackend per model, optionally held at a gate."""

    def __init__(self, memory: dict[str, int]) -> None:
        self.memory = memory
        self.loads: list[str] = []
        self.backends: dict[str, SizedBackend] = {}
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def __call__(self, model: LocalModel) -> SizedBackend:
        self.loads.append(model.name)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the load gate"
        backend = SizedBackend(model.name, self.memory[model.name.split(":")[0]])
        self.backends[model.name] = backend
        return backend


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_dir(root: Path, sizes: dict[str, int]) -> Path:
    """HF-like folders (config.json + a weights file of the given size on disk)."""
    for name, size in sizes.items():
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "float32"}))
        with open(folder / "model.safetensors", "wb") as f:
            f.truncate(size)  # sparse: the size without the bytes
    return root


def registry(tmp_path, memory, limit=None, disk=None, **kwargs):
    disk = disk or memory
    loader = Loader(memory)
    clock = Clock()
    reg = ModelRegistry(make_dir(tmp_path, disk), loader, memory_limit=limit, clock=clock, **kwargs)
    return reg, loader, clock


def names(reg: ModelRegistry) -> set[str]:
    return {m.name for m in reg.loaded()}


def test_scan_names_models_with_ollama_tags(tmp_path):
    make_dir(tmp_path, {"tiny": 10, "big:7b": 20})
    (tmp_path / "qwen.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()
    found = scan(tmp_path)
    assert sorted(found) == ["big:7b", "qwen.Q4_K_M:latest", "tiny:latest"]
    assert (found["tiny:latest"].format, found["tiny:latest"].size) == ("safetensors", 10)
    assert found["tiny:latest"].quantization == "FLOAT32"
    gguf = found["qwen.Q4_K_M:latest"]
    assert (gguf.format, gguf.quantization, gguf.size) == ("gguf", "Q4_K_M", 64)


def test_loads_on_demand_once_and_404s_unknown_names(tmp_path):
    async def main():
        reg, loader, _ = registry(tmp_path, {"a": 10 * MB, "b": 10 * MB})
        assert reg.loaded() == []  # nothing loads before a request asks
        first = await reg.acquire("a")
        second = await reg.acquire("a:latest")
        assert first.backend is second.backend and first.backend.running
        assert loader.loads == ["a:latest"] and names(reg) == {"a:latest"}
        with pytest.raises(APIError) as e:
            await reg.acquire("zzz")
        assert e.value.status == 404 and "a:latest, b:latest" in e.value.message

    asyncio.run(main())


def test_lru_idle_model_is_unloaded_to_make_room(tmp_path):
    async def main():
        # Room for two of the three 40 MB models.
        reg, loader, clock = registry(tmp_path, {m: 40 * MB for m in "abc"}, limit=100 * MB)
        for name in ("a", "b"):
            (await reg.acquire(name)).release()
            clock.now += 10
        (await reg.acquire("a")).release()  # a is now more recently used than b
        clock.now += 10
        lease_c = await reg.acquire("c")
        assert names(reg) == {"a:latest", "c:latest"}  # b, least recently used, went
        assert loader.backends["b:latest"].events == ["shutdown"]
        assert reg.counters.unloads == {"memory": 1}
        assert reg.memory_used() == 80 * MB
        lease_c.release()

    asyncio.run(main())


def test_busy_models_are_not_evicted_the_load_waits_for_them(tmp_path):
    async def main():
        reg, loader, clock = registry(tmp_path, {"a": 60 * MB, "b": 60 * MB}, limit=100 * MB)
        lease_a = await reg.acquire("a")
        wants_b = asyncio.ensure_future(reg.acquire("b"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not wants_b.done() and names(reg) == {"a:latest"}  # a serves: b must wait
        assert loader.backends["a:latest"].events == []
        lease_a.release()
        lease_b = await wants_b
        assert names(reg) == {"b:latest"} and loader.backends["a:latest"].events == ["shutdown"]
        lease_b.release()

    asyncio.run(main())


def test_a_model_that_cannot_fit_alone_is_refused_with_the_numbers(tmp_path):
    async def main():
        reg, loader, _ = registry(tmp_path, {"huge": 1}, limit=2 * MB, disk={"huge": 3 * MB})
        with pytest.raises(RequestError) as e:
            await reg.acquire("huge")
        assert "huge:latest needs 3 MiB" in str(e.value) and "limit is 2 MiB" in str(e.value)
        assert e.value.code == "model_too_large"
        assert loader.loads == []  # refused before loading anything

    asyncio.run(main())


def test_measured_size_over_the_estimate_evicts_idle_models(tmp_path):
    async def main():
        # On disk b looks small (estimate 1 MB); loaded it holds 70 MB.
        reg, _, clock = registry(
            tmp_path, {"a": 50 * MB, "b": 70 * MB}, limit=100 * MB, disk={"a": MB, "b": MB}
        )
        (await reg.acquire("a")).release()
        clock.now += 1
        (await reg.acquire("b")).release()
        assert names(reg) == {"b:latest"} and reg.memory_used() <= 100 * MB
        # Loaded beside a busy model: over the limit until it is idle, then the reaper acts.
        lease_b = await reg.acquire("b")
        clock.now += 1
        (await reg.acquire("a")).release()
        assert names(reg) == {"a:latest", "b:latest"}
        clock.now += 1
        lease_b.release()  # b is now the most recently used: a, idle longer, goes
        await reg.reap()
        assert names(reg) == {"b:latest"}

    asyncio.run(main())


def test_keep_alive_expiry_follows_the_injected_clock(tmp_path):
    async def main():
        reg, loader, clock = registry(tmp_path, {m: MB for m in "abc"}, keep_alive=300.0)
        (await reg.acquire("a")).release()  # the server default: 5 minutes
        (await reg.acquire("b", keep_alive="10s")).release()
        (await reg.acquire("c", keep_alive=-1)).release()  # forever
        clock.now += 9.5
        assert await reg.reap() == []
        clock.now += 1
        assert await reg.reap() == ["b:latest"]
        clock.now += 290
        assert await reg.reap() == ["a:latest"]
        clock.now += 1e9
        assert await reg.reap() == [] and names(reg) == {"c:latest"}
        assert reg.counters.unloads == {"expired": 2}

    asyncio.run(main())


def test_expiry_counts_from_the_end_of_the_last_request(tmp_path):
    async def main():
        reg, _, clock = registry(tmp_path, {"a": MB})
        lease = await reg.acquire("a", keep_alive="1m")
        clock.now += 3600  # a long request: never unloaded while it runs
        assert await reg.reap() == []
        assert reg.expires_at(reg.loaded()[0]) == clock.now + 60
        lease.release()
        clock.now += 59
        assert await reg.reap() == []
        clock.now += 2
        assert await reg.reap() == ["a:latest"]

    asyncio.run(main())


def test_keep_alive_zero_unloads_after_the_request(tmp_path):
    async def main():
        reg, loader, _ = registry(tmp_path, {"a": MB})
        lease = await reg.acquire("a", keep_alive=0)
        backend = lease.backend
        assert names(reg) == {"a:latest"}
        lease.release()
        while reg.loaded():
            await asyncio.sleep(0)
        assert backend.events == ["shutdown"] and not backend.running

    asyncio.run(main())


def test_requests_during_a_load_wait_for_it_and_share_it(tmp_path):
    async def main():
        reg, loader, _ = registry(tmp_path, {"a": MB})
        loader.gate = threading.Event()
        waiting = [asyncio.ensure_future(reg.acquire("a")) for _ in range(3)]
        await asyncio.to_thread(loader.started.wait, 60)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not any(w.done() for w in waiting) and reg.loading() == ["a:latest"]
        loader.gate.set()
        leases = await asyncio.gather(*waiting)
        assert loader.loads == ["a:latest"]  # one load for all three
        assert len({id(lease.backend) for lease in leases}) == 1

    asyncio.run(main())


def test_a_load_that_outlasts_the_timeout_is_a_503_and_the_load_goes_on(tmp_path):
    async def main():
        reg, loader, _ = registry(tmp_path, {"a": MB}, load_timeout=0.05)
        loader.gate = threading.Event()  # never opened until the request gave up
        with pytest.raises(EngineUnavailableError) as e:
            await reg.acquire("a")
        assert "still loading" in str(e.value) and e.value.retry_after
        loader.gate.set()
        reg.load_timeout = 60
        lease = await reg.acquire("a")  # the same load finishes and serves the retry
        assert loader.loads == ["a:latest"] and lease.backend.running

    asyncio.run(main())


def test_unload_waits_for_the_request_in_flight(tmp_path):
    async def main():
        reg, _, _ = registry(tmp_path, {"a": MB})
        lease = await reg.acquire("a")
        backend = lease.backend
        unload = asyncio.ensure_future(reg.unload("a"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not unload.done() and backend.events == [] and backend.running
        lease.release()  # the response ended; the engine still runs one request
        backend.in_flight = 1
        for _ in range(20):
            await asyncio.sleep(0)
        assert not unload.done() and backend.running
        backend.in_flight = 0
        assert await unload is True
        assert backend.events == ["shutdown"] and reg.loaded() == []
        again = await reg.acquire("a")  # asked for again: loaded again
        assert again.backend is not backend

    asyncio.run(main())


def test_concurrent_leases_on_two_models(tmp_path):
    async def main():
        reg, loader, _ = registry(tmp_path, {"a": MB, "b": MB})
        leases = await asyncio.gather(*(reg.acquire(n) for n in "abab"))
        assert sorted(loader.loads) == ["a:latest", "b:latest"]
        assert [m.leases for m in sorted(reg.loaded(), key=lambda m: m.name)] == [2, 2]
        for lease in leases:
            lease.release()
            lease.release()  # idempotent
        assert [m.leases for m in reg.loaded()] == [0, 0]

    asyncio.run(main())


def test_large_models_hash_in_the_background(tmp_path):
    async def main():
        size = WAIT_DIGEST_BYTES + 1
        reg, _, _ = registry(tmp_path, {"big": MB}, disk={"big": size})
        model = reg.find("big")
        assert await reg.digest(model) == ""  # listed at once; the hash runs meanwhile
        while not (digest := await reg.digest(model)):
            await asyncio.sleep(0.01)
        # Not a loadable model (config.json lacks the shapes): the hash of every file.
        h = hashlib.sha256()
        for name in ("config.json", "model.safetensors"):
            h.update((tmp_path / "big" / name).read_bytes())
        assert digest == "sha256:" + h.hexdigest()

    asyncio.run(main())


def test_the_log_tells_each_load_with_its_sizes_and_each_unload_with_its_reason(tmp_path, caplog):
    async def main():
        reg, _, clock = registry(tmp_path, {m: 40 * MB for m in "abc"}, limit=100 * MB)
        for name in "abc":  # c makes room: a, least recently used, goes
            (await reg.acquire(name, keep_alive="1m")).release()
            clock.now += 1
        clock.now += 3600
        await reg.reap()

    with caplog.at_level(logging.INFO, logger="minerva.server.model_registry"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records]
    path = tmp_path / "a"
    assert lines[0] == f"loading a:latest from {path} (0.04 GiB on disk)"
    assert lines[1].startswith("loaded a:latest in ") and lines[1].endswith("s: 0.04 GiB in memory")
    assert "unloaded a:latest (memory)" in lines
    assert lines.index("unloaded a:latest (memory)") < lines.index(
        next(line for line in lines if line.startswith("loading c:latest"))
    )  # room is made before the load starts
    assert sorted(line for line in lines if line.endswith("(expired)")) == [
        "unloaded b:latest (expired)", "unloaded c:latest (expired)"
    ]  # fmt: skip
