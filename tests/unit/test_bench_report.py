"""Result documents and their files: JSON, CSV, Markdown (ratios) and PNG plots."""

from __future__ import annotations

import csv
import json
import math

import pytest

from minerva.bench.load import LoadLevel, RunResult
from minerva.bench.metrics import RequestRecord
from minerva.bench.monitor import MonitorSummary
from minerva.bench.offline import offline_document
from minerva.bench.report import write_report
from minerva.bench.results import serve_document, summarize_runs

SYSTEM = {"cpu": "test cpu", "logical_cores": 2, "gpus": [], "torch": "x"}


def _records(target: str, level: str, repeat: int, ttft: float, itl: float) -> list:
    out = []
    for i in range(4):
        chunks = [ttft + k * itl for k in range(5)]
        out.append(
            RequestRecord(
                target,
                level,
                repeat,
                i,
                start=0.0,
                success=True,
                ttft=ttft,
                e2e=chunks[-1],
                chunk_times=chunks,
                prompt_tokens=10,
                output_tokens=5,
                usage_reported=True,
                output_text="x",
            )
        )
    return out


def _runs() -> list[RunResult]:
    """Target b is twice as fast as a: half the duration, half the latencies."""
    runs = []
    for level in (LoadLevel(1), LoadLevel(4)):
        for repeat in range(2):
            for name, scale in (("a", 1.0), ("b", 0.5)):
                recs = _records(name, level.label, repeat, 0.1 * scale, 0.02 * scale)
                mon = MonitorSummary(num_samples=3, peak_rss_bytes=int(2**30 * (1 + repeat)))
                runs.append(RunResult(name, level, repeat, 2.0 * scale, recs, mon))
    runs[-1].records[0].success = False
    runs[-1].records[0].error = "HTTP 500: boom|x"
    return runs


def test_summaries_pool_repeats():
    summaries = summarize_runs(_runs(), slo={"ttft": 0.06})
    assert [(s["target"], s["level"]) for s in summaries] == [
        ("a", "c=1"),
        ("b", "c=1"),
        ("a", "c=4"),
        ("b", "c=4"),
    ]
    a1, b1, _, b4 = summaries
    assert a1["repeats"] == 2 and a1["num_requests"] == 8
    assert a1["output_throughput"] == pytest.approx(40 / 4.0)  # 8 requests x 5 tokens / 2 x 2 s
    assert b1["output_throughput"] == pytest.approx(40 / 2.0)
    assert a1["output_throughput_per_repeat"] == pytest.approx([10.0, 10.0])
    assert b1["ttft_ms"]["median"] == pytest.approx(50.0) and b1["itl_ms"][
        "median"
    ] == pytest.approx(10.0)
    assert a1["peak_rss_bytes"] == 2 * 2**30  # peak over the repeats
    assert b4["failed"] == 1 and b4["failure_reasons"] == {"HTTP 500: boom|x": 1}
    assert a1["goodput"] == 0.0 and b1["goodput"] == pytest.approx(8 / 2.0)


def test_serve_report_files_parse(tmp_path):
    runs = _runs()
    doc = serve_document(
        runs,
        [{"name": n, "url": "http://x", "api": "openai", "model": "m"} for n in "ab"],
        {"workload": "standard"},
        SYSTEM,
        {"ttft": 0.2},
        "minerva bench serve",
    )
    paths = write_report(doc, tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "report.md",
        "requests.csv",
        "results.json",
        "summary.csv",
    ]
    data = json.loads((tmp_path / "out/results.json").read_text())
    assert len(data["requests"]) == 32 and len(data["runs"]) == 8
    assert data["requests"][0]["chunk_times"] == pytest.approx([0.1, 0.12, 0.14, 0.16, 0.18])
    with open(tmp_path / "out/requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and float(rows[0]["ttft"]) == pytest.approx(0.1)
    with open(tmp_path / "out/summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert float(summary[1]["ttft_ms.median"]) == pytest.approx(50.0)
    md = (tmp_path / "out/report.md").read_text()
    assert "## System" in md and "test cpu" in md and "## Ratios to a" in md
    # b vs a at c=1: twice the throughput, half the TTFT.
    ratio_row = next(line for line in md.splitlines() if line.startswith("| b | c=1 | 2.00x"))
    assert "0.50x" in ratio_row
    assert "HTTP 500: boom/x" in md  # a '|' would break the table


def test_serve_plots_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from minerva.bench.plots import write_serve_plots

    doc = serve_document(_runs(), [], {}, SYSTEM)
    paths = write_serve_plots(doc, tmp_path)
    assert [p.name for p in paths] == [
        "throughput.png",
        "latency.png",
        "ttft_cdf.png",
        "itl_cdf.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(p)
        assert image.shape[0] > 100 and image.shape[1] > 300


def test_offline_report_has_ratio_to_the_first_backend(tmp_path):
    results = [
        {
            "backend": "minerva",
            "prompt_len": 8,
            "output_len": 4,
            "ttft_ms": 10.0,
            "prefill_tok_s": 800.0,
            "decode_tok_s": 30.0,
            "peak_rss_bytes": 2**30,
        },
        {
            "backend": "transformers",
            "prompt_len": 8,
            "output_len": 4,
            "ttft_ms": 20.0,
            "prefill_tok_s": 400.0,
            "decode_tok_s": 10.0,
            "peak_rss_bytes": None,
        },
    ]
    doc = offline_document("latency", results, {"model": "m"}, SYSTEM, "cmd")
    write_report(doc, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| transformers | 0.33x | 0.50x | 2.00x |" in md
    assert "1024 MiB" in md
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["backend"] for r in rows] == ["minerva", "transformers"]
    assert json.loads((tmp_path / "results.json").read_text())["results"] == results


def test_every_report_table_has_as_many_header_cells_as_columns(tmp_path):
    """A '|' in a header (e.g. KL(A||B)) splits the header row: markdown then shows no table."""
    from minerva.bench import report

    kinds = {**report.OFFLINE_COLUMNS, "engines": report.ENGINE_COLUMNS,
             "serve": report.SERVE_COLUMNS}  # fmt: skip
    for kind, columns in kinds.items():
        row = {key.split(".")[0]: None for key, _, _ in columns}
        table = report._table([row], columns)
        header, delimiter, body = table.splitlines()[:3]
        cells = [line.count("|") for line in (header, delimiter, body)]
        assert cells == [len(columns) + 1] * 3, (kind, header)


def _captured_figures(monkeypatch) -> dict[str, object]:
    """Each serve plot's matplotlib figure, by file name, kept as it is saved."""
    from minerva.bench import plots

    figures, real = {}, plots._save

    def keep(plt, fig, path, doc=None):
        real(plt, fig, path, doc)  # draws the caption, saves and closes (the figure stays)
        figures[path.name] = fig

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _level_runs(levels: list[LoadLevel]) -> list[RunResult]:
    runs = []
    for level in levels:
        recs = _records("a", level.label, 0, 0.1, 0.02)
        runs.append(RunResult("a", level, 0, 2.0, recs, MonitorSummary(num_samples=2)))
    return runs


@pytest.mark.parametrize(
    "levels, xlabel, ticks, labels",
    [
        ([LoadLevel(1), LoadLevel(4), LoadLevel(16)], "concurrency", [1, 4, 16], ["1", "4", "16"]),
        (
            [LoadLevel(None, 0.5, "rate"), LoadLevel(None, 2.0, "rate"),
             LoadLevel(None, math.inf, "rate")],
            "request rate (req/s)", [0.5, 2, 4], ["0.5", "2", "inf"],
        ),
    ],
    ids=["concurrency", "rate-with-inf"],
)  # fmt: skip
def test_serve_plots_use_a_log_axis_at_the_measured_levels_from_zero_with_a_caption(
    tmp_path, monkeypatch, levels, xlabel, ticks, labels
):
    pytest.importorskip("matplotlib")
    from minerva.bench.plots import write_serve_plots

    figures = _captured_figures(monkeypatch)
    config = {"workload": "fixed:in=10,out=5", "max_tokens": 5}
    targets = [{"name": "a", "model": "demo-model"}]
    doc = serve_document(_level_runs(levels), targets, config, SYSTEM)
    write_serve_plots(doc, tmp_path)
    assert set(figures) == {"throughput.png", "latency.png", "ttft_cdf.png", "itl_cdf.png"}
    for name in ("throughput.png", "latency.png"):
        for ax in figures[name].axes:
            assert ax.get_xscale() == "log" and ax.get_xlabel() == xlabel
            assert list(ax.get_xticks()) == pytest.approx(ticks)  # only the measured levels
            assert [t.get_text() for t in ax.get_xticklabels()] == labels
            assert ax.get_ylim()[0] == 0
    for name in ("ttft_cdf.png", "itl_cdf.png"):
        for ax in (a for a in figures[name].axes if a.get_visible()):
            assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0
    for name, fig in figures.items():
        caption = " ".join(t.get_text() for t in fig.texts)
        assert "model: demo-model" in caption, name
        assert "workload: fixed:in=10,out=5, max_tokens=5" in caption
        assert doc["date"] in caption


def test_the_system_section_says_whose_machine_it_describes():
    from minerva.bench.report import system_section
    from minerva.bench.system import describe_machine

    local = describe_machine(["http://127.0.0.1:8000", "http://localhost:11434"])
    assert local == "this machine ran the servers and the benchmark client"
    remote = describe_machine(["http://127.0.0.1:8000", "http://gpu-box:8000"])
    assert remote.startswith("this machine ran only the benchmark client")
    assert "http://gpu-box:8000 is remote and not described here" in remote
    assert "127.0.0.1" not in remote  # the local server is described: it is this machine
    assert describe_machine(None) == "this machine ran the engines (in-process)"
    md = system_section({"machine": remote, "cpu": "test cpu"})
    assert md.startswith("## System\n\nThis machine ran only the benchmark client;")
    assert "| cpu | test cpu |" in md and "| machine |" not in md
