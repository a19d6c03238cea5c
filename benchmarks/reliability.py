"""The long reliability scenarios of docs/reliability.md ("Engine, streams and lifecycle"),
against a real ``minerva serve`` subprocess: stalled readers at scale, and a soak of mixed
requests reporting the server's memory slope. Results: benchmarks/results/reliability_*.json.

    PYTHONPATH=src python benchmarks/reliability.py stalled --clients 32
    PYTHONPATH=src python benchmarks/reliability.py soak --requests 10000 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "minerva-demo"
GUARD = 600.0  # seconds: hang guards only


class Server:
    """``minerva serve`` over the bundled demo model on a free loopback port."""

    def __init__(self, *flags: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "minerva.cli", "serve", "--port", str(self.port),
               "--device", "cpu", "--num-threads", "1", "--no-access-log", *flags]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + GUARD
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{Path(self.log.name).read_text()}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def metric(self, prefix: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(GUARD)


# -- stalled readers ------------------------------------------------------------------------
def _stalled_client(port: int, max_tokens: int) -> socket.socket:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell a story"}],
                       "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                       "logprobs": True, "top_logprobs": 20}).encode()  # fmt: skip
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    return sock


def _stalled_round(srv: Server, args: argparse.Namespace) -> dict:
    """Open the stalled clients, wait until every one is dropped, then let them go."""
    abort = 'minerva_requests_finished_total{finish_reason="abort"}'
    before, aborted0 = srv.rss_mib(), srv.metric(abort)
    tokens0 = srv.metric("minerva_generation_tokens_total")
    start = time.monotonic()
    clients = [_stalled_client(srv.port, args.max_tokens) for _ in range(args.clients)]
    peak, dropped = before, 0.0
    while dropped < args.clients and time.monotonic() - start < GUARD:
        time.sleep(0.2)
        peak = max(peak, srv.rss_mib())
        dropped = srv.metric(abort) - aborted0
    took = time.monotonic() - start
    for c in clients:
        c.close()
    time.sleep(1.0)
    return {
        "dropped": int(dropped), "seconds_until_all_dropped": round(took, 1),
        "tokens_generated": int(srv.metric("minerva_generation_tokens_total") - tokens0),
        "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak, 1),
        "rss_after_mib": round(srv.rss_mib(), 1),
        "in_flight_after": srv.metric("minerva_requests_running")
        + srv.metric("minerva_requests_waiting"),
    }  # fmt: skip


def stalled(args: argparse.Namespace) -> dict:
    """Rounds of stalled clients: the first warms the server's buffers and allocator up, the
    growth after the later rounds is what stalled readers leave behind."""
    srv = Server("--write-timeout", str(args.write_timeout), "--max-model-len", "8192",
                 "--max-queued-requests", str(args.clients))  # fmt: skip
    try:
        for _ in range(3):  # warm the paths up before the baseline
            httpx.post(f"{srv.url}/v1/completions", timeout=GUARD,
                       json={"model": MODEL, "prompt": "Once", "max_tokens": 8})  # fmt: skip
        rounds = [_stalled_round(srv, args) for _ in range(args.rounds)]
        ok = httpx.post(f"{srv.url}/v1/completions", timeout=GUARD,
                        json={"model": MODEL, "prompt": "Once", "max_tokens": 4}).status_code  # fmt: skip
    finally:
        code = srv.stop()
    last = rounds[-1]
    retained = last["rss_after_mib"] - rounds[0]["rss_after_mib"]
    peak_per_client = (last["rss_peak_mib"] - last["rss_before_mib"]) / args.clients
    result = {
        "scenario": "stalled_readers", "clients": args.clients, "rounds": rounds,
        "write_timeout_s": args.write_timeout, "max_tokens": args.max_tokens,
        "dropped_last_round": last["dropped"],
        "rss_retained_after_warm_round_mib": round(retained, 1),
        "rss_peak_growth_per_client_mib": round(peak_per_client, 2),
        "request_after_status": ok, "exit_code": code,
    }  # fmt: skip
    print(
        f"stalled readers: {last['dropped']} of {args.clients} dropped per round, "
        f"{retained:.1f} MiB retained after {args.rounds - 1} more round(s), "
        f"peak +{peak_per_client:.2f} MiB per client"
    )
    return result


# -- soak -----------------------------------------------------------------------------------
KINDS = ["completion", "chat_stream", "ollama_stream", "ollama_chat", "disconnect", "bad"]
WEIGHTS = [30, 25, 15, 10, 10, 10]


async def _one(client: httpx.AsyncClient, kind: str, rng: random.Random) -> int:
    n = rng.randint(1, 16)
    text = rng.choice(["Once upon a time", "The cat", "Hello", "A story about a dog"])
    chat = [{"role": "user", "content": text}]
    if kind == "completion":
        body = {"model": MODEL, "prompt": text, "max_tokens": n, "temperature": rng.random()}
        return (await client.post("/v1/completions", json=body)).status_code
    if kind == "ollama_chat":
        body = {"model": MODEL, "messages": chat, "stream": False, "options": {"num_predict": n}}
        return (await client.post("/api/chat", json=body)).status_code
    if kind == "bad":
        bad = rng.choice([b"{not json", b'{"model": "x", "prompt": 1, "max_tokens": -1}', b"[]"])
        return (await client.post("/v1/completions", content=bad)).status_code
    url, body = "/v1/chat/completions", {"model": MODEL, "messages": chat, "max_tokens": n,
                                         "stream": True}  # fmt: skip
    if kind == "ollama_stream":
        url, body = "/api/generate", {"model": MODEL, "prompt": text, "options": {"num_predict": n}}
    if kind == "disconnect":
        body["max_tokens"] = 200
    async with client.stream("POST", url, json=body) as r:
        async for _ in r.aiter_lines():
            if kind == "disconnect":
                break  # leaves mid-stream: the server must abort and free it
    return r.status_code if kind != "disconnect" else 499


async def _soak(srv: Server, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    kinds = rng.choices(KINDS, WEIGHTS, k=args.requests)
    statuses: Counter = Counter()
    samples: list[tuple[int, float]] = [(0, srv.rss_mib())]
    done, next_sample = 0, args.sample_every
    queue: asyncio.Queue = asyncio.Queue()
    for i, kind in enumerate(kinds):
        queue.put_nowait((i, kind))

    async def worker(seed: int) -> None:
        nonlocal done, next_sample
        wrng = random.Random(seed)
        async with httpx.AsyncClient(base_url=srv.url, timeout=GUARD) as client:
            while not queue.empty():
                _, kind = queue.get_nowait()
                statuses[f"{kind}:{await _one(client, kind, wrng)}"] += 1
                done += 1
                if done >= next_sample:
                    next_sample += args.sample_every
                    samples.append((done, await asyncio.to_thread(srv.rss_mib)))

    start = time.monotonic()
    await asyncio.gather(*(worker(args.seed + w) for w in range(args.concurrency)))
    took = time.monotonic() - start
    return {"statuses": dict(sorted(statuses.items())), "samples": samples, "seconds": took}


def _slope_per_1000(samples: list[tuple[int, float]], skip: int) -> float:
    """Least-squares MiB per 1,000 requests over the samples after the first ``skip``."""
    pts = [(n / 1000, mib) for n, mib in samples if n >= skip]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var


def soak(args: argparse.Namespace) -> dict:
    srv = Server("--max-queued-requests", "1024")
    try:
        run = asyncio.run(_soak(srv, args))
        idle = srv.metric("minerva_requests_running") + srv.metric("minerva_requests_waiting")
    finally:
        code = srv.stop()
    server_errors = sum(v for k, v in run["statuses"].items() if k.split(":")[1].startswith("5"))
    slope = _slope_per_1000(run["samples"], skip=args.warmup)
    result = {
        "scenario": "soak", "requests": args.requests, "concurrency": args.concurrency,
        "seconds": round(run["seconds"], 1),
        "requests_per_second": round(args.requests / run["seconds"], 1),
        "statuses": run["statuses"], "server_errors_5xx": server_errors,
        "rss_mib_by_requests": [[n, round(m, 1)] for n, m in run["samples"]],
        "memory_slope_mib_per_1000": round(slope, 3), "slope_after_requests": args.warmup,
        "left_running_or_waiting": idle, "exit_code": code,
    }  # fmt: skip
    print(
        f"soak: {args.requests} requests in {run['seconds']:.0f} s, {server_errors} 5xx, "
        f"memory slope {slope:+.3f} MiB per 1,000 requests (after {args.warmup})"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("stalled", help="clients that stop reading mid-stream")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=8000)
    p.add_argument("--write-timeout", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/reliability_stalled.json"))
    p = sub.add_parser("soak", help="many mixed requests; the server's memory slope")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--sample-every", type=int, default=500)
    # The slope is fitted after the warm-up: the CPU KV cache's pages become resident as its
    # blocks are first written, which this mix of requests finishes within ~1,500 requests.
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/reliability_soak.json"))
    args = parser.parse_args()
    result = stalled(args) if args.scenario == "stalled" else soak(args)
    write_results(f"reliability_{args.scenario}", "reliability.py", args, [result], args.output)


if __name__ == "__main__":
    main()
