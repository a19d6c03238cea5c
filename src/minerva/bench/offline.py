"""Offline benchmarks (in-process, no HTTP): batch-1 latency and batched throughput.

Latency (one prompt of ``prompt_len`` tokens, ``output_len`` tokens out, EOS ignored), the
median over repeats of:

* TTFT: call to first token on the host (prefill + first sample);
* prefill tokens/s = prompt_len / TTFT;
* decode tokens/s = (output_len - 1) / (last token - first token);
* achieved memory bandwidth = weight bytes x decode tokens/s (each decode step reads every
  weight once; the KV cache is left out, so this is a lower bound).

Throughput: all requests submitted at once; output, total (prompt + output) tokens and
requests per second of wall time, and how many requests the engine failed (their missing
tokens are not counted as output). Peak RSS of this process is sampled during each benchmark;
peak GPU memory comes from torch. Both also record the energy the CPU / GPU counters saw
(energy.py; "not available" where none can be read), joules per generated token, and the mean
CPU (this process, 100 = one core busy) and GPU utilisation over the measured runs.
"""

from __future__ import annotations

import os
import statistics
import time

from minerva.bench.drivers import OfflineDriver
from minerva.bench.energy import EnergyMeter
from minerva.bench.monitor import MonitorSummary, ResourceMonitor
from minerva.errors import ConfigError


def check_fits(backend: OfflineDriver, prompt_len: int, output_len: int) -> None:
    limit = backend.max_model_len
    if limit and prompt_len + output_len > limit:
        raise ConfigError(
            f"{backend.name}: {prompt_len} prompt + {output_len} output tokens exceed the "
            f"model's length of {limit}; lower --input-len / --output-len"
        )


def _one_latency(backend: OfflineDriver, prompt_ids: list[int], output_len: int) -> dict:
    start = time.perf_counter()
    times = backend.stream_timings(prompt_ids, output_len)
    if len(times) != output_len:
        raise RuntimeError(f"{backend.name} produced {len(times)} tokens, asked for {output_len}")
    ttft = times[0] - start
    span = times[-1] - times[0]
    # an engine that hands every token over at once (no streaming) has no decode rate to see
    decode = (output_len - 1) / span if output_len > 1 and span > 0 else None
    return {"ttft_s": ttft, "decode_tok_s": decode, "e2e_s": times[-1] - start}


def run_latency(
    backend: OfflineDriver,
    prompt_ids: list[int],
    output_len: int,
    repeats: int = 3,
    warmup: int = 1,
) -> dict:
    """Batch-1 latency figures (medians over ``repeats``) plus each repeat's raw numbers."""
    check_fits(backend, len(prompt_ids), output_len)
    for _ in range(warmup):
        _one_latency(backend, prompt_ids, min(output_len, 4))
    backend.reset_peak_memory()
    spec_before = backend.spec_decode_counters()
    with ResourceMonitor(os.getpid(), interval=0.05) as mon, EnergyMeter() as meter:
        runs = [_one_latency(backend, prompt_ids, output_len) for _ in range(max(repeats, 1))]
    ttft = statistics.median(r["ttft_s"] for r in runs)
    e2e = statistics.median(r["e2e_s"] for r in runs)
    decodes = [r["decode_tok_s"] for r in runs if r["decode_tok_s"] is not None]
    decode = statistics.median(decodes) if decodes else None
    return {
        "backend": backend.name,
        "prompt_len": len(prompt_ids),
        "output_len": output_len,
        "ttft_ms": ttft * 1e3,
        "prefill_tok_s": len(prompt_ids) / ttft,
        "decode_tok_s": decode,
        "tpot_ms": 1e3 / decode if decode else None,
        "e2e_ms": e2e * 1e3,
        "weight_bytes": backend.weight_bytes,
        "bandwidth_gb_s": backend.weight_bytes * decode / 1e9 if decode else None,
        "peak_rss_bytes": mon.summary.peak_rss_bytes,
        "peak_gpu_bytes": backend.peak_gpu_bytes(),
        "spec_decode": spec_decode_summary(spec_before, backend.spec_decode_counters()),
        **usage(mon.summary, meter.result(output_len * len(runs))),
        "runs": runs,
    }


def run_throughput(
    backend: OfflineDriver,
    prompts: list[list[int]],
    output_lens: list[int],
    warmup: bool = True,
) -> dict:
    """Every prompt submitted at once (EOS ignored); tokens and requests per second."""
    for p, n in zip(prompts, output_lens):
        check_fits(backend, len(p), n)
    if warmup:
        backend.generate(prompts[:2], [min(n, 4) for n in output_lens[:2]])
    backend.reset_peak_memory()
    spec_before = backend.spec_decode_counters()
    failed_before = backend.failed_requests
    with ResourceMonitor(os.getpid(), interval=0.05) as mon, EnergyMeter() as meter:
        start = time.perf_counter()
        outputs = backend.generate(prompts, output_lens, ignore_eos=True)
        duration = time.perf_counter() - start
    num_out = sum(len(o) for o in outputs)
    num_in = sum(len(p) for p in prompts)
    return {
        "backend": backend.name,
        "num_requests": len(prompts),
        "total_input_tokens": num_in,
        "total_output_tokens": num_out,
        "requested_output_tokens": sum(output_lens),
        "failed_requests": backend.failed_requests - failed_before,
        "duration_s": duration,
        "request_throughput": len(prompts) / duration,
        "output_throughput": num_out / duration,
        "total_token_throughput": (num_in + num_out) / duration,
        "peak_rss_bytes": mon.summary.peak_rss_bytes,
        "peak_gpu_bytes": backend.peak_gpu_bytes(),
        "spec_decode": spec_decode_summary(spec_before, backend.spec_decode_counters()),
        **usage(mon.summary, meter.result(num_out)),
    }


def usage(summary: MonitorSummary, energy: dict) -> dict:
    """CPU / GPU utilisation and energy of one measurement, as row fields."""
    return {
        "cpu_percent": summary.mean_cpu_percent,
        "system_cpu_percent": summary.mean_system_cpu_percent,
        "gpu_util_percent": summary.mean_gpu_util_percent,
        "energy_per_token_j": energy["energy_per_token_j"],
        "energy": energy,
    }


def spec_decode_summary(before: dict | None, after: dict | None) -> dict | None:
    """Speculative decoding during one measurement (counter differences): drafts, accepted,
    acceptance rate overall and per position, mean tokens per verify step. None: no speculation."""
    if before is None or after is None:
        return None
    delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
    per = [
        [a - (before[k][j] if j < len(before[k]) else 0) for j, a in enumerate(after[k])]
        for k in ("drafts_per_position", "accepted_per_position")
    ]
    drafts, steps = delta["draft_tokens"], delta["verify_steps"]
    return {
        **delta,
        "acceptance_rate": delta["accepted_tokens"] / drafts if drafts else 0.0,
        "mean_accepted_length": delta["emitted_tokens"] / steps if steps else 0.0,
        "acceptance_rate_per_position": [a / d if d else 0.0 for d, a in zip(*per)],
    }


def offline_document(
    kind: str, results: list[dict], config: dict, system: dict, command: str
) -> dict:
    """The JSON result document of an offline benchmark (latency, throughput, ...)."""
    return {
        "benchmark": kind,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "system": system,
        "config": config,
        "results": results,
    }
