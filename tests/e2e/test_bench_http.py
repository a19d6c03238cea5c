"""The serving benchmark against a real local HTTP server with injected delays (first token after
X ms, then one every Y ms): the measured TTFT / ITL / TPOT, failures, token counts, arrivals,
concurrency, interleaving, and `minerva bench serve` end to end."""

from __future__ import annotations

import asyncio
import contextvars
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from minerva.bench.http_client import make_client, parse_target, resolve_model
from minerva.bench.load import LoadLevel, arrival_offsets, run_benchmark, run_level
from minerva.bench.metrics import summarize
from minerva.bench.protocols import GenParams
from minerva.bench.workloads import build_workload
from tests.bench_fake_server import MODEL, FakeLLMServer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TTFT_MS, ITL_MS = 60.0, 15.0


@pytest.fixture
def server():
    srv = FakeLLMServer(ttft_ms=TTFT_MS, itl_ms=ITL_MS).start()
    yield srv
    srv.stop()


def bench(srv, api, workload, level, warmup=1, repeats=1, params=None, targets=None):
    async def go():
        async with make_client(30) as client:
            tgts = targets or [parse_target(f"fake={srv.url},api={api}")]
            for t in tgts:
                await resolve_model(client, t)
            return await run_benchmark(
                client,
                tgts,
                build_workload(workload[0], workload[1]),
                [level],
                params or GenParams(),
                repeats=repeats,
                warmup=warmup,
            )

    return asyncio.run(go())


@pytest.mark.parametrize("api", ["openai", "openai-chat", "ollama", "ollama-chat"])
def test_measured_ttft_and_itl_match_the_injected_delays(server, api):
    (run,) = bench(server, api, ("fixed:in=8,out=8", 6), LoadLevel(2))
    s = summarize(run.records, run.duration)
    assert s["completed"] == 6 and s["failed"] == 0
    # Causal bounds only (no upper bounds: they would measure the machine): the client cannot
    # see token i before the server sends it, X + i*Y after the request arrived.
    for r in run.records:
        assert len(r.chunk_times) == 8 and r.ttft == r.chunk_times[0]
        assert all(t >= (TTFT_MS + i * ITL_MS) / 1e3 for i, t in enumerate(r.chunk_times))
        assert sorted(r.chunk_times) == r.chunk_times and r.chunk_times[-1] <= r.e2e
        assert r.tpot == pytest.approx((r.e2e - r.ttft) / 7)  # 8 tokens: 7 gaps after the first
    itls = [b - a for r in run.records for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    assert s["itl_ms"]["median"] == pytest.approx(1e3 * statistics.median(itls))
    assert s["ttft_ms"]["median"] == pytest.approx(
        1e3 * statistics.median(r.ttft for r in run.records)
    )
    assert s["e2e_ms"]["median"] >= TTFT_MS + 7 * ITL_MS  # milliseconds, not seconds
    assert {r.output_text for r in run.records} == {"".join(f" tok{i}" for i in range(8))}
    assert server.bodies[-1]["model"] == MODEL  # the first listed model was picked


def test_token_counts_come_from_the_servers_usage_not_the_chunks():
    srv = FakeLLMServer(ttft_ms=5, itl_ms=2, tokens_per_chunk=3).start()
    try:
        for api in ("openai", "ollama-chat"):
            (run,) = bench(srv, api, ("fixed:in=12,out=10", 3), LoadLevel(3), warmup=0)
            for r in run.records:
                assert len(r.chunk_times) == 4  # 10 tokens in chunks of 3, 3, 3, 1
                assert r.usage_reported and r.output_tokens == 10 and r.prompt_tokens == 12
                assert r.tpot == pytest.approx((r.e2e - r.ttft) / 9)
    finally:
        srv.stop()


def test_failures_are_counted_with_their_reasons():
    srv = FakeLLMServer(ttft_ms=5, itl_ms=2, fail_every=3, midstream_error_every=4).start()
    try:
        (run,) = bench(srv, "openai", ("fixed:in=4,out=5", 12), LoadLevel(1), warmup=0)
        s = summarize(run.records, run.duration)
        # Requests 3, 6, 9, 12 get HTTP 500; 4 and 8 fail mid-stream (12 already failed).
        assert s["failed"] == 6 and s["completed"] == 6
        assert s["failure_reasons"] == {
            "HTTP 500: injected failure": 4,
            "stream error: injected stream error": 2,
        }
        failed = [r.index for r in run.records if not r.success]
        assert failed == [2, 3, 5, 7, 8, 11]
        assert all(r.ttft is None or r.e2e is None for r in run.records if not r.success)
    finally:
        srv.stop()


def test_connection_refused_is_a_failure_not_a_crash(server):
    target = parse_target(f"down=http://127.0.0.1:{free_port()},model=m")
    (run,) = bench(
        server, "openai", ("fixed:in=4,out=2", 2), LoadLevel(1), warmup=0, targets=[target]
    )
    assert all(not r.success and r.error.startswith("ConnectError") for r in run.records)


class TaskClock:
    """A virtual clock per asyncio task: ``sleep(d)`` moves only the sleeping task's time on,
    at once. A request's start then reads exactly the time its pacing slept to."""

    def __init__(self) -> None:
        self._now = contextvars.ContextVar("now", default=0.0)
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self._now.get()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now.set(self._now.get() + seconds)
        await asyncio.sleep(0)


def test_poisson_arrivals_are_sent_at_their_scheduled_offsets(server):
    n, rate = 25, 40.0
    target = parse_target(f"fake={server.url},model=m")
    reqs = build_workload("fixed:in=4,out=2", n)
    clock = TaskClock()

    async def go():
        async with make_client(30) as client:
            return await run_level(
                client, target, reqs, LoadLevel(None, rate), GenParams(), seed=11,
                clock=clock.time, sleep=clock.sleep,
            )  # fmt: skip

    records, _ = asyncio.run(go())
    schedule = arrival_offsets(n, rate, seed=11)
    assert schedule[-1] > 0.3  # ~0.6 s of arrivals: a burst or a wrong rate cannot hide
    # Each request waits for its own slot, counted from the run's start (not a burst at 0, not
    # gaps stacked on a previous send), then is sent: its start is its slot exactly.
    assert [r.start for r in records] == pytest.approx(schedule, abs=1e-9)
    assert len(clock.sleeps) == n - 1  # every request but the first (at 0) waited
    assert all(r.success for r in records) and len(server.arrivals) == n


def test_concurrency_caps_requests_in_flight():
    # The server holds the stream until the first wave of 3 is in flight (whatever the speed).
    srv = FakeLLMServer(ttft_ms=TTFT_MS, itl_ms=ITL_MS, hold_until_in_flight=3).start()
    try:
        (run,) = bench(srv, "openai", ("fixed:in=4,out=3", 9), LoadLevel(3), warmup=0)
    finally:
        srv.stop()
    assert srv.max_in_flight == 3 and all(r.success for r in run.records)
    # Order, not timing: the k-th request to start waited for the (k-3)-th to end.
    starts = sorted(r.start for r in run.records)
    ends = sorted(r.start + r.e2e for r in run.records)
    assert all(starts[k] >= ends[k - 3] for k in range(3, 9))
    # 9 requests of at least X + 2Y each, at most 3 at a time: three waves at least.
    assert run.duration >= 3 * (TTFT_MS + 2 * ITL_MS) / 1e3


def test_targets_are_interleaved_and_warmed_up_once(server):
    targets = [parse_target(f"{n}={server.url},model=m") for n in ("a", "b")]
    runs = bench(
        server,
        "openai",
        ("fixed:in=4,out=2", 2),
        LoadLevel(1),
        warmup=2,
        repeats=2,
        targets=targets,
    )
    assert [(r.target, r.repeat) for r in runs] == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]
    assert len(server.arrivals) == 2 * 2 + 4 * 2  # warm-up once per target, then 4 runs of 2


def test_cli_bench_serve_writes_every_output(server, tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [
        sys.executable,
        "-m",
        "minerva.cli",
        "bench",
        "serve",
        "--target",
        f"fast={server.url}",
        "--target",
        f"chat={server.url},api=ollama-chat",
        "--workload",
        "standard",
        "--max-tokens",
        "6",
        "--concurrency",
        "1,4",
        "--num-prompts",
        "4",
        "--warmup",
        "1",
        "--slo",
        "ttft=30ms,tpot=50ms",  # below the injected 60 ms TTFT: no request can meet it
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "results in" in proc.stdout and "TTFT p50" in proc.stdout
    data = json.loads((out / "results.json").read_text())
    assert [(s["target"], s["level"]) for s in data["summaries"]] == [
        ("fast", "c=1"),
        ("chat", "c=1"),
        ("fast", "c=4"),
        ("chat", "c=4"),
    ]
    for s in data["summaries"]:
        assert s["completed"] == 4 and s["total_output_tokens"] == 4 * 6
        assert s["goodput"] == 0 and s["request_throughput"] > 0  # the SLO was applied
        assert TTFT_MS <= s["ttft_ms"]["median"]  # causal: the server waits that long
    assert data["targets"][1]["model"] == MODEL and data["config"]["levels"] == ["c=1", "c=4"]
    assert data["system"]["logical_cores"] == os.cpu_count()
    assert len(data["requests"]) == 16
    assert all(r["ttft"] <= r["e2e"] for r in data["requests"])
    with open(out / "requests.csv") as f:
        assert len(list(csv.DictReader(f))) == 16
    md = (out / "report.md").read_text()
    assert "## Ratios to fast" in md and "## System" in md
    for png in ("throughput.png", "latency.png", "ttft_cdf.png", "itl_cdf.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # Order, not throughput: at c=1 each request starts after the previous one ended; at c=4
    # all four are sent before any of them ends.
    for target in ("fast", "chat"):
        runs = {lvl: [r for r in data["requests"] if (r["target"], r["level"]) == (target, lvl)]
                for lvl in ("c=1", "c=4")}  # fmt: skip
        c1 = sorted(runs["c=1"], key=lambda r: r["start"])
        assert all(b["start"] >= a["start"] + a["e2e"] for a, b in zip(c1, c1[1:]))
        c4 = runs["c=4"]
        assert max(r["start"] for r in c4) < min(r["start"] + r["e2e"] for r in c4)


def test_cli_user_errors_are_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minerva.cli",
            "bench",
            "serve",
            "--target",
            "nourl",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "use NAME=URL" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_consistency_between_http_targets(server, tmp_path):
    from minerva.cli import main

    other = FakeLLMServer(ttft_ms=1, itl_ms=1, diverge_at=3).start()
    try:
        args = [
            "bench",
            "consistency",
            "--target",
            f"a={server.url}",
            "--target",
            f"b={server.url},api=ollama",
            "--target",
            f"c={other.url}",
            "--num-prompts",
            "2",
            "--max-tokens",
            "6",
            "--no-progress",
            "--output",
            str(tmp_path),
        ]
        assert main(args) == 0
    finally:
        other.stop()
    rows = {
        (r["a"], r["b"]): r for r in json.loads((tmp_path / "results.json").read_text())["results"]
    }
    assert rows["a", "b"]["unit"] == "words"  # no tokenizer given: compared word by word
    assert rows["a", "b"]["exact_match"] == 1.0 and rows["a", "b"]["token_agreement"] == 1.0
    # c says tok0 tok1 tok2 alt3 alt4 alt5: half the words, diverging at the fourth.
    assert rows["a", "c"]["token_agreement"] == pytest.approx(0.5)
    assert rows["a", "c"]["prefix_agreement"] == pytest.approx(0.5)
    assert rows["b", "c"]["exact_match"] == 0.0
    assert all((b.get("options") or b)["temperature"] == 0.0 for b in server.bodies[-4:])
