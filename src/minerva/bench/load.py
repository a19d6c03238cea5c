"""Load shapes and the serving benchmark loop.

A *level* is one load setting: a fixed concurrency (N requests, at most ``c`` in flight, the
next one starts when one ends) or a request rate (arrivals of a Poisson process, or a gamma
process when ``burstiness`` != 1, optionally capped at ``c`` in flight). For every level and
repeat, each target runs the whole workload in turn, with the order rotated between repeats
(A B, then B A), so drift of the machine (heat, background work) hits every target alike.
Warm-up requests run once per target before its first measured run and are not counted.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from minerva.bench.http_client import Target, send_request
from minerva.bench.metrics import RequestRecord
from minerva.bench.monitor import MonitorSummary, ResourceMonitor
from minerva.bench.protocols import GenParams
from minerva.bench.workloads import BenchRequest
from minerva.errors import ConfigError


@dataclass(frozen=True)
class LoadLevel:
    """At most ``concurrency`` requests in flight (None = no cap), arriving at ``request_rate``
    per second on average (inf = all at once)."""

    concurrency: int | None = 1
    request_rate: float = math.inf
    sweep: str = field(default="concurrency", compare=False)
    """What the benchmark varies: "concurrency" or "rate" (--request-rate)."""

    @property
    def label(self) -> str:
        if math.isinf(self.request_rate) and self.concurrency:
            return f"c={self.concurrency}"
        cap = f",c={self.concurrency}" if self.concurrency else ""
        return f"rate={self.request_rate:g}{cap}"

    @property
    def x(self) -> float | None:
        """The level's value on a plot axis (concurrency, or request rate); None for an
        unbounded rate in a rate sweep (plots put it after the finite ones)."""
        if not math.isinf(self.request_rate):
            return float(self.request_rate)
        if self.sweep == "rate" or self.concurrency is None:
            return None
        return float(self.concurrency)


def parse_levels(
    concurrency: str | None, request_rate: str | None, max_concurrency: int | None = None
) -> list[LoadLevel]:
    """'1,4,16' -> concurrency levels; with request rates ('2,inf') -> rate levels."""
    try:
        if request_rate:
            rates = [float(r) for r in request_rate.split(",")]
            if any(r <= 0 for r in rates):
                raise ValueError
            return [LoadLevel(max_concurrency, r, "rate") for r in rates]
        values = [int(c) for c in (concurrency or "1").split(",")]
        if any(c < 1 for c in values):
            raise ValueError
        return [LoadLevel(c) for c in values]
    except ValueError:
        raise ConfigError(
            "--concurrency takes positive integers (1,4,16) and --request-rate positive "
            "numbers or inf (0.5,2,inf)"
        ) from None


def arrival_offsets(num: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send time (s after the run starts) of each request: the first at 0, then gaps drawn from
    a gamma distribution with mean ``1/rate`` and shape ``burstiness`` (1 = Poisson process;
    below 1 burstier, above 1 more regular). ``rate=inf`` sends everything at once."""
    if burstiness <= 0:
        raise ConfigError(f"--burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        return [0.0] * num
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(num - 1, 0))
    return [0.0, *np.cumsum(gaps).tolist()][:num]


@dataclass
class RunResult:
    """One target running the workload once at one level."""

    target: str
    level: LoadLevel
    repeat: int
    duration: float
    records: list[RequestRecord]
    monitor: MonitorSummary = field(default_factory=MonitorSummary)


async def run_level(
    client: httpx.AsyncClient,
    target: Target,
    requests: list[BenchRequest],
    level: LoadLevel,
    params: GenParams,
    repeat: int = 0,
    seed: int = 0,
    burstiness: float = 1.0,
    on_done: Callable[[RequestRecord], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> tuple[list[RequestRecord], float]:
    """Send every request at this level; returns the records and the run's wall time.

    ``clock`` and ``sleep`` pace the arrivals (tests inject a virtual clock to check the pacing
    without depending on the machine's speed)."""
    offsets = arrival_offsets(len(requests), level.request_rate, burstiness, seed + repeat)
    limit = asyncio.Semaphore(level.concurrency) if level.concurrency else None
    start = clock()

    async def one(i: int, req: BenchRequest) -> RequestRecord:
        delay = offsets[i] - (clock() - start)
        if delay > 0:
            await sleep(delay)
        record = RequestRecord(target.name, level.label, repeat, i)
        if limit is not None:
            await limit.acquire()
        try:
            record.start = clock() - start
            await send_request(client, target, req, params, record)
        finally:
            if limit is not None:
                limit.release()
        if on_done is not None:
            on_done(record)
        return record

    records = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    return list(records), clock() - start


async def warm_up(
    client: httpx.AsyncClient, target: Target, requests: list[BenchRequest], n: int, params
) -> list[RequestRecord]:
    """``n`` uncounted requests (two at a time) so lazy loading and caches settle first."""
    if n <= 0:
        return []
    warm = [requests[i % len(requests)] for i in range(n)]
    records, _ = await run_level(client, target, warm, LoadLevel(min(n, 2)), params, -1)
    return records


async def run_benchmark(
    client: httpx.AsyncClient,
    targets: list[Target],
    requests: list[BenchRequest],
    levels: list[LoadLevel],
    params: GenParams,
    repeats: int = 1,
    warmup: int = 1,
    seed: int = 0,
    burstiness: float = 1.0,
    monitor_interval: float = 0.1,
    on_run_start: Callable[[str, LoadLevel, int], None] | None = None,
    on_done: Callable[[RequestRecord], None] | None = None,
    results: list[RunResult] | None = None,
) -> list[RunResult]:
    """Every level x repeat x target (rotated per repeat), each run under a ResourceMonitor.
    Runs are appended to ``results`` as they finish, so a caller keeps them if a later run
    fails."""
    results = [] if results is None else results
    warmed: set[str] = set()
    for level in levels:
        for repeat in range(repeats):
            shift = repeat % len(targets)
            for target in targets[shift:] + targets[:shift]:
                if target.name not in warmed:
                    warmed.add(target.name)
                    await warm_up(client, target, requests, warmup, params)
                if on_run_start is not None:
                    on_run_start(target.name, level, repeat)
                with ResourceMonitor(target.pid, monitor_interval) as mon:
                    records, duration = await run_level(
                        client, target, requests, level, params, repeat, seed, burstiness, on_done
                    )
                results.append(
                    RunResult(target.name, level, repeat, duration, records, mon.summary)
                )
    return results
