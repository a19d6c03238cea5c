"""Speculative decoding: what a verify step costs and what speculation buys.

GPU (one H100; random bf16 weights, 7B-shaped target, TinyLlama-shaped draft):
    PYTHONPATH=src python3 benchmarks/spec_bench.py --device cuda --shape mistral-7b \\
        --draft-shape tinyllama-1.1b --ks 1 2 4 8
CPU (the demo model; n-gram on a rewrite-with-edits workload):
    PYTHONPATH=src python3 benchmarks/spec_bench.py --device cpu --concurrency 16

Parts (--parts, all by default):
- step_cost: median time of a K+1-token verify step (batch 1, every draft accepted: an oracle
  proposer replays the target's own greedy output) against a decode step, for each K.
- ceiling: batch-1 decode tokens/s with the oracle proposer at K (a perfect draft that costs
  nothing) and with draft = target (a real second model, acceptance 1), against plain decode;
  with --draft-shape, the draft's cost per token and the speed-up a perfect draft of that
  shape would give: (K + 1) / (verify + K * draft step) per decode step.
- ngram: batch-1 tokens/s of the demo model rewriting a text with small edits (the prompt holds
  the text; the output copies most of it), n-gram K vs plain, acceptance beside it.
- concurrency: throughput of --concurrency requests at once, n-gram K vs plain (the target's
  own workload: the demo rewrite prompts on the demo model; random prompts on a random model).
- pair (not in the default set): a trained target (--target-folder, made by
  scripts/train_demo_model.py --shape target) with the demo model as its draft (--draft-folder):
  batch-1 plain vs draft speculation at each --ks and the governor at --k, greedy and sampled,
  acceptance beside the speed, greedy equality with plain decoding (spec_pair.py). Writes
  spec_bench_pair_<device>.json; benchmarks/spec_pair_gpu.sh trains the target on a GPU.
Plain and speculative runs alternate (ABAB) and medians are reported. Writes
spec_bench_<shape>_<device>[_<parts>].json under --output. On the GPU run the parts in
separate commands (each builds several 7B engines): --parts step_cost, --parts ceiling,
--parts ngram concurrency.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from record import write_results  # noqa: E402
from shapes import SHAPES, hf_config  # noqa: E402
from spec_runs import free, run, spec_counters, spec_delta, sync  # noqa: E402

from minerva import LLM  # noqa: E402

DEFAULT_PARTS = ["step_cost", "ceiling", "ngram", "concurrency"]
ALWAYS = {"speculative_adaptive": False}
"""Speculate on every step (no governor): what the oracle and draft parts measure."""


class OracleProposer:
    """Proposes the target's own greedy continuation (recorded by a plain run): every draft
    is accepted and proposing costs nothing, the ceiling of any draft."""

    def __init__(self, outputs: dict[tuple[int, ...], list[int]]) -> None:
        self.outputs = outputs

    def propose(self, requests, num_tokens):
        drafts = []
        for req, k in zip(requests, num_tokens):
            known = self.outputs.get(tuple(req.prompt_token_ids), [])
            n = req.num_output_tokens
            drafts.append(known[n : n + k])
        return drafts

    def forget(self, request_ids) -> None:
        pass


def settle_oracle(spec, prompt, plain_tokens, n, device, max_rounds: int = 48) -> int:
    """Give `spec` an oracle whose proposals its verify steps accept. A plain run's tokens are
    not quite those: in bf16 a K+1-token verify pass rounds otherwise than one-token decode
    steps, and the near-flat logits of random weights turn that into other argmaxes (3.7% of
    a plain run's drafts accepted on an H200). So the oracle proposes what the last
    speculative run produced, until that run reproduces it: each round fixes at least the
    first token it parted at. Returns the rounds run (max_rounds: it did not settle)."""
    want = plain_tokens
    for rounds in range(1, max_rounds + 1):
        spec.engine.speculator.proposer = OracleProposer({tuple(prompt): want})
        got = run(spec.engine, [prompt], n, device)[2][0]
        if got == want[: len(got)]:
            return rounds
        want = got
    return max_rounds


def decode_rate(llm, prompts, n, device) -> tuple[float, dict]:
    """Output tokens per second after the first token (all prompts at once) and spec stats."""
    before = spec_counters(llm)
    span, _, outs = run(llm.engine, prompts, n, device)
    after = spec_counters(llm)
    return sum(len(o) - 1 for o in outs) / span, spec_delta(before, after)


def throughput(llm, prompts, n, device) -> tuple[float, dict]:
    before = spec_counters(llm)
    _, total, outs = run(llm.engine, prompts, n, device)
    return sum(len(o) for o in outs) / total, spec_delta(before, spec_counters(llm))


def ab(measure_a, measure_b, repeats: int) -> tuple[list, list]:
    """Alternate two measurements (A B A B ...): the machine's drift hits both alike."""
    a, b = [], []
    for _ in range(repeats):
        a.append(measure_a())
        b.append(measure_b())
    return a, b


def median_rate(runs) -> float:
    return statistics.median(r[0] for r in runs)


# -- models and workloads ---------------------------------------------------------------------


def random_model(shape: str, dtype: str) -> Path:
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(hf_config(shape, dtype=dtype)))
    return folder


def rewrite_prompts(tokenizer, n: int) -> list[list[int]]:
    """'Rewrite the text below with small edits': a heldout paragraph, then its first words."""
    from minerva.demo import demo_model_path

    text = (Path(demo_model_path()) / "heldout.txt").read_text()
    prompts = []
    for i in range(n):
        para = text[(i * 397) % 4000 :][:600]
        prompt = f"Rewrite the text below with small edits.\n\n{para}\n\nRewritten:\n\n{para[:80]}"
        prompts.append(tokenizer.encode(prompt))
    return prompts


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


# -- parts ------------------------------------------------------------------------------------


def part_step_cost(make, prompt, k_values, n, device, repeats) -> dict:
    """Verify step (K + 1 tokens, batch 1) vs decode step, seconds (medians; the plain and
    the speculative runs alternate)."""
    plain = make()
    _, _, outs = run(plain.engine, [prompt], n + 16, device)
    oracle = OracleProposer({tuple(prompt): outs[0]})
    rows = {}
    for k in k_values:
        llm = make(speculative_method="ngram", num_speculative_tokens=k, **ALWAYS)
        llm.engine.speculator.proposer = oracle
        decode: dict = {}
        steps: dict = {}
        for _ in range(repeats):
            run(plain.engine, [prompt], n, device, decode)
            run(llm.engine, [prompt], n, device, steps)
        verify_s = statistics.median(steps["verify"])
        decode_s = statistics.median(decode["decode"])
        rows[k] = {
            "verify_step_s": verify_s,
            "decode_step_s": decode_s,
            "verify_over_decode": verify_s / decode_s,
            "tokens_per_verify_step": k + 1,
            "oracle_speedup_bound": (k + 1) * decode_s / verify_s,
        }
        free(llm)
    free(plain)
    return rows


def part_ceiling(make, folder, prompt, k, n, device, repeats, draft_folder) -> dict:
    """Batch-1 speed-up of a perfect draft: the oracle (free) and draft = target (real)."""
    plain = make()
    _, _, outs = run(plain.engine, [prompt], n + 16, device)
    spec = make(speculative_method="ngram", num_speculative_tokens=k, **ALWAYS)
    rounds = settle_oracle(spec, prompt, outs[0], n + 16, device)
    a, b = ab(
        lambda: decode_rate(plain, [prompt], n, device),
        lambda: decode_rate(spec, [prompt], n, device),
        repeats,
    )
    result = {
        "k": k,
        "plain_tok_s": median_rate(a),
        "oracle_tok_s": median_rate(b),
        "oracle_speedup": median_rate(b) / median_rate(a),
        "oracle_spec": b[-1][1],
        "oracle_rounds": rounds,
    }
    free(spec)
    same = make(
        speculative_method="draft", draft_model=str(folder), num_speculative_tokens=k, **ALWAYS
    )
    a, b = ab(
        lambda: decode_rate(plain, [prompt], n, device),
        lambda: decode_rate(same, [prompt], n, device),
        repeats,
    )
    result |= {
        "draft_equals_target_tok_s": median_rate(b),
        "draft_equals_target_speedup": median_rate(b) / median_rate(a),
        "draft_equals_target_spec": b[-1][1],
    }
    free(same)
    if draft_folder is not None:
        result |= draft_shape_cost(make, plain, draft_folder, prompt, k, n, device, repeats)
    free(plain)
    return result


def draft_shape_cost(make, plain, draft_folder, prompt, k, n, device, repeats) -> dict:
    """A random draft of another shape: its cost per proposed token (timed around propose),
    the end-to-end speed (acceptance ~0 with random weights: the overhead), and the ceiling
    (K + 1) / (verify + K * draft token) of a perfect draft of that shape."""
    llm = make(
        speculative_method="draft", draft_model=str(draft_folder), num_speculative_tokens=k,
        **ALWAYS,
    )  # fmt: skip
    speculator = llm.engine.speculator
    propose, spent = speculator.proposer.propose, []

    def timed(requests, num_tokens):
        sync(device)
        t = time.perf_counter()
        out = propose(requests, num_tokens)
        sync(device)
        spent.append((time.perf_counter() - t, sum(len(d) for d in out)))
        return out

    speculator.proposer.propose = timed
    steps: dict = {}
    a, b = ab(
        lambda: decode_rate(plain, [prompt], n, device),
        lambda: decode_rate(llm, [prompt], n, device),
        repeats,
    )
    run(llm.engine, [prompt], n, device, steps)
    free(llm)
    per_token = sum(s for s, _ in spent) / max(sum(t for _, t in spent), 1)
    decode: dict = {}
    run(plain.engine, [prompt], n, device, decode)
    decode_s, verify_s = statistics.median(decode["decode"]), statistics.median(steps["verify"])
    return {
        "draft_s_per_token": per_token,
        "draft_over_target_decode": per_token / decode_s,
        "random_draft_tok_s": median_rate(b),
        "random_draft_speedup": median_rate(b) / median_rate(a),
        "perfect_draft_of_this_shape_speedup": (k + 1) * decode_s / (verify_s + k * per_token),
    }


def part_ngram(make, prompts, k, n, device, repeats) -> dict:
    """Batch 1: plain, n-gram with the governor (the default) and n-gram on every step."""
    return _compare(make, k, repeats, lambda llm: decode_rate(llm, prompts[:1], n, device))


def part_concurrency(make, prompts, k, n, device, repeats) -> dict:
    """All prompts at once: output tokens per second of the whole run."""

    def measure(llm):
        return throughput(llm, prompts, n, device)

    result = _compare(
        make, k, repeats, measure, warm=lambda llm: throughput(llm, prompts[:2], 4, device)
    )
    return {"num_requests": len(prompts), **result}


def _compare(make, k, repeats, measure, warm=None) -> dict:
    """plain, adaptive n-gram, always n-gram, alternating; tokens/s medians and ratios."""
    engines = {
        "plain": make(),
        "ngram": make(speculative_method="ngram", num_speculative_tokens=k),
        "ngram_always": make(speculative_method="ngram", num_speculative_tokens=k, **ALWAYS),
    }
    if warm is not None:
        for llm in engines.values():
            warm(llm)
    runs: dict = {name: [] for name in engines}
    for _ in range(repeats):
        for name, llm in engines.items():
            runs[name].append(measure(llm))
    for llm in list(engines.values()):
        free(llm)
    rates = {name: median_rate(r) for name, r in runs.items()}
    return {
        "k": k,
        **{f"{name}_tok_s": rate for name, rate in rates.items()},
        "speedup": rates["ngram"] / rates["plain"],
        "speedup_always": rates["ngram_always"] / rates["plain"],
        "spec": runs["ngram"][-1][1],
        "spec_always": runs["ngram_always"][-1][1],
    }


def device_tag(device: str) -> str:
    """'cpu', or the GPU's model ('NVIDIA H100 80GB HBM3' -> 'h100')."""
    if device != "cuda":
        return "cpu"
    words = torch.cuda.get_device_name().split()
    model = [w for w in words if re.fullmatch(r"[A-Z]+\d{2,}[A-Za-z]*", w)]
    return (model or words[-1:])[0].lower()


def main_pair(args, common: dict) -> None:
    """The trained pair (spec_pair.py): its own JSON, spec_bench_pair_<device>.json."""
    from spec_pair import heldout_prompts, part_pair, summary, target_facts

    from minerva.demo import demo_model_path
    from minerva.tokenizer import Tokenizer

    target = Path(args.target_folder)
    draft = Path(args.draft_folder or demo_model_path())
    pair = common | {"max_model_len": 512, "max_num_seqs": 4}  # batch 1: few CUDA graphs
    if args.device == "cuda":  # six small engines at once
        pair["kv_cache_memory"] = "1GiB"

    def make_target(**kw) -> LLM:
        return LLM(model=str(target), **pair, **kw)

    def make_draft() -> LLM:
        return LLM(model=str(draft), **pair)

    tokenizer = Tokenizer.from_folder(draft)
    text = (Path(demo_model_path()) / "heldout.txt").read_text()
    prompts = heldout_prompts(tokenizer, text, args.pair_prompts)
    result = {"target": target_facts(target), "draft": str(draft)}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    reps, dev = args.repeats, args.device
    result |= part_pair(
        make_target, make_draft, draft, prompts, args.ks, args.k, args.tokens, dev, reps
    )
    out = Path(args.output) / f"spec_bench_pair_{device_tag(dev)}.json"
    write_results("spec_bench", "spec_bench.py", args, [result], out)
    print(json.dumps(result, indent=1))
    print(summary(result))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="mistral-7b", choices=[*SHAPES, "demo"])
    ap.add_argument("--draft-shape", default=None, choices=list(SHAPES))
    ap.add_argument("--ks", type=int, nargs="+", default=[4])
    ap.add_argument("--k", type=int, default=4, help="K of the ceiling, n-gram, concurrency runs")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=DEFAULT_PARTS, choices=[*DEFAULT_PARTS, "pair"])
    ap.add_argument("--target-folder", default=None, help="pair: the trained target's folder")
    ap.add_argument("--draft-folder", default=None, help="pair: the draft (default: demo model)")
    ap.add_argument("--pair-prompts", type=int, default=6, help="pair: held-out prompts")
    ap.add_argument("--output", default="benchmarks/results")
    args = ap.parse_args()
    if "pair" in args.parts and args.target_folder is None:
        ap.error("--parts pair needs --target-folder (scripts/train_demo_model.py --shape target)")
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    common = dict(device=args.device, dtype=dtype, progress=False, max_model_len=2048)
    if args.device == "cuda":  # several engines live at once (plain, speculative, drafts)
        common["kv_cache_memory"] = "4GiB"
    if "pair" in args.parts:
        main_pair(args, common)
        args.parts.remove("pair")
        if not args.parts:
            return

    def make_demo(**kw) -> LLM:
        return LLM(**common | {"max_model_len": 512}, **kw)

    if args.shape == "demo":
        from minerva.demo import demo_model_path

        folder = Path(demo_model_path())
        make = make_demo
    else:
        folder = random_model(args.shape, dtype)

        def make(**kw) -> LLM:
            return LLM(model=str(folder), load_format="dummy", **common, **kw)

    draft_folder = random_model(args.draft_shape, dtype) if args.draft_shape else None
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompt = random_prompts(1, 128, vocab)[0]
    from minerva.demo import demo_model_path
    from minerva.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_folder(demo_model_path())
    rewrite = rewrite_prompts(tokenizer, args.concurrency)
    n, k, reps, dev = args.tokens, args.k, args.repeats, args.device
    results: dict = {"shape": args.shape, "draft_shape": args.draft_shape}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    if "step_cost" in args.parts:
        results["step_cost"] = part_step_cost(make, prompt, args.ks, n, dev, reps)
    if "ceiling" in args.parts:
        results["ceiling"] = part_ceiling(make, folder, prompt, k, n, dev, reps, draft_folder)
    if "ngram" in args.parts:  # a trained model copies the text: the demo model
        results["ngram_rewrite_demo"] = part_ngram(make_demo, rewrite, k, n, dev, reps)
    if "concurrency" in args.parts:
        results["concurrency_demo_rewrite"] = part_concurrency(make_demo, rewrite, k, n, dev, reps)
        if args.shape != "demo":
            many = random_prompts(args.concurrency, 128, vocab, seed=1)
            results["concurrency_random"] = part_concurrency(make, many, k, n, dev, reps)
    gpu = "_" + torch.cuda.get_device_name().split()[-1].lower() if dev == "cuda" else "_cpu"
    parts = "" if args.parts == DEFAULT_PARTS else "_" + "_".join(args.parts)
    out = Path(args.output) / f"spec_bench_{args.shape}{gpu}{parts}.json"
    write_results("spec_bench", "spec_bench.py", args, [results], out)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
