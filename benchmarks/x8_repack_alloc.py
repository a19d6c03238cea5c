"""Where the x8 repack's load time goes: every weight of a GGUF file rewritten into the x8 layout
(ops/cpu_quant_x8.py) with its destination allocated four ways, each in its own process.

    PYTHONPATH=src python3 benchmarks/x8_repack_alloc.py --files /tmp/minerva_cpu_quant/tinyllama-1.1b-Q8_0.gguf
        [--rounds 3] [--threads 2]

Destinations: `torch` (torch.empty, as loading does), `populate` (torch.empty, then
MADV_POPULATE_WRITE: the pages faulted in one call), `anon` (an anonymous mmap per weight),
`thp` (the same, MADV_HUGEPAGE: 2 MiB pages, 512x fewer faults); `thp` also with
MADV_WILLNEED on the file's range before each weight. Plus `warm`: the repack into a destination
already faulted in (the kernel's own cost). And the two ways a file cache can be written
(quant/x8_cache.py; --variants file-map file-pwrite): `file-map` repacks into a fallocated
file's shared writable map, `file-pwrite` into a reused 16 MiB buffer, pwritten into the
fallocated file, then read back through a private map (what the cache does; files in --tmp). Reports wall time, minor faults, user / system
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
FILE_VARIANTS = ["file-map", "file-pwrite"]
MADV_POPULATE_WRITE = 23  # Linux 5.14+; not in Python 3.11's mmap module


def child(file: Path, variant: str, threads: int, tmp: Path) -> dict:
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
    cache = _FileDestination(tmp, sum(info.nbytes for info in infos), variant)
    if variant == "warm":  # destinations faulted in before the clock starts
        outs = [torch.ones(info.nbytes, dtype=torch.uint8) for info in infos]
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i, info in enumerate(infos):
        raw = _raw_bytes(mm, info).reshape(-1, _row_bytes(info))  # [rows, row_bytes]
        if variant == "thp+willneed":
            start = info.offset // mmap.PAGESIZE * mmap.PAGESIZE
            mm.madvise(mmap.MADV_WILLNEED, start, info.offset + info.nbytes - start)
        if variant.startswith("file"):
            out = cache.repack(raw, info)
        elif variant == "warm":
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
        if not variant.startswith("file"):
            cpu_quant_x8.repack(raw, info.ggml_type, info.shape[1], out=out)
        _releaser(mm, info.offset, info.nbytes)()
        if variant != "warm":
            outs.append(out)
    if variant == "file-pwrite":  # the model's first reads map the page-cache pages: counted
        for out in outs:
            int(out.view(-1)[:: mmap.PAGESIZE].sum())
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "repack_s": wall,
        "mib": sum(info.nbytes for info in infos) / 2**20,
        "minflt": after.ru_minflt - before.ru_minflt,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "peak_rss_mib": _status_mib("VmHWM"),
    }


class _FileDestination:
    """A fallocated temp file the weights are repacked into (file-map) or written to through a
    reused buffer (file-pwrite), views of it returned; removed at once (its pages stay mapped)."""

    def __init__(self, tmp: Path, total: int, variant: str) -> None:
        self.variant, self.offset = variant, 0
        if not variant.startswith("file"):
            return
        import torch  # noqa: PLC0415

        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / f"x8_repack_alloc-{os.getpid()}"
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        path.unlink()
        os.posix_fallocate(self.fd, 0, total)
        if variant == "file-map":
            self.mm = mmap.mmap(self.fd, total, flags=mmap.MAP_SHARED)
        else:
            self.mm = mmap.mmap(self.fd, total, access=mmap.ACCESS_COPY)
            self.scratch = torch.empty(16 << 20, dtype=torch.uint8)

    def repack(self, raw, info):
        import torch  # noqa: PLC0415

        from minerva.ops import cpu_quant_x8  # noqa: PLC0415

        start, self.offset = self.offset, self.offset + raw.numel()
        view = torch.frombuffer(self.mm, dtype=torch.uint8, count=raw.numel(), offset=start)
        view = view.view(raw.shape)
        if self.variant == "file-map":
            return cpu_quant_x8.repack(raw, info.ggml_type, info.shape[1], out=view)
        rows, row_bytes = raw.shape
        step = max(8, self.scratch.numel() // row_bytes // 8 * 8)
        for a in range(0, rows, step):
            n = min(step, rows - a)
            out = self.scratch[: n * row_bytes].view(n, row_bytes)
            cpu_quant_x8.repack(raw[a : a + n], info.ggml_type, info.shape[1], out=out)
            os.pwrite(self.fd, out.numpy(), start + a * row_bytes)
        return view


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(file: str, variant: str, threads: int, tmp: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--files", file, "--threads", str(threads),
           "--tmp", tmp]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(HERE / "results" / "x8_repack_alloc.json"))
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS + FILE_VARIANTS)
    ap.add_argument("--tmp", default="/tmp/minerva_cpu_quant", help="where file-* write")
    ap.add_argument("--child", choices=VARIANTS + FILE_VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(Path(args.files[0]), args.child, args.threads, Path(args.tmp))
        print(json.dumps(result), flush=True)
        return
    variants = args.variants
    rows = []
    for file in args.files:
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for variant in order:
                r = measure(file, variant, args.threads, args.tmp)
                r.update(file=Path(file).name, variant=variant, round=rnd)
                rows.append(r)
                print(json.dumps(r), flush=True)
    summary = {
        f"{f} {v}": statistics.median(
            r["repack_s"] for r in rows if r["file"] == f and r["variant"] == v
        )
        for f in dict.fromkeys(r["file"] for r in rows)
        for v in variants
    }
    public = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "child"})
    write_results("x8_repack_alloc", "x8_repack_alloc.py", public, [{"rows": rows,
                  "median_repack_s": summary}], args.output)  # fmt: skip
    for k, v in summary.items():
        print(f"{k:50s} {v:.3f} s")


if __name__ == "__main__":
    main()
