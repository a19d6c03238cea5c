"""Quality of every quantization type Minerva supports, against the float32 model: mean KL
divergence of the next-token distribution, top-1 agreement and perplexity, vs bits per weight.

Two models: the bundled demo model on its held-out text (the README's method: chunks of 511
tokens, each after <s>), and a random model of TinyLlama-1.1B's widths (fewer layers, a few
hundred random tokens: only KL and agreement mean anything there). For q8_0, q4_0, q4_k_m,
q5_k_m and q6_k it also scores llama.cpp's quantization of the same weights (llama_cpp's
quantizer on an F16 GGUF file), loaded into Minerva and run by llama.cpp itself. Writes JSON,
a Markdown table and a plot (benchmarks/results/quant_quality.*).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_quality_report import write_markdown, write_plot  # noqa: E402
from record import write_results  # noqa: E402
from shapes import hf_config  # noqa: E402

from minerva.attention.metadata import AttentionMetadata  # noqa: E402
from minerva.bench.logit_metrics import LogitStats, paired_ppl_difference  # noqa: E402
from minerva.demo import demo_model_path  # noqa: E402
from minerva.loader import open_model  # noqa: E402
from minerva.loader.hf_config import _parse_config  # noqa: E402
from minerva.models import build_model  # noqa: E402
from minerva.models.linear import Linear  # noqa: E402
from minerva.models.options import ModelOptions  # noqa: E402
from minerva.ops.kernels import cpu_kernels, torch_kernels  # noqa: E402
from minerva.quant.base import QuantConfig  # noqa: E402
from minerva.quant.gguf import GGUFLinearMethod, GGUFQuantConfig  # noqa: E402
from minerva.quant.gguf_dequant import dequantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType, QuantizedTensor  # noqa: E402
from minerva.quant.registry import build_insitu_config  # noqa: E402
from minerva.quant_names import OWN_FORMATS  # noqa: E402

TYPES = [
    "q8_0", "q6_k", "q5_k_m", "q5_k", "q5_1", "q5_0",
    "q4_k_m", "q4_k", "q4_1", "q4_0", "q3_k", "q2_k", "fp8", "int8", "int4",
]  # fmt: skip
FLOAT_REFS = {"f16": torch.float16, "bf16": torch.bfloat16}
LLAMA_CPP_TYPES = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
CHUNK = 512  # tokens per forward: <s> + 511 of text (the demo README's method)
BLOCK = 16  # KV cache block size of the one-sequence prefill


class BlocksOnly(QuantConfig):
    """Every linear layer takes the GGUF blocks it is given (a quantized GGUF file); a float
    tensor for the tied head (the dequantized embedding) is a placeholder its blocks replace."""

    name = "gguf-file"

    def get_method(self, prefix: str):
        return GGUFLinearMethod(torch_kernels(), GGMLType.F32 if prefix == "lm_head" else None)


def file_weights(source, tied: bool):
    """The file's tensors; a quantized token embedding as floats for the embedding layer, and
    (tied) its blocks again as the head's, after it (main cannot load it quantized yet)."""
    for name, tensor in source.iter_weights(progress=False):
        if name == "model.embed_tokens.weight" and isinstance(tensor, QuantizedTensor):
            yield name, dequantize_tensor(tensor)
            if tied:
                yield "lm_head.weight", tensor
        else:
            yield name, tensor


@torch.inference_mode()
def chunk_logprobs(model, hf, ids: list[int]) -> torch.Tensor:
    """log p(. | ids[:i+1]) for i < len(ids) - 1 [n - 1, vocab]: one prefill on a fresh cache."""
    n = len(ids)
    num_blocks = -(-n // BLOCK)
    kv = [
        torch.zeros(2, num_blocks + 1, BLOCK, hf.num_key_value_heads, hf.head_dim)
        for _ in model.model.layers
    ]  # block 0 is the null block
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n) + BLOCK,
        block_tables=torch.arange(1, num_blocks + 1, dtype=torch.int32)[None],
        seq_lens=torch.tensor([n], dtype=torch.int32),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        num_decodes=0,
        max_query_len=n,
        seq_lens_cpu=[n],
        query_start_loc_cpu=[0, n],
    )
    every = torch.arange(n - 1)
    logits = model(torch.tensor(ids), torch.arange(n), kv, meta, every)  # [n - 1, vocab]
    return torch.log_softmax(logits.float(), dim=-1)


def build(hf, weights, quant: QuantConfig | None = None):
    """A float32 CPU model (C kernels where they build) with `weights` loaded."""
    options = ModelOptions(kernels=cpu_kernels() or torch_kernels(), quant=quant)
    model = build_model(hf, torch.float32, torch.device("cpu"), CHUNK, options)
    model.load_weights(weights)
    return model


def linear_bits_per_weight(model) -> float:
    """Bytes of every linear layer (the output head included, a tied embedding once) as its
    method stores them, x 8 / their parameter count."""
    nbytes = params = 0
    for module in model.modules():
        if isinstance(module, Linear):
            nbytes += module.method.weight_bytes(module)
            params += module.in_features * module.out_features
    return nbytes * 8 / params


def rounded(weights: dict, dtype: torch.dtype) -> dict:
    """The 2-D weights rounded through `dtype` (an F16 / BF16 file), back in float32."""
    return {k: v.to(dtype).float() if v.dim() == 2 else v for k, v in weights.items()}


def score(name: str, model, hf, chunks, refs, bpw: float, source: str) -> dict:
    stats = LogitStats()
    start = time.perf_counter()
    for ids, ref in zip(chunks, refs, strict=True):
        stats.add(ref, chunk_logprobs(model, hf, ids), torch.tensor(ids[1:]))
    return finish_row(name, source, bpw, stats, start)


def finish_row(name: str, source: str, bpw: float, stats: LogitStats, start: float) -> dict:
    row = {"type": name, "source": source, "bits_per_weight": bpw, **stats.result()}
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(row), flush=True)
    return {**row, "_stats": stats}  # the per-token NLLs, for paired comparisons


def compare_with_llama_cpp(rows: list[dict]) -> list[dict]:
    """Per llama.cpp type: in-situ perplexity minus that of llama.cpp's file (both run by
    Minerva) and minus llama.cpp's own run of its file, each with its paired standard error."""
    by = {(r["type"], r["source"]): r["_stats"] for r in rows}
    out = []
    for name in LLAMA_CPP_TYPES:
        ours = by.get((name, "minerva"))
        if ours is None or (name, "llama.cpp") not in by:
            continue
        row = {"type": name}
        for key, source in (("vs_file_in_minerva", "llama.cpp file in minerva"),
                            ("vs_llama_cpp", "llama.cpp")):  # fmt: skip
            row[key] = paired_ppl_difference(ours, by[(name, source)])
        out.append(row)
    return out


def evaluate(hf, weights: dict, chunks, types, extra=()) -> list[dict]:
    """The float32 reference, then f16 / bf16 and every in-situ type, against it."""
    ref_model = build(hf, weights.items())
    refs = [chunk_logprobs(ref_model, hf, ids) for ids in chunks]
    rows = [score("f32", ref_model, hf, chunks, refs, 32.0, "reference")]
    del ref_model
    for name, dtype in FLOAT_REFS.items():
        model = build(hf, rounded(weights, dtype).items())
        rows.append(score(name, model, hf, chunks, refs, float(dtype.itemsize * 8), "rounded"))
    for name in types:
        quant = (
            build_insitu_config(name, hf.num_hidden_layers, torch_kernels())
            if name in OWN_FORMATS
            else GGUFQuantConfig(name, hf.num_hidden_layers)
        )
        model = build(hf, weights.items(), quant)
        rows.append(score(name, model, hf, chunks, refs, linear_bits_per_weight(model), "minerva"))
    for fn in extra:
        rows += fn(chunks, refs)
    return rows


# ---- the demo model ---------------------------------------------------------------------------


def demo_chunks(max_chunks: int) -> tuple[object, dict, list[list[int]]]:
    folder = demo_model_path()
    source = open_model(folder)
    weights = dict(source.iter_weights(dtype=torch.float32, progress=False))
    text = (folder / "heldout.txt").read_text()
    ids = source.tokenizer.encode(text, add_special_tokens=False)
    bos = source.config.bos_token_id
    chunks = [[bos, *ids[i : i + CHUNK - 1]] for i in range(0, len(ids), CHUNK - 1)]
    return source.config, weights, [c for c in chunks if len(c) > 1][:max_chunks]


def llama_cpp_rows(hf, weights: dict, workdir: Path):
    """Rows for llama.cpp's quantization of the same weights: its file in Minerva, and llama.cpp
    running that file. Returns a function of (chunks, refs) for `evaluate`."""
    import llama_cpp  # noqa: PLC0415 - optional peer

    from minerva.loader.gguf_export import float_plan, write_gguf  # noqa: PLC0415

    f16 = workdir / "demo-f16.gguf"
    write_gguf(
        hf, weights.items(), f16, float_plan(GGMLType.F16), tokenizer_dir=demo_model_path(),
        file_type="f16",
    )  # fmt: skip

    def rows(chunks, refs) -> list[dict]:
        out = []
        for name in LLAMA_CPP_TYPES:
            path = workdir / f"demo-{name}.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")
            if llama_cpp.llama_model_quantize(str(f16).encode(), str(path).encode(), params):
                raise RuntimeError(f"llama.cpp could not quantize to {name}")
            source = open_model(path)
            model = build(source.config, file_weights(source, hf.tie_word_embeddings), BlocksOnly())
            bpw = linear_bits_per_weight(model)
            out.append(score(name, model, hf, chunks, refs, bpw, "llama.cpp file in minerva"))
            out.append(llama_cpp_score(llama_cpp, path, name, chunks, refs, bpw))
        return out

    return rows


def llama_cpp_score(llama_cpp, path: Path, name: str, chunks, refs, bpw: float) -> dict:
    """llama.cpp's own logits on the file (llama-cpp-python, logits_all)."""
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=CHUNK, n_batch=CHUNK, n_threads=2, logits_all=True,
        verbose=False,
    )  # fmt: skip
    stats, start = LogitStats(), time.perf_counter()
    for ids, ref in zip(chunks, refs, strict=True):
        llm.reset()
        llm.eval(ids)
        logits = torch.from_numpy(llm.scores[: len(ids) - 1].copy()).float()  # [n - 1, vocab]
        stats.add(ref, torch.log_softmax(logits, -1), torch.tensor(ids[1:]))
    llm.close()
    return finish_row(name, "llama.cpp", bpw, stats, start)


# ---- the 1.1B-shaped random model ------------------------------------------------------------


def random_weights(hf, seed: int) -> dict:
    """Normal(0, 0.02) weights, norms 1, and an output head scaled so logits have a std of
    about 3 (peaked like a trained model's, so KL and top-1 agreement are not flat noise)."""
    gen = torch.Generator().manual_seed(seed)
    model = build_model(hf, torch.float32, torch.device("meta"), CHUNK)
    weights = {}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(p.shape)
        else:
            std = 3.0 / hf.hidden_size**0.5 if name == "lm_head.weight" else 0.02
            weights[name] = torch.randn(p.shape, generator=gen) * std
    return _split_fused(weights, hf)


def _split_fused(weights: dict, hf) -> dict:
    """Minerva's fused qkv_proj / gate_up_proj back into the checkpoint's pieces."""
    q, kv = hf.num_attention_heads * hf.head_dim, hf.num_key_value_heads * hf.head_dim
    out = {}
    for name, w in weights.items():
        if name.endswith("qkv_proj.weight"):
            for piece, part in zip(("q", "k", "v"), w.split([q, kv, kv]), strict=True):
                out[re.sub("qkv_proj", f"{piece}_proj", name)] = part
        elif name.endswith("gate_up_proj.weight"):
            gate, up = w.chunk(2)
            out[name.replace("gate_up_proj", "gate_proj")] = gate
            out[name.replace("gate_up_proj", "up_proj")] = up
        else:
            out[name] = w
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chunks", type=int, default=8, help="demo chunks of 511 tokens")
    ap.add_argument("--big-layers", type=int, default=4, help="layers of the 1.1B-shaped model")
    ap.add_argument("--big-tokens", type=int, default=256)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--output", default="benchmarks/results/quant_quality.json")
    ap.add_argument("--types", nargs="+", default=TYPES, choices=TYPES)
    args = ap.parse_args()
    torch.set_num_threads(2)
    hf, weights, chunks = demo_chunks(args.max_chunks)
    with tempfile.TemporaryDirectory() as tmp:
        extra = () if args.skip_llama_cpp else (llama_cpp_rows(hf, weights, Path(tmp)),)
        rows = evaluate(hf, weights, chunks, args.types, extra)
        results = [{"model": "demo", "rows": rows, "vs_llama_cpp": compare_with_llama_cpp(rows)}]
    if not args.skip_big:
        big = _parse_config(
            hf_config("tinyllama-1.1b", num_hidden_layers=args.big_layers), Path("x")
        )
        ids = torch.randint(
            3, big.vocab_size, (args.big_tokens,), generator=torch.Generator().manual_seed(1)
        )
        big_chunks = [[big.bos_token_id, *ids.tolist()]]
        rows = evaluate(big, random_weights(big, seed=0), big_chunks, args.types)
        results.append({"model": f"tinyllama-1.1b widths, {args.big_layers} layers", "rows": rows})
    for block in results:
        for row in block["rows"]:
            row.pop("_stats")
    write_results("quant_quality", "quant_quality.py", args, results, args.output)
    out = Path(args.output)
    write_markdown(results, out.with_suffix(".md"))
    write_plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
