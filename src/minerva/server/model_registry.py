"""The models of ``minerva serve --models-dir``: loaded on demand, unloaded when idle.

A request names a model; ``acquire`` loads it if needed (one load at a time; requests for a
model being loaded wait for it, up to ``load_timeout``) and returns a Lease that the request
holds until its response has been sent. Models stay loaded ``keep_alive`` seconds after their
last lease ends; to make room under ``memory_limit``, idle models go least recently used first.
A model with a lease or an in-flight request is never unloaded: unloading waits for it.
Memory is the backend's own figure once loaded (weights + KV cache + activation reserve), the
weights' size on disk before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from minerva.backends.base import Backend, ModelInfo
from minerva.config_fields import format_byte_size
from minerva.errors import EngineUnavailableError, MinervaError, RequestError
from minerva.server.api_errors import APIError, model_not_found
from minerva.server.background import in_daemon_thread
from minerva.server.keep_alive import parse_keep_alive
from minerva.server.model_dir import LocalModel, canonical_name, scan

logger = logging.getLogger(__name__)
GIB = 2**30
WAIT_DIGEST_BYTES = 64 * 2**20
"""Listings wait for the digest of models up to this size; larger ones hash in the background."""


@dataclass
class LoadedModel:
    """A model in memory."""

    model: LocalModel
    backend: Backend
    size: int
    """Bytes it holds (the backend's figure, else its weights on disk)."""
    loaded_at: float
    keep_alive: float
    expires_at: float = math.inf
    last_used: float = 0.0
    leases: int = 0
    unloading: bool = False
    load_seconds: float = 0.0
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.model.name

    def info(self) -> ModelInfo:
        return self.backend.model_info(digest=False)

    def busy(self) -> bool:
        """True while a request holds it or runs in its engine."""
        return self.leases > 0 or self.backend.stats().num_requests_in_flight > 0


class Lease:
    """One request's hold on a loaded model; ``release`` (idempotent) when the response ends."""

    def __init__(self, registry: ModelRegistry, loaded: LoadedModel) -> None:
        self.registry = registry
        self.loaded = loaded
        self.released = False

    @property
    def backend(self) -> Backend:
        return self.loaded.backend

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.registry._release(self.loaded)


@dataclass
class RegistryCounters:
    """Cumulative counts for /metrics."""

    loads: int = 0
    load_failures: int = 0
    unloads: dict[str, int] = field(default_factory=dict)
    """By reason: expired, memory, request, deleted, shutdown."""
    load_seconds: list[float] = field(default_factory=list)
    """Every load's duration (seconds)."""


class ModelRegistry:
    """Owns loading and unloading of the directory's models (event-loop side only)."""

    def __init__(
        self,
        models_dir: Path,
        load: Callable[[LocalModel], Backend],
        *,
        install: Callable[[Backend], None] = lambda backend: backend.start(),
        memory_limit: int | None = None,
        keep_alive: float = 300.0,
        load_timeout: float = 300.0,
        clock: Callable[[], float] = time.time,
        after_unload: Callable[[], None] = lambda: None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.memory_limit = memory_limit
        self.default_keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.clock = clock
        self.counters = RegistryCounters()
        self._load_fn, self._install, self._after_unload = load, install, after_unload
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._digests: dict[tuple, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- the directory --------------------------------------------------------------------
    def models(self) -> dict[str, LocalModel]:
        """The directory's models by canonical name (read afresh: files come and go)."""
        return scan(self.models_dir)

    def find(self, name: str) -> LocalModel:
        """The model called ``name`` (``:latest`` implied), or 404 naming what there is."""
        if not isinstance(name, str) or not name:
            raise APIError(400, "'model' must be given as a string", param="model")
        models = self.models()
        model = models.get(canonical_name(name))
        if model is None:
            available = ", ".join(models) or f"nothing (the folder {self.models_dir} is empty)"
            raise model_not_found(name, available)
        return model

    async def digest(self, model: LocalModel) -> str:
        """``sha256:<hex>`` of the model's files, as ModelInfo.digest (cached per file state).
        Hashing reads every byte (seconds per GB): past ``WAIT_DIGEST_BYTES`` it runs in the
        background and "" stands for the digest until it is done."""
        key = (str(model.path), model.size, model.modified_at)
        task = self._digests.get(key)
        if task is None:
            work = in_daemon_thread(lambda: _source_digest(model.path), name="minerva-digest")
            task = self._digests[key] = asyncio.ensure_future(work)
        if model.size <= WAIT_DIGEST_BYTES or task.done():
            return await asyncio.shield(task)
        return ""

    # -- loaded models --------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        """Loaded models, most recently used first."""
        return sorted(self._loaded.values(), key=lambda m: m.last_used, reverse=True)

    def loading(self) -> list[str]:
        return list(self._loading)

    def memory_used(self) -> int:
        return sum(m.size for m in self._loaded.values())

    def expires_at(self, loaded: LoadedModel) -> float:
        """When it unloads if nothing more comes (``inf``: never)."""
        return self.clock() + loaded.keep_alive if loaded.busy() else loaded.expires_at

    async def acquire(self, name: str, keep_alive: float | int | str | None = None) -> Lease:
        """A lease on ``name``, loading it first if needed; waits at most ``load_timeout``
        seconds for a load (503 past it). 404 for a name the directory lacks."""
        keep = parse_keep_alive(keep_alive, self.default_keep_alive)
        model = self.find(name)
        deadline = time.monotonic() + self.load_timeout
        while True:
            loaded = self._loaded.get(model.name)
            if loaded is not None and not loaded.unloading:
                loaded.leases += 1
                loaded.keep_alive, loaded.last_used = keep, self.clock()
                return Lease(self, loaded)
            if loaded is not None:  # being unloaded: wait until gone, then load it again
                await self._wait(loaded.gone.wait(), deadline, f"{model.name} is being unloaded")
                continue
            task = self._loading.get(model.name)
            if task is None:
                task = asyncio.ensure_future(self._load(model, keep))
                self._loading[model.name] = task
                task.add_done_callback(lambda _, n=model.name: self._loading.pop(n, None))
            await self._wait(asyncio.shield(task), deadline, f"{model.name} is still loading")

    async def unload(self, name: str, reason: str = "request") -> bool:
        """Unload ``name`` once idle (waits for its requests); False if it was not loaded."""
        loaded = self._loaded.get(canonical_name(name))
        if loaded is None:
            return False
        await self._unload(loaded, reason)
        return True

    async def reap(self) -> list[str]:
        """Unload the idle models whose keep_alive has passed; their names."""
        now = self.clock()
        expired = [m for m in self._loaded.values() if not m.busy() and m.expires_at <= now]
        for m in expired:
            await self._unload(m, "expired")
        newest = max(self._loaded.values(), key=lambda m: m.last_used, default=None)
        if newest is not None:  # over the limit after a load beside busy models: idle ones go
            await self._make_room(newest.model, 0, settled=True)
        return [m.name for m in expired]

    async def run_reaper(self, interval: float = 1.0) -> None:
        """Reap forever, every ``interval`` seconds (a task of the app's lifespan)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception as e:  # noqa: BLE001 - keep reaping; the log says why
                logger.error("unloading an expired model failed: %s", e)

    async def drain(self, timeout: float) -> int:
        """Drain every loaded model's backend (SIGTERM); how many requests were aborted."""
        counts = await asyncio.gather(*(m.backend.drain(timeout) for m in self.loaded()))
        return sum(counts)

    async def shutdown(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        for m in list(self._loaded.values()):
            await m.backend.shutdown()
            self._forget(m, "shutdown")

    # -- internals ------------------------------------------------------------------------
    async def _wait(self, awaitable, deadline: float, what: str):
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(awaitable, max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise EngineUnavailableError(
                f"{what} after {self.load_timeout:g}s (model_load_timeout): retry shortly",
                retry_after=5,
            ) from None

    async def _load(self, model: LocalModel, keep: float) -> None:
        async with self._load_lock:
            if model.name in self._loaded:
                return
            await self._make_room(model, model.size)
            logger.info("loading %s from %s (%.2f GiB on disk)", model.name, model.path,
                        model.size / GIB)  # fmt: skip
            start = time.monotonic()
            try:
                backend = await in_daemon_thread(lambda: self._load_fn(model))
                self._install(backend)
            except MinervaError as e:
                self.counters.load_failures += 1
                raise APIError(500, f"loading {model.name} failed: {e}", code="load_failed") from e
            except Exception:
                self.counters.load_failures += 1
                raise
            seconds = time.monotonic() - start
            size = backend.stats().model_memory_bytes or model.size
            now = self.clock()
            loaded = LoadedModel(model, backend, size, now, keep, last_used=now,
                                 load_seconds=seconds)  # fmt: skip
            # Not before the requests that wait for it take their leases.
            loaded.expires_at = now + max(keep, 1.0)
            self._loaded[model.name] = loaded
            self.counters.loads += 1
            self.counters.load_seconds.append(seconds)
            logger.info("loaded %s in %.1fs: %.2f GiB in memory", model.name, seconds, size / GIB)
            await self._make_room(model, 0, settled=True)  # measured size > estimate?

    async def _make_room(self, model: LocalModel, need: int, settled: bool = False) -> None:
        """Unload idle models but ``model``, least recently used first, until ``need`` more
        bytes fit; waits for busy ones (bounded); 400 if ``model`` cannot fit even alone.
        ``settled``: ``model`` is loaded already; make what room idle models give."""
        limit = self.memory_limit
        if limit is None:
            return
        if need > limit:
            raise RequestError(
                f"{model.name} needs {format_byte_size(need)} ({model.format} weights on disk) "
                f"but the memory limit is {format_byte_size(limit)}: raise memory_limit "
                "(--memory-limit) or use a smaller or quantized model",
                code="model_too_large", param="model",
            )  # fmt: skip
        deadline = time.monotonic() + self.load_timeout
        while self.memory_used() + need > limit:
            idle = [
                m for m in self._loaded.values()
                if m.name != model.name and not m.busy() and not m.unloading
            ]  # fmt: skip
            if idle:
                await self._unload(min(idle, key=lambda m: m.last_used), "memory")
                continue
            if settled:
                return  # only busy models left: they go when idle
            busy = ", ".join(
                f"{m.name} ({format_byte_size(m.size)})" for m in self._loaded.values()
            )
            what = (
                f"no room to load {model.name} ({format_byte_size(need)}) under the memory "
                f"limit of {format_byte_size(limit)} while {busy} serve requests"
            )
            await self._wait(self._next_change(), deadline, what)

    async def _unload(self, loaded: LoadedModel, reason: str) -> None:
        if loaded.unloading:
            await loaded.gone.wait()
            return
        loaded.unloading = True
        while loaded.busy():  # never cut a request: wait until it is idle
            await self._next_change(poll=0.05)
        await loaded.backend.shutdown()
        self._forget(loaded, reason)
        logger.info("unloaded %s (%s)", loaded.name, reason)

    def _forget(self, loaded: LoadedModel, reason: str) -> None:
        if self._loaded.get(loaded.name) is loaded:
            del self._loaded[loaded.name]
        loaded.backend.set_observer(None)
        self.counters.unloads[reason] = self.counters.unloads.get(reason, 0) + 1
        loaded.gone.set()
        self._notify()
        self._after_unload()

    def _release(self, loaded: LoadedModel) -> None:
        loaded.leases -= 1
        loaded.last_used = self.clock()
        if loaded.leases == 0:
            loaded.expires_at = loaded.last_used + loaded.keep_alive
            if loaded.keep_alive == 0 and not loaded.unloading:
                task = asyncio.ensure_future(self._unload(loaded, "expired"))
                self._tasks.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(self._tasks.discard)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _next_change(self, poll: float | None = None) -> None:
        """Until a lease ends or a model goes (``poll``: or that many seconds, for requests
        that finish in the engine without a lease)."""
        event = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), poll)


def _source_digest(path: Path) -> str:
    """The loader's digest (the same as a loaded model's ModelInfo), or for what the loader
    cannot open (it will fail to load, with the reason), the hash of every file."""
    from minerva.loader import open_model

    try:
        return open_model(path).digest()
    except MinervaError:
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            with f.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()
