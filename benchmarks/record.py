"""How the CPU benchmark scripts write their JSON: the command that reproduces the run, the date,
this machine, and the results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import psutil
import torch


def command_line(script: str, args: argparse.Namespace) -> str:
    """`PYTHONPATH=src python3 benchmarks/<script> --flag value ...` for every flag but --output."""
    flags = " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k != "output"
    )
    return f"PYTHONPATH=src python3 benchmarks/{script} {flags}"


def write_results(
    benchmark: str, script: str, args: argparse.Namespace, results: list, output: str | Path
) -> None:
    """Write {benchmark, date, machine, command, results} to `output` (folders made)."""
    doc = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "command": command_line(script, args),
        "results": results,
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(doc, indent=2))
