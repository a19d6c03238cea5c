"""GGUF models on the CPU: Minerva vs llama.cpp (llama-cpp-python) on the same files, interleaved.

    PYTHONPATH=src python3 benchmarks/cpu_quant.py [--shapes smollm-135m tinyllama-1.1b]
        [--types Q8_0 Q4_K_M Q4_0] [--prompt-len 128] [--decode-tokens 32] [--rounds 3]

`--types F16` runs the F16 file itself, Minerva in bfloat16 (the same 16 bits per weight; its
float32 default would stream twice the bytes). Random-weight models of real shapes are written
once as F16 GGUF (with the demo model's
tokenizer, padded to the shape's vocabulary) and quantized by llama.cpp's own quantizer
(`llama_model_quantize`), so both engines read the very same files. Every measurement runs in
its own process (load time and peak RSS are per process); the engines alternate, in reversed
order on odd rounds, and the load average is recorded beside each round.

Per file and engine: load time, time to first token after a `--prompt-len` prompt (prefill),
decode tokens/s = N / (time from the first token to the last of 1 + N), each timed inside one
run and the median over runs taken, and peak RSS. The summary gives medians, Minerva / llama.cpp ratios, and the fraction of the
machine's measured memory bandwidth that decode reaches (weight bytes streamed per token x tok/s
/ bandwidth). Results are written after every measurement, so an interrupted run keeps them.
Needs `pip install llama-cpp-python` (see shared PEERS notes for the build flags), gguf,
transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record import write_results
from shapes import SHAPES, hf_config

HERE = Path(__file__).resolve().parent
F16 = "F16"  # the converted file itself
QUANT_FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q4_K_S": 14}
QUANT_FTYPES |= {"IQ4_NL": 25, "IQ4_XS": 30}  # the non-linear 4-bit codebook types


# -- model files ------------------------------------------------------------------------------
def build_f16(shape: str, path: Path) -> None:
    """A random-weight model of `shape` as an F16 GGUF with the demo tokenizer."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from minerva.demo import demo_model_path  # noqa: PLC0415
    from minerva.loader.gguf_export import float_plan, write_gguf  # noqa: PLC0415
    from minerva.loader.hf_config import _parse_config  # noqa: PLC0415
    from minerva.quant.gguf_types import GGMLType  # noqa: PLC0415

    cfg = hf_config(shape)
    torch.manual_seed(0)
    with torch.device("cpu"):  # the shape's family (Llama unless shapes.py names another)
        hf_class = getattr(transformers, cfg["architectures"][0])
        model = hf_class(transformers.AutoConfig.for_model(**cfg))
    config = _parse_config(cfg, path)
    tensors = ((k, v) for k, v in model.state_dict().items())
    write_gguf(
        config,
        tensors,
        path,
        float_plan(GGMLType.F16),
        tokenizer_dir=demo_model_path(),
        file_type="f16",
        name=f"random-{shape}",
    )


def quantize_with_llama_cpp(src: Path, dst: Path, type_name: str, threads: int) -> None:
    import llama_cpp  # noqa: PLC0415

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[type_name]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({type_name}) failed with {rc}")


def streamed_weight_bytes(path: Path) -> int:
    """Bytes one decode step reads: every tensor but the embedding table (rows are gathered)."""
    import gguf  # noqa: PLC0415

    reader = gguf.GGUFReader(path)
    total = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
    if not any(t.name == "output.weight" for t in reader.tensors):  # tied: the table is read
        total += sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    return total


def memory_bandwidth_gb_s() -> float:
    import torch  # noqa: PLC0415

    from minerva.doctor import measure_bandwidth  # noqa: PLC0415
    from minerva.platform import resolve_platform  # noqa: PLC0415

    torch.set_num_threads(2)
    return measure_bandwidth(resolve_platform("cpu"))


# -- one measurement (a child process) --------------------------------------------------------
def prompt_ids(n: int) -> list[int]:
    import random  # noqa: PLC0415

    rng = random.Random(0)
    return [rng.randrange(300, 4000) for _ in range(n)]  # real (demo) tokens, not padding


def child_minerva(args) -> dict:
    from minerva import LLM, SamplingParams  # noqa: PLC0415

    t = time.perf_counter()
    llm = LLM(
        model=args.file,
        device="cpu",
        max_model_len=args.ctx,
        max_num_seqs=1,
        enable_prefix_caching=False,
        num_threads=args.threads,
        dtype="bfloat16" if args.file.endswith(f"-{F16}.gguf") else "auto",
        weight_cache=args.weight_cache == "on",
    )
    load_s = time.perf_counter() - t
    ids = prompt_ids(args.prompt_len)

    params = SamplingParams(max_tokens=1 + args.decode_tokens, temperature=0.0, ignore_eos=True)

    def run() -> tuple[float, float]:
        out = llm.generate([ids], params)[0]
        ttft = out.metrics.first_token_time - out.metrics.arrival_time
        decode = out.metrics.finished_time - out.metrics.first_token_time
        return ttft, args.decode_tokens / decode

    return {"load_s": load_s, **median_runs(run, args.repeats)}


def median_runs(run, repeats: int) -> dict:
    """TTFT and decode tokens/s, each the median over `repeats` runs after a warm-up run (both
    timed inside each run, so a slow run cannot make the other figure negative); 0 repeats:
    the first run's TTFT only (what a load leaves to the first request)."""
    if repeats == 0:
        return {"first_ttft_s": run()[0]}
    run()
    ttfts, rates = zip(*(run() for _ in range(repeats)), strict=True)
    return {"ttft_s": statistics.median(ttfts), "decode_tok_s": statistics.median(rates)}


def child_llama_cpp(args) -> dict:
    import llama_cpp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    from llama_cpp import Llama  # noqa: PLC0415

    t = time.perf_counter()
    llm = Llama(
        model_path=args.file,
        n_ctx=args.ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        seed=0,
        verbose=False,
    )
    load_s = time.perf_counter() - t
    ids = prompt_ids(args.prompt_len)

    n_vocab = llm.n_vocab()

    def last_logits():  # Llama.scores is not filled without logits_all (which slows prefill)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        llm.reset()
        llm.eval(ids)
        token = int(np.argmax(last_logits()))
        t1 = time.perf_counter()
        for _ in range(args.decode_tokens):  # greedy, as Minerva at temperature 0
            llm.eval([token])
            token = int(np.argmax(last_logits()))
        return t1 - t0, args.decode_tokens / (time.perf_counter() - t1)

    return {"load_s": load_s, **median_runs(run, args.repeats)}


def build_folder(shape: str, path: Path) -> None:
    """The same random-weight model as a Hugging Face folder (fp16 safetensors, demo tokenizer)."""
    import shutil  # noqa: PLC0415

    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from minerva.demo import demo_model_path  # noqa: PLC0415

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(shape)))
    model.half().save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_model_path() / name, path / name)


def child_insitu(args) -> dict:
    """Load time of the float folder quantized to `--insitu-mix` while loading."""
    from minerva import LLM  # noqa: PLC0415

    t = time.perf_counter()
    LLM(model=args.file, device="cpu", max_model_len=args.ctx, max_num_seqs=1,
        quantization=args.insitu_mix, num_threads=args.threads,
        weight_cache=args.weight_cache != "off")  # fmt: skip
    return {"insitu_load_s": time.perf_counter() - t}


def peak_rss_mib() -> float:
    """This process's peak RSS since exec (VmHWM): ru_maxrss would also count the RSS the
    driver process had when it forked the child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(args) -> None:
    fn = {"minerva": child_minerva, "llama.cpp": child_llama_cpp, "insitu": child_insitu}[
        args.child
    ]
    result = fn(args)
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


def measure(engine: str, file: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--file", str(file)]
    for flag in ("prompt_len", "decode_tokens", "repeats", "threads", "ctx", "insitu_mix",
                 "weight_cache"):  # fmt: skip
        if getattr(args, flag) is None:
            continue
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": f"exit {proc.returncode}: {tail}"}


# -- the run ----------------------------------------------------------------------------------
def summarize(rows: list[dict], bandwidth: float) -> list[dict]:
    out = []
    keys = sorted({(r["shape"], r["type"]) for r in rows if "insitu_load_s" not in r})
    for shape, type_name in keys:
        entry = {"shape": shape, "type": type_name}
        for engine in ("minerva", "llama.cpp"):
            ok = [
                r
                for r in rows
                if (r["shape"], r["type"], r["engine"]) == (shape, type_name, engine)
                and "error" not in r
            ]
            if not ok:
                continue
            med = {
                k: statistics.median(r[k] for r in ok)
                for k in ("load_s", "ttft_s", "decode_tok_s", "peak_rss_mib")
            }
            med["bandwidth_fraction"] = (
                ok[0]["weight_bytes"] * med["decode_tok_s"] / (bandwidth * 1e9)
            )
            entry[engine] = med
        if "minerva" in entry and "llama.cpp" in entry:
            m, ll = entry["minerva"], entry["llama.cpp"]
            entry["ratio"] = {
                "decode": m["decode_tok_s"] / ll["decode_tok_s"],
                "prefill": ll["ttft_s"] / m["ttft_s"],
                "load": m["load_s"] / ll["load_s"],
                "peak_rss": m["peak_rss_mib"] / ll["peak_rss_mib"],
            }
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--shapes", nargs="+", default=["smollm-135m", "tinyllama-1.1b"], choices=list(SHAPES)
    )
    ap.add_argument(
        "--types",
        nargs="+",
        default=["Q8_0", "Q4_K_M", "Q4_0"],
        choices=[*QUANT_FTYPES, F16],
    )
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats inside one process")
    ap.add_argument("--rounds", type=int, default=3, help="processes per engine and file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--workdir", default="/tmp/minerva_cpu_quant")
    ap.add_argument("--output", default=str(HERE / "results" / "cpu_quant.json"))
    ap.add_argument(
        "--insitu-mix", default=None, help="also time loading a float folder quantized to this"
    )
    ap.add_argument(
        "--weight-cache", choices=["on", "off"], default="on",
        help="Minerva's on-disk cache of repacked weights ([model] weight_cache)",
    )  # fmt: skip
    ap.add_argument("--child", choices=["minerva", "llama.cpp", "insitu"], help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    bandwidth = memory_bandwidth_gb_s()
    print(f"memory bandwidth (read): {bandwidth:.1f} GB/s", flush=True)
    rows: list[dict] = []

    def save():
        insitu = {}
        for r in rows:
            if "insitu_load_s" in r:
                insitu.setdefault(f"{r['shape']} {r['type']}", []).append(r["insitu_load_s"])
        result = {
            "bandwidth_gb_s": bandwidth,
            "rows": rows,
            "summary": summarize(rows, bandwidth),
            "insitu_load_s": {k: statistics.median(v) for k, v in insitu.items()},
        }
        write_results("cpu_quant", "cpu_quant.py", _public(args), [result], args.output)

    for shape in args.shapes:
        f16 = work / f"{shape}-F16.gguf"
        if not f16.exists():
            print(f"writing {f16}", flush=True)
            build_f16(shape, f16)
        if args.insitu_mix:
            folder = work / f"{shape}-hf"
            if not folder.exists():
                build_folder(shape, folder)
            for rnd in range(args.rounds):
                r = measure("insitu", folder, args)
                r.update(shape=shape, type=f"in-situ {args.insitu_mix}", engine="minerva",
                         round=rnd, loadavg=[os.getloadavg()[0]])  # fmt: skip
                rows.append(r)
                save()
                print(json.dumps(r), flush=True)
        for type_name in args.types:
            file = work / f"{shape}-{type_name}.gguf"
            if not file.exists() and type_name != F16:
                print(f"quantizing {file} with llama.cpp", flush=True)
                quantize_with_llama_cpp(f16, file, type_name, args.threads)
            weight_bytes = streamed_weight_bytes(file)
            for rnd in range(args.rounds):
                engines = ["minerva", "llama.cpp"] if rnd % 2 == 0 else ["llama.cpp", "minerva"]
                for engine in engines:
                    load_before = os.getloadavg()[0]
                    r = measure(engine, file, args)
                    r.update(
                        shape=shape,
                        type=type_name,
                        engine=engine,
                        round=rnd,
                        weight_bytes=weight_bytes,
                        loadavg=[load_before, os.getloadavg()[0]],
                    )
                    rows.append(r)
                    save()
                    print(json.dumps(r), flush=True)
    save()
    print_table(summarize(rows, bandwidth))


def _public(args) -> argparse.Namespace:
    return argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k not in ("child", "file", "workdir")}
    )


def print_table(summary: list[dict]) -> None:
    print(
        f"{'shape':16} {'type':7} {'decode M/L tok/s':>22} {'ratio':>6} {'TTFT M/L ms':>16} {'ratio':>6} {'RSS M/L MiB':>14} {'BW frac M/L':>12}"
    )
    for e in summary:
        m, ll = e.get("minerva"), e.get("llama.cpp")
        if not (m and ll):
            print(f"{e['shape']:16} {e['type']:7} incomplete")
            continue
        r = e["ratio"]
        print(
            f"{e['shape']:16} {e['type']:7} {m['decode_tok_s']:10.1f} / {ll['decode_tok_s']:8.1f} {r['decode']:6.2f}"
            f" {m['ttft_s'] * 1e3:7.0f} / {ll['ttft_s'] * 1e3:6.0f} {r['prefill']:6.2f}"
            f" {m['peak_rss_mib']:6.0f} / {ll['peak_rss_mib']:5.0f} {m['bandwidth_fraction']:5.2f} / {ll['bandwidth_fraction']:4.2f}"
        )


if __name__ == "__main__":
    main()
