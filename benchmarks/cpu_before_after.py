"""Batch-1 CPU prefill and decode of two checkouts of Minerva, interleaved in one run.

    PYTHONPATH=src python3 benchmarks/cpu_before_after.py BEFORE_DIR [--shapes smollm-135m]
        [--dtypes float32 bfloat16] [--rounds 3]

BEFORE_DIR holds the older checkout's src/; --after (default: this tree) the newer one. The same random-weight
checkpoints (built once with transformers) are measured by one child process per (side, shape,
dtype), in before/after order on even rounds and after/before on odd ones; the machine's load
average is recorded beside every measurement. Decode tokens/s and prefill time use the formulas
of cpu_generate.py. Writes benchmarks/results/cpu_before_after.json after every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from record import write_results
from shapes import SHAPES

HERE = Path(__file__).resolve().parent
CHILD = """
import json, statistics, sys, time
from minerva import LLM, SamplingParams
folder, dtype, plen, n, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = LLM(model=folder, device="cpu", dtype=dtype, enable_prefix_caching=False,
          max_model_len=plen + n + 8, max_num_seqs=1, progress=False)
prompt = [(7 * i + 3) % 30000 + 3 for i in range(plen)]
def timed(k):
    go = lambda: llm.generate([prompt], SamplingParams(max_tokens=k, temperature=0, ignore_eos=True))
    go()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); go(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
t1, tn = timed(1), timed(1 + n)
print("RESULT " + json.dumps({"prefill_s": t1, "decode_tok_s": n / (tn - t1)}))
"""


def build(shape: str, folder: Path) -> None:
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(max_position_embeddings=2048, **SHAPES[shape])
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


def measure(src: Path, folder: Path, dtype: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, "-c", CHILD, str(folder), dtype, str(args.prompt_len)]
    cmd += [str(args.decode_tokens), str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": proc.stderr[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", help="folder holding the older checkout's src/")
    ap.add_argument("--after", default=str(HERE.parent), help="the newer checkout (default: this)")
    ap.add_argument("--shapes", nargs="+", default=["smollm-135m"], choices=list(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", default=str(HERE / "results" / "cpu_before_after.json"))
    args = ap.parse_args()
    sides = {
        "before": Path(args.before).resolve() / "src",
        "after": Path(args.after).resolve() / "src",
    }
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp())
    for shape in args.shapes:
        folder = work / shape
        build(shape, folder)
        for rnd in range(args.rounds):
            order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
            for dtype in args.dtypes:
                for side in order:
                    load = os.getloadavg()[0]
                    r = measure(sides[side], folder, dtype, args)
                    r.update(side=side, shape=shape, dtype=dtype, round=rnd, loadavg=load)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
                    save(rows, args)


def save(rows: list[dict], args) -> None:
    summary = {}
    for key in sorted({(r["shape"], r["dtype"]) for r in rows}):
        med = {}
        for side in ("before", "after"):
            ok = [r for r in rows if (r["shape"], r["dtype"], r["side"]) == (*key, side)]
            ok = [r for r in ok if "error" not in r]
            if ok:
                med[side] = {
                    k: statistics.median(r[k] for r in ok) for k in ("prefill_s", "decode_tok_s")
                }
        if len(med) == 2:
            med["after_over_before"] = {
                "decode": med["after"]["decode_tok_s"] / med["before"]["decode_tok_s"],
                "prefill_time": med["after"]["prefill_s"] / med["before"]["prefill_s"],
            }
        summary[f"{key[0]} {key[1]}"] = med
    public = argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k not in ("before", "after")}
    )
    write_results("cpu_before_after", "cpu_before_after.py", public, [summary, rows], args.output)


if __name__ == "__main__":
    main()
