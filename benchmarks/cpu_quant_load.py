"""Load time of GGUF files on the CPU: Minerva with a cold and a warm weight cache, Minerva
without it, and llama.cpp, interleaved, each load its own process (files in page cache).

    PYTHONPATH=src python3 benchmarks/cpu_quant_load.py [--shapes tinyllama-1.1b]
        [--types Q8_0 Q5_K_M Q4_K_M] [--rounds 3]

Reuses cpu_quant.py's files (--workdir) and children. Per round and file: `nocache` (weight_cache
off: every load repacks into new memory), `cold` (the cache file removed first: this load
writes it), `warm` (the next load: maps it), `llama.cpp`; the units rotate between rounds
(cold always right before warm). Each child also times its first request's TTFT
(`first_ttft_s`, a `--prompt-len` prompt) so load work moved into the first request shows. The
weight cache lives in <workdir>/cache/weights (kernels/ linked to the real kernel cache).
`--insitu q4_k_m` instead times the float folder <workdir>/<shape>-hf quantized while loading:
`nocache`, `cold` (quantizes, repacks and writes the cache file), `warm` (maps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path

from cpu_quant import F16, QUANT_FTYPES, measure
from record import write_results
from shapes import SHAPES

HERE = Path(__file__).resolve().parent
VARIANTS = ("nocache", "cold", "warm", "llama.cpp")


def private_cache(work: Path) -> Path:
    """$MINERVA_CACHE_DIR for the children: its own weights/, the real kernels/."""
    from minerva.ops import native  # noqa: PLC0415 - PYTHONPATH=src

    root = work / "cache"
    root.mkdir(parents=True, exist_ok=True)
    kernels = native.cache_dir()
    if not (root / "kernels").exists():
        kernels.mkdir(parents=True, exist_ok=True)
        (root / "kernels").symlink_to(kernels, target_is_directory=True)
    return root


def child_args(args, weight_cache: str) -> argparse.Namespace:
    return argparse.Namespace(
        prompt_len=args.prompt_len, decode_tokens=1, repeats=0, threads=args.threads,
        ctx=args.ctx, insitu_mix=args.insitu, weight_cache=weight_cache,
    )  # fmt: skip


def one_round(file: Path, rnd: int, args, weights_dir: Path) -> list[dict]:
    units = [["nocache"], ["cold", "warm"]] + ([] if args.insitu else [["llama.cpp"]])
    units = units[rnd % len(units) :] + units[: rnd % len(units)]
    rows = []
    for variant in (v for unit in units for v in unit):
        if variant == "cold":
            shutil.rmtree(weights_dir, ignore_errors=True)
        engine = "llama.cpp" if variant == "llama.cpp" else "minerva"
        engine = "insitu" if args.insitu else engine
        cache = "off" if variant == "nocache" else "on"
        before = os.getloadavg()[0]
        r = measure(engine, file, child_args(args, cache))
        if "insitu_load_s" in r:
            r["load_s"] = r.pop("insitu_load_s")
        r.update(variant=variant, round=rnd, loadavg=[before, os.getloadavg()[0]])
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for shape, type_name in sorted({(r["shape"], r["type"]) for r in rows}):
        entry: dict = {"shape": shape, "type": type_name}
        for variant in VARIANTS:
            ok = [
                r for r in rows
                if (r["shape"], r["type"], r["variant"]) == (shape, type_name, variant)
                and "error" not in r
            ]  # fmt: skip
            if ok:
                entry[variant] = {
                    k: statistics.median(r[k] for r in ok)
                    for k in ("load_s", "first_ttft_s", "peak_rss_mib")
                    if all(k in r for r in ok)  # in-situ children time no request
                }
        if "llama.cpp" in entry:
            base = entry["llama.cpp"]["load_s"]
            entry["load_ratio"] = {v: entry[v]["load_s"] / base for v in VARIANTS[:3] if v in entry}
        if "warm" in entry and "nocache" in entry:
            entry["warm_over_nocache"] = entry["warm"]["load_s"] / entry["nocache"]["load_s"]
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["tinyllama-1.1b"], choices=list(SHAPES))
    ap.add_argument(
        "--types", nargs="+", default=["Q8_0", "Q5_K_M", "Q4_K_M"],
        choices=[*QUANT_FTYPES, F16],
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--workdir", default="/tmp/minerva_cpu_quant")
    ap.add_argument("--insitu", default=None, help="time <shape>-hf quantized to this instead")
    ap.add_argument("--output", default=str(HERE / "results" / "cpu_quant_load_cache.json"))
    args = ap.parse_args()
    work = Path(args.workdir)
    root = private_cache(work)
    os.environ["MINERVA_CACHE_DIR"] = str(root)  # measure() hands os.environ to the children
    rows: list[dict] = []

    def save() -> None:
        result = {"rows": rows, "summary": summarize(rows)}
        public = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "workdir"})
        write_results("cpu_quant_load", "cpu_quant_load.py", public, [result], args.output)

    for shape in args.shapes:
        for type_name in [f"in-situ {args.insitu}"] if args.insitu else args.types:
            name = f"{shape}-hf" if args.insitu else f"{shape}-{type_name}.gguf"
            file = work / name
            if not file.exists():
                raise SystemExit(f"{file} is missing: run cpu_quant.py for it first")
            for rnd in range(args.rounds):
                for r in one_round(file, rnd, args, root / "weights"):
                    r.update(shape=shape, type=type_name)
                    rows.append(r)
                save()
    for e in summarize(rows):
        print(json.dumps(e))


if __name__ == "__main__":
    main()
