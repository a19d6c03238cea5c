"""Interleaved rounds of `minerva bench throughput` (Minerva and llama.cpp in one process each
time) for several variants of Minerva: source trees (e.g. a `git archive` of the base commit)
and engine options. On a shared machine one run's figures swing by 2x and more, so the variants
take turns in every round (A B C A B C ...) and the summary gives each variant's median and
best over the rounds: Minerva's duration, llama.cpp's, and their ratio within each run.

    PYTHONPATH=src python3 benchmarks/throughput_rounds.py --rounds 6 \\
        --variant base=/tmp/base --variant new=. \\
        --variant new_kv16=.:minerva.kv_cache_dtype=float16 \\
        --quantization q4_k_m,q8_0 --output benchmarks/results/throughput_rounds_x

A variant is NAME=ROOT[:BACKEND.KEY=VALUE,...]: ROOT/src goes first on PYTHONPATH. Every run is
taken under the machine's benchmark lock (/tmp/minerva_bench.lock) when flock exists. Writes
--output/rounds.json (every run, and the summary) and each run's bench folder beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOCK = "/tmp/minerva_bench.lock"


def parse_variant(text: str) -> tuple[str, Path, list[str]]:
    name, _, rest = text.partition("=")
    root, _, opts = rest.partition(":")
    return name, Path(root).resolve(), [o for o in opts.split(",") if o]


def run_once(root: Path, opts: list[str], quant: str, args, folder: Path) -> dict[str, float]:
    """One `minerva bench throughput` of Minerva (from root) and llama.cpp: their durations."""
    bench = ["--model", args.model, "--backend", "minerva,llamacpp", "--device", "cpu",
             "--num-threads", str(args.threads), "--input-len", str(args.input_len),
             "--output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
             "--backend-arg", f"minerva.quantization={quant}",
             "--backend-arg", f"llamacpp.quantization={quant}",
             *(x for o in opts for x in ("--backend-arg", o)),
             "--no-progress", "--no-plots", "--output", str(folder)]  # fmt: skip
    code = "import sys; from minerva.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "bench", "throughput", *bench]
    if shutil.which("flock"):
        cmd = ["flock", LOCK, *cmd]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=root)
    rows = json.loads((folder / "results.json").read_text())["results"]
    return {r["backend"]: r["duration_s"] for r in rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", required=True, help="NAME=ROOT[:OPTS]")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--quantization", default="q4_k_m,q8_0")
    p.add_argument("--model", default="demo")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--output", required=True)
    args = p.parse_args()
    out = Path(args.output).resolve()  # the runs start in each variant's root
    out.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in args.variant]
    runs = []
    for i in range(args.rounds):
        for quant in args.quantization.split(","):
            for name, root, opts in variants:
                folder = out / "runs" / f"{quant}_{name}_{i}"
                d = run_once(root, opts, quant, args, folder)
                ratio = d["llamacpp"] / d["minerva"]
                runs.append({"round": i, "quantization": quant, "variant": name, **d,
                             "ratio": ratio})  # fmt: skip
                print(f"{i} {quant} {name}: minerva {d['minerva']:.3f} s, llama.cpp "
                      f"{d['llamacpp']:.3f} s, ratio {ratio:.2f}", flush=True)  # fmt: skip
    summary = {}
    for quant in args.quantization.split(","):
        for name, _, _ in variants:
            mine = [r for r in runs if r["quantization"] == quant and r["variant"] == name]
            summary[f"{quant}/{name}"] = {
                k: {"median": statistics.median(r[k] for r in mine), "best": f(r[k] for r in mine)}
                for k, f in (("minerva", min), ("llamacpp", min), ("ratio", max))
            }
    result = {
        "benchmark": "throughput_rounds",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "PYTHONPATH=src python3 benchmarks/throughput_rounds.py "
        + " ".join(sys.argv[1:]),
        "variants": {n: {"root": str(r), "options": o} for n, r, o in variants},
        "note": "a shared 2-core VM; durations in seconds for 16 requests (128 in, 64 out); "
        "ratio = llama.cpp duration / Minerva duration within one run",
        "summary": summary,
        "runs": runs,
    }
    (out / "rounds.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
