"""Cost of constrained decoding on the CPU or a GPU (`--device cuda`; demo model): time per decode step with every
request under a JSON schema vs the same requests unconstrained, at 1 / 64 / 256 concurrent
requests (rounds interleaved, medians), the host's share of it (token masks + bitmask op), and
the compile time of a 50-property schema on the demo (4096) and a 32k vocabulary.

    PYTHONPATH=src python3 benchmarks/structured_decoding.py [--batches 1 64 256] [--tokens 16]
        [--device cpu|cuda] [--async-scheduling auto|on|off]

Writes benchmarks/results/structured_decoding_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from record import write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# A schema a model cannot finish in a few tokens: every step is constrained.
LONG_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "kind": {"enum": ["alpha", "beta", "gamma"]},
        },
        "required": ["name", "score", "kind"],
        "additionalProperties": False,
    },
    "minItems": 64,
}


def fifty_properties() -> dict:
    kinds = ["string", "integer", "number", "boolean"]
    props = {f"field_{i}": {"type": kinds[i % 4]} for i in range(50)}
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def decode_steps(engine, batch: int, tokens: int, constrained: bool) -> tuple[list, list]:
    """(wall s, mask s) of each all-decode step of ``batch`` requests."""
    from minerva import SamplingParams
    from minerva.runner import token_masks
    from minerva.sampling_params import StructuredOutputs

    structured = StructuredOutputs(json_schema=LONG_SCHEMA) if constrained else None
    params = SamplingParams(
        max_tokens=tokens, temperature=1.0, seed=0, ignore_eos=True, structured=structured
    )
    mask_s = [0.0]
    fill = token_masks.fill_bitmask

    def timed_fill(*args):
        t = time.perf_counter()
        out = fill(*args)
        mask_s[0] += time.perf_counter() - t
        return out

    token_masks.fill_bitmask = timed_fill
    for i in range(batch):
        engine.add_request(f"Record {i}:", params, stream=False)
    walls, masks = [], []
    while engine.has_unfinished_requests():
        mask_s[0] = 0.0
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        if set(engine.last_scheduler_output.num_scheduled_tokens) == {1}:
            walls.append(dt)
            masks.append(mask_s[0])
    token_masks.fill_bitmask = fill
    return walls, masks


def shaped_folder(shape: str, dtype: str) -> Path:
    """A config-only folder: `shape`'s layers with the demo's vocabulary and tokenizer files."""
    import json
    import shutil
    import tempfile

    from shapes import hf_config

    from minerva.demo import demo_model_path

    folder = Path(tempfile.mkdtemp())
    config = hf_config(shape, dtype=dtype, vocab_size=4096, tie_word_embeddings=False)
    (folder / "config.json").write_text(json.dumps(config))
    for f in Path(demo_model_path()).glob("tokenizer*"):
        shutil.copy(f, folder / f.name)
    return folder


def compile_times(repeats: int = 3) -> list[dict]:
    from minerva.demo import demo_model_path
    from minerva.sampling_params import StructuredOutputs
    from minerva.structured import GrammarCompiler, vocabulary_of
    from minerva.tokenizer import Tokenizer, tokenizer_from_gguf_file

    tokenizers = [("demo_4096", Tokenizer.from_folder(demo_model_path()))]
    spm = Path.home() / ".cache/minerva/llama-vocab/0.3.36/ggml-vocab-llama-spm.gguf"
    if spm.is_file():
        tokenizers.append(("llama2_spm_32000", tokenizer_from_gguf_file(spm)))
    rows = []
    for name, tok in tokenizers:
        vocab = vocabulary_of(tok, tok.vocab_size, [tok.eos_token_id])
        setup, compiles = [], []
        for _ in range(repeats):
            compiler = GrammarCompiler(tok, vocab)
            t = time.perf_counter()
            compiler._llg_tokenizer()
            setup.append(time.perf_counter() - t)
            t = time.perf_counter()
            compiler.compile(StructuredOutputs(json_schema=fifty_properties()))
            compiles.append(time.perf_counter() - t)
        rows.append(
            {
                "vocab": name,
                "tokenizer_setup_ms": round(min(setup) * 1e3, 2),
                "compile_50_properties_ms": round(min(compiles) * 1e3, 3),
            }
        )
        print(rows[-1])
    return rows


def main() -> None:
    from minerva import LLM
    from minerva.demo import demo_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default=None, help="a benchmarks/shapes.py shape (random weights)")
    ap.add_argument("--output", default=None)
    ap.add_argument(
        "--async-scheduling", default="auto", choices=["auto", "on", "off"],
        help="the engine's async_scheduling (auto: on for CUDA, off on the CPU)",
    )  # fmt: skip
    args = ap.parse_args()
    name = args.device + (f"_{args.shape}" if args.shape else "")
    args.output = args.output or f"benchmarks/results/structured_decoding_{name}.json"
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    folder, extra = demo_model_path(), {}
    if args.shape:  # the body's cost of a real model, the demo's tokenizer and vocabulary
        folder, extra = shaped_folder(args.shape, dtype), {"load_format": "dummy"}
    llm = LLM(
        model=str(folder),
        device=args.device,
        dtype=dtype,
        max_num_seqs=max(args.batches),
        max_num_batched_tokens=8192,
        async_scheduling=args.async_scheduling,
        progress=False,
        **extra,
    )
    decode_steps(llm.engine, 2, 4, True)  # warm-up: grammar compile, llguidance pool
    rows = []
    for batch in args.batches:
        walls: dict[bool, list] = {False: [], True: []}
        masks: list[float] = []
        for _ in range(args.rounds):  # ABAB: the machine's load drifts
            for constrained in (False, True):
                w, m = decode_steps(llm.engine, batch, args.tokens, constrained)
                walls[constrained] += w
                masks += m if constrained else []
        free, bound = statistics.median(walls[False]), statistics.median(walls[True])
        rows.append(
            {
                "batch": batch,
                "unconstrained_step_ms": round(free * 1e3, 3),
                "constrained_step_ms": round(bound * 1e3, 3),
                "overhead_pct": round((bound / free - 1) * 100, 1),
                "mask_fill_ms": round(statistics.median(masks) * 1e3, 3),
            }
        )
        print(rows[-1])
    results = {"shape": args.shape or "demo", "vocab": llm.engine.worker.model_config.vocab_size,
               "decode": rows, "compile": compile_times()}  # fmt: skip
    write_results("structured_decoding", "structured_decoding.py", args, results, args.output)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
