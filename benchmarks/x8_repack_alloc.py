"""Where the x8 repack's load time goes: every weight of a GGUF file rewritten into the x8 layout
(ops/cpu_quant_x8.py) with its destination allocated four ways, each in its own process.

    PYTHONPATH=src python3 benchmarks/x8_repack_alloc.py --files /tmp/minerva_cpu_quant/tinyllama-1.1b-Q8_0.gguf
        [--rounds 3] [--threads 2]

Destinations: `torch` (torch.empty, as loading does), `populate` (torch.empty, then
MADV_POPULATE_WRITE: the pages faulted in one call), `anon` (an anonymous mmap per weight),
`thp` (the same, MADV_HUGEPAGE: 2 MiB pages, 512x fewer faults); `thp` also with
MADV_WILLNEED on the file's range before each weight. Plus `warm`: the repack into a destination
already faulted in (the kernel's own cost). Reports wall time, minor faults, user / system
time and peak RSS; the file's pages are released after each weight, as the loader does.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record import write_results

HERE = Path(__file__).resolve().parent
VARIANTS = ["torch", "populate", "anon", "thp", "thp+willneed", "warm"]
MADV_POPULATE_WRITE = 23  # Linux 5.14+; not in Python 3.11's mmap module


def child(file: Path, variant: str, threads: int) -> dict:
    import torch  # noqa: PLC0415

    from minerva.loader.gguf import _open_map, _raw_bytes, _releaser, _row_bytes, open_gguf  # noqa: PLC0415
    from minerva.ops import cpu_quant_x8  # noqa: PLC0415

    torch.set_num_threads(threads)
    libc = ctypes.CDLL(None, use_errno=True)
    source, mm = open_gguf(file), _open_map(file)
    infos = [
        info
        for _, info in source.tensors.values()
        if len(info.shape) == 2 and cpu_quant_x8.supports(info.ggml_type, *info.shape)
    ]
    outs = []
    if variant == "warm":  # destinations faulted in before the clock starts
        outs = [torch.ones(info.nbytes, dtype=torch.uint8) for info in infos]
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i, info in enumerate(infos):
        raw = _raw_bytes(mm, info).reshape(-1, _row_bytes(info))  # [rows, row_bytes]
        if variant == "thp+willneed":
            start = info.offset // mmap.PAGESIZE * mmap.PAGESIZE
            mm.madvise(mmap.MADV_WILLNEED, start, info.offset + info.nbytes - start)
        if variant == "warm":
            out = outs[i].view(raw.shape)
        elif variant in ("torch", "populate"):
            out = torch.empty_like(raw)
            if variant == "populate":
                libc.madvise(ctypes.c_void_p(out.data_ptr()), ctypes.c_size_t(out.numel()),
                             MADV_POPULATE_WRITE)  # fmt: skip
        else:
            buf = mmap.mmap(-1, raw.numel(), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if variant.startswith("thp"):
                buf.madvise(mmap.MADV_HUGEPAGE)
            out = torch.frombuffer(buf, dtype=torch.uint8).view(raw.shape)
        cpu_quant_x8.repack(raw, info.ggml_type, info.shape[1], out=out)
        _releaser(mm, info.offset, info.nbytes)()
        if variant != "warm":
            outs.append(out)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "repack_s": wall,
        "mib": sum(info.nbytes for info in infos) / 2**20,
        "minflt": after.ru_minflt - before.ru_minflt,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "peak_rss_mib": _status_mib("VmHWM"),
    }


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(file: str, variant: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--files", file, "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(HERE / "results" / "x8_repack_alloc.json"))
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.files[0]), args.child, args.threads)), flush=True)
        return
    rows = []
    for file in args.files:
        for rnd in range(args.rounds):
            order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                r = measure(file, variant, args.threads)
                r.update(file=Path(file).name, variant=variant, round=rnd)
                rows.append(r)
                print(json.dumps(r), flush=True)
    summary = {
        f"{f} {v}": statistics.median(
            r["repack_s"] for r in rows if r["file"] == f and r["variant"] == v
        )
        for f in dict.fromkeys(r["file"] for r in rows)
        for v in VARIANTS
    }
    public = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "child"})
    write_results("x8_repack_alloc", "x8_repack_alloc.py", public, [{"rows": rows,
                  "median_repack_s": summary}], args.output)  # fmt: skip
    for k, v in summary.items():
        print(f"{k:50s} {v:.3f} s")


if __name__ == "__main__":
    main()
