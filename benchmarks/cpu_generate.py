"""Batch-1 prefill and decode speed on the CPU: Minerva vs transformers `generate`.

Random-weight models of two real shapes (SmolLM-135M and TinyLlama-1.1B), built with
transformers and saved once to a temp folder, so both engines load the same checkpoint.

    PYTHONPATH=src python3 benchmarks/cpu_generate.py [--shapes smollm-135m tinyllama-1.1b]
        [--dtypes float32 bfloat16] [--prompt-len 128] [--decode-tokens 32] [--repeats 3]

Decode tokens/s = N / (time(1 + N tokens) - time(1 token)), the same formula for both engines,
so prefill (and the first token) is excluded; prefill tokens/s = prompt_len / time(1 token).
Writes benchmarks/results/cpu_generate.json and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import write_results
from shapes import SHAPES


def build_checkpoint(shape: str, folder: Path) -> int:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(max_position_embeddings=2048, **SHAPES[shape])
    with torch.device("cpu"):
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    gc.collect()
    return n


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_minerva(folder: Path, dtype: str, prompt: list[int], n: int, repeats: int) -> dict:
    from minerva import LLM, SamplingParams

    llm = LLM(
        model=str(folder),
        device="cpu",
        dtype=dtype,
        enable_prefix_caching=False,
        max_model_len=len(prompt) + n + 8,
        max_num_seqs=1,
        progress=False,
    )

    def run(k):
        return lambda: llm.generate(
            [prompt], SamplingParams(max_tokens=k, temperature=0, ignore_eos=True)
        )

    t1, tn = timed(run(1), repeats), timed(run(1 + n), repeats)
    gc.collect()
    return {"prefill_s": t1, "decode_s": tn - t1}


def bench_transformers(folder: Path, dtype: str, prompt: list[int], n: int, repeats: int) -> dict:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, dtype)
    ).eval()
    ids = torch.tensor([prompt])

    def run(k):
        def go():
            with torch.inference_mode():
                model.generate(
                    ids,
                    max_new_tokens=k,
                    min_new_tokens=k,
                    do_sample=False,
                    pad_token_id=0,
                    attention_mask=torch.ones_like(ids),
                )

        return go

    t1, tn = timed(run(1), repeats), timed(run(1 + n), repeats)
    gc.collect()
    return {"prefill_s": t1, "decode_s": tn - t1}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cpu_shapes = ["smollm-135m", "tinyllama-1.1b"]
    ap.add_argument("--shapes", nargs="+", default=cpu_shapes, choices=list(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--output", default=str(Path(__file__).parent / "results" / "cpu_generate.json")
    )
    args = ap.parse_args()

    results = []
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 32000, (args.prompt_len,), generator=g).tolist()
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            params = build_checkpoint(shape, Path(tmp))
            for dtype in args.dtypes:
                n = args.decode_tokens
                row = {
                    "shape": shape,
                    "params": params,
                    "dtype": dtype,
                    "prompt_len": args.prompt_len,
                    "decode_tokens": n,
                }
                for name, fn in (("minerva", bench_minerva), ("transformers", bench_transformers)):
                    r = fn(Path(tmp), dtype, prompt, n, args.repeats)
                    row[name] = {
                        "prefill_tok_s": args.prompt_len / r["prefill_s"],
                        "decode_tok_s": n / r["decode_s"],
                        **r,
                    }
                    print(
                        f"{shape} {dtype} {name}: prefill {row[name]['prefill_tok_s']:.0f} tok/s, "
                        f"decode {row[name]['decode_tok_s']:.1f} tok/s",
                        flush=True,
                    )
                m, t = row["minerva"], row["transformers"]
                row["decode_ratio"] = m["decode_tok_s"] / t["decode_tok_s"]
                row["prefill_ratio"] = m["prefill_tok_s"] / t["prefill_tok_s"]
                results.append(row)

    write_results("cpu_generate", "cpu_generate.py", args, results, args.output)
    print(
        f"\n{'shape':16} {'dtype':9} {'decode tok/s (minerva / hf = ratio)':38} prefill tok/s (minerva / hf = ratio)"
    )
    for r in results:
        m, t = r["minerva"], r["transformers"]
        print(
            f"{r['shape']:16} {r['dtype']:9} {m['decode_tok_s']:7.1f} / {t['decode_tok_s']:6.1f} = "
            f"{r['decode_ratio']:.2f}x{'':17} {m['prefill_tok_s']:7.0f} / {t['prefill_tok_s']:6.0f} = "
            f"{r['prefill_ratio']:.2f}x"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
