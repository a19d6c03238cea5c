"""Write a result document: JSON (everything, raw timings included), CSV and a Markdown report
with a system section, result tables and ratios to the first target / backend."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from minerva.bench.redact import Redactor

# benchmark -> columns of its results table: (key, header, format)
OFFLINE_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "latency": [
        ("backend", "backend", "s"),
        ("prompt_len", "prompt", "d"),
        ("output_len", "output", "d"),
        ("ttft_ms", "TTFT ms", ".1f"),
        ("prefill_tok_s", "prefill tok/s", ".1f"),
        ("decode_tok_s", "decode tok/s", ".2f"),
        ("tpot_ms", "TPOT ms", ".2f"),
        ("e2e_ms", "E2E ms", ".1f"),
        ("bandwidth_gb_s", "weights GB/s", ".2f"),
        ("peak_rss_bytes", "peak RSS", "bytes"),
        ("peak_gpu_bytes", "peak GPU", "bytes"),
        ("cpu_percent", "CPU %", ".0f"),
        ("energy_per_token_j", "J/token", ".3g"),
        ("spec_decode.acceptance_rate", "spec accept", ".2f"),
        ("spec_decode.mean_accepted_length", "tok/verify", ".2f"),
    ],
    "throughput": [
        ("backend", "backend", "s"),
        ("num_requests", "requests", "d"),
        ("total_input_tokens", "in tokens", "d"),
        ("total_output_tokens", "out tokens", "d"),
        ("failed_requests", "failed", "d"),
        ("duration_s", "time s", ".2f"),
        ("request_throughput", "req/s", ".2f"),
        ("output_throughput", "out tok/s", ".1f"),
        ("total_token_throughput", "total tok/s", ".1f"),
        ("peak_rss_bytes", "peak RSS", "bytes"),
        ("peak_gpu_bytes", "peak GPU", "bytes"),
        ("cpu_percent", "CPU %", ".0f"),
        ("energy_per_token_j", "J/token", ".3g"),
        ("spec_decode.acceptance_rate", "spec accept", ".2f"),
        ("spec_decode.mean_accepted_length", "tok/verify", ".2f"),
    ],
    "perplexity": [
        ("backend", "backend", "s"),
        ("model", "model", "s"),
        ("num_tokens", "tokens", "d"),
        ("perplexity", "perplexity", ".4f"),
        ("duration_s", "time s", ".2f"),
    ],
    "consistency": [
        ("a", "A", "s"),
        ("b", "B", "s"),
        ("unit", "unit", "s"),
        ("token_agreement", "token agreement", ".3f"),
        ("prefix_agreement", "prefix agreement", ".3f"),
        ("exact_match", "exact match", ".3f"),
        ("first_divergence", "first divergence", "d"),
        ("num_diverged", "diverged", "d"),
        ("top_k_overlap", "top-20 overlap", ".2f"),
        ("kl_divergence", "KL(A‖B)", ".4f"),
        ("num_prompts", "prompts", "d"),
    ],
}
ENGINE_COLUMNS = [
    ("name", "engine", "s"),
    ("mean_output_tokens", "mean output tokens", ".1f"),
    ("distinct_tokens", "distinct tokens", "d"),
    ("failed_requests", "failed requests", "d"),
    ("coherence_ppl", "coherence (ppl under reference)", ".3f"),
]
"""consistency: one row per engine (doc["engines"])."""
# benchmark -> metrics compared to the first row: (key, header)
OFFLINE_RATIOS: dict[str, list[tuple[str, str]]] = {
    "latency": [
        ("decode_tok_s", "decode tok/s"),
        ("prefill_tok_s", "prefill tok/s"),
        ("ttft_ms", "TTFT"),
    ],
    "throughput": [("output_throughput", "out tok/s"), ("request_throughput", "req/s")],
}
SERVE_COLUMNS = [
    ("target", "target", "s"),
    ("level", "load", "s"),
    ("completed", "ok", "d"),
    ("failed", "failed", "d"),
    ("request_throughput", "req/s", ".2f"),
    ("output_throughput", "out tok/s", ".1f"),
    ("total_token_throughput", "total tok/s", ".1f"),
    ("ttft_ms.median", "TTFT p50", ".1f"),
    ("ttft_ms.p90", "TTFT p90", ".1f"),
    ("ttft_ms.p99", "TTFT p99", ".1f"),
    ("tpot_ms.median", "TPOT p50", ".2f"),
    ("tpot_ms.p99", "TPOT p99", ".2f"),
    ("itl_ms.median", "ITL p50", ".2f"),
    ("itl_ms.p99", "ITL p99", ".2f"),
    ("e2e_ms.median", "E2E p50", ".0f"),
    ("e2e_ms.p99", "E2E p99", ".0f"),
    ("goodput", "goodput req/s", ".2f"),
    ("peak_rss_bytes", "peak RSS", "bytes"),
    ("mean_cpu_percent", "CPU %", ".0f"),
    ("peak_gpu_memory_bytes", "peak GPU mem", "bytes"),
]
SERVE_RATIOS = [
    ("output_throughput", "out tok/s"),
    ("request_throughput", "req/s"),
    ("ttft_ms.median", "TTFT p50"),
    ("tpot_ms.median", "TPOT p50"),
    ("e2e_ms.median", "E2E p50"),
]


def lookup(row: dict, key: str):
    """row['ttft_ms']['median'] for key 'ttft_ms.median'."""
    value = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if spec == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if spec == "s":
        return str(value)
    return format(value, spec)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def system_section(system: dict) -> str:
    """The machine's facts, led by which role it played (server, or client only)."""
    rows = [
        [k, ", ".join(map(str, v)) if isinstance(v, list) else fmt(v, "s")]
        for k, v in system.items()
        if k != "machine"
    ]
    role = (
        f"{system['machine'][0].upper()}{system['machine'][1:]}.\n\n"
        if system.get("machine")
        else ""
    )
    return "## System\n\n" + role + md_table(["", ""], rows)


def _table(rows: list[dict], columns) -> str:
    return md_table(
        [h for _, h, _ in columns], [[fmt(lookup(r, k), f) for k, _, f in columns] for r in rows]
    )


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b not in (None, 0) else "-"


def serve_markdown(doc: dict) -> str:
    summaries = doc["summaries"]
    parts = [
        f"# minerva bench serve\n\n{doc['date']}\n\n`{doc['command']}`",
        system_section(doc["system"]),
    ]
    cfg = "\n".join(f"- {k}: {v}" for k, v in doc["config"].items())
    tgts = "\n".join(
        f"- **{t['name']}**: {t['url']} ({t['api']}, model {t['model']})" for t in doc["targets"]
    )
    parts.append(f"## Setup\n\n{cfg}\n\nTargets:\n\n{tgts}")
    parts.append(
        "## Results\n\nLatencies in ms; throughput per second of wall time.\n\n"
        + _table(summaries, SERVE_COLUMNS)
    )
    names = list(dict.fromkeys(s["target"] for s in summaries))
    if len(names) > 1:
        base = {s["level"]: s for s in summaries if s["target"] == names[0]}
        rows = [
            [s["target"], s["level"]]
            + [_ratio(lookup(s, k), lookup(base[s["level"]], k)) for k, _ in SERVE_RATIOS]
            for s in summaries
            if s["target"] != names[0] and s["level"] in base
        ]
        parts.append(
            f"## Ratios to {names[0]}\n\nAbove 1x: more throughput, or longer latency.\n\n"
            + md_table(["target", "load"] + [h for _, h in SERVE_RATIOS], rows)
        )
    failures = [
        (s["target"], s["level"], why, n)
        for s in summaries
        for why, n in s["failure_reasons"].items()
    ]
    if failures:
        parts.append(
            "## Failures\n\n"
            + md_table(
                ["target", "load", "reason", "count"],
                [[t, lv, why.replace("|", "/"), str(n)] for t, lv, why, n in failures],
            )
        )
    return "\n\n".join(parts) + "\n"


def offline_markdown(doc: dict) -> str:
    kind = doc["benchmark"]
    rows = doc["results"]
    parts = [
        f"# minerva bench {kind}\n\n{doc['date']}\n\n`{doc['command']}`",
        system_section(doc["system"]),
    ]
    parts.append("## Setup\n\n" + "\n".join(f"- {k}: {v}" for k, v in doc["config"].items()))
    parts.append("## Results\n\n" + _table(rows, OFFLINE_COLUMNS[kind]))
    ratios = OFFLINE_RATIOS.get(kind)
    if ratios and len(rows) > 1:
        base = rows[0]
        table = [
            [r["backend"]] + [_ratio(r.get(k), base.get(k)) for k, _ in ratios] for r in rows[1:]
        ]
        parts.append(
            f"## Ratios to {base['backend']}\n\n"
            + md_table(["backend"] + [h for _, h in ratios], table)
        )
    if doc.get("engines"):
        ref = doc.get("reference") or {}
        parts.append(
            f"## Engines (coherence: reference {ref.get('backend', '-')} on "
            f"{ref.get('model', '-')})\n\n" + _table(doc["engines"], ENGINE_COLUMNS)
        )
    return "\n\n".join(parts) + "\n"


def _flat(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[prefix + k] = v
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows flattened ('ttft_ms.median'); list values (raw chunk times) stay in the JSON."""
    flat = [_flat(r) for r in rows]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)


def write_report(doc: dict, out_dir: str | Path, redactor: Redactor | None = None) -> list[Path]:
    """results.json, *.csv and report.md under ``out_dir`` (results.json first, so a failure
    later loses no measurement; secrets masked in all); returns the paths written."""
    doc = (redactor or Redactor()).value(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "report.md"]
    paths[0].write_text(json.dumps(doc, indent=2, default=str))
    if doc["benchmark"] == "serve":
        paths[1].write_text(serve_markdown(doc))
        paths += [out / "summary.csv", out / "requests.csv"]
        write_csv(paths[2], doc["summaries"])
        write_csv(paths[3], doc["requests"])
    else:
        paths[1].write_text(offline_markdown(doc))
        paths.append(out / "results.csv")
        write_csv(paths[2], doc["results"])
    return paths
