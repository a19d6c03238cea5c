"""`minerva quantize IN OUT.gguf --type q4_k_m`: quantize a model once and save it as a GGUF file
that Minerva and llama.cpp load, so the quantization is not redone at every start.

IN is a Hugging Face folder (safetensors or .bin). Each weight gets the type llama.cpp's rules
give it under the chosen name (quant/gguf_mix.py); the bytes are Minerva's quantizers'
(quant/gguf_quantize.py), the names, permutation and metadata llama.cpp's (loader/gguf_export.py).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from minerva.errors import ConfigError, MinervaError
from minerva.quant.gguf_mix import MIXES, PLAIN, canonical_name, mix_type
from minerva.quant.gguf_types import GGMLType

FLOAT_NAMES = {"f32": GGMLType.F32, "f16": GGMLType.F16, "bf16": GGMLType.BF16}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def type_plan(name: str, config) -> Any:
    """(gguf tensor name, shape) -> GGMLType for quantization `name` (a float name or a mix)."""
    key = name.strip().lower()
    if key in FLOAT_NAMES:
        return lambda tensor, shape: FLOAT_NAMES[key]
    key = canonical_name(key)
    layers, tied = config.num_hidden_layers, config.tie_word_embeddings

    def plan(tensor: str, shape: tuple[int, ...]) -> GGMLType:
        m = _LAYER.match(tensor)
        layer = int(m.group(1)) if m else None
        return mix_type(key, tensor, layer, layers, cols=shape[-1], tied_output=tied)

    return plan


def quantize_model(src: str | Path, out: str | Path, type_name: str, progress: bool = True) -> Path:
    """Quantize the model at `src` into the GGUF file `out`; returns its path."""
    import torch  # noqa: PLC0415 - torch and the loader stay out of `minerva --help`

    from minerva.loader.gguf_export import write_gguf  # noqa: PLC0415
    from minerva.loader.source import open_model  # noqa: PLC0415
    from minerva.quant.gguf_quantize import quantize_tensor  # noqa: PLC0415

    source = open_model(src)
    if source.format == "gguf":
        raise ConfigError(
            f"{src} is already a GGUF file: quantize from the Hugging Face folder it came from "
            "(or re-quantize it with llama.cpp's llama-quantize)"
        )
    config = source.config
    plan = type_plan(type_name, config)
    key = type_name.strip().lower()
    file_type = key if key in FLOAT_NAMES else canonical_name(key)
    out = Path(out)
    if out.suffix != ".gguf":
        raise ConfigError(f"output {out} must end in .gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = source.iter_weights(torch.device("cpu"), torch.float32, progress=False)
    total = _num_tensors(config)
    with _progress(progress, total, f"quantizing to {file_type}") as advance:
        write_gguf(
            config,
            tensors,
            out,
            plan,
            quantize=lambda t, ggml_type: quantize_tensor(t, ggml_type),
            tokenizer_dir=_tokenizer_dir(Path(source.path)),
            file_type=file_type,
            name=Path(str(src)).name,
            progress=advance,
        )
    return out


def _tokenizer_dir(folder: Path) -> Path | None:
    names = ("tokenizer.json", "tokenizer.model", "vocab.json")
    return folder if any((folder / n).exists() for n in names) else None


def _num_tensors(config) -> int:
    per_layer = 9 + (3 if config.qkv_bias else 0) + (1 if config.o_proj_bias else 0)
    per_layer += 3 if config.mlp_bias else 0
    return 2 + (0 if config.tie_word_embeddings else 1) + per_layer * config.num_hidden_layers


class _progress:
    """A rich progress bar over tensors written (a no-op when not on a terminal)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress  # noqa: PLC0415

        self.bar = Progress(transient=False)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.update(task, completed=n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def run_quantize(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        out = quantize_model(args.input, args.output, args.type, progress=sys.stderr.isatty())
    except MinervaError as e:
        print(f"minerva quantize: {e}", file=sys.stderr)
        return 1
    size = out.stat().st_size / 2**20
    took = time.perf_counter() - start
    print(f"wrote {out} ({size:.1f} MiB, {args.type}) in {took:.1f} s", file=sys.stderr)
    return 0


def add_quantize_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    choices = [*FLOAT_NAMES, *PLAIN, *MIXES]
    p = subparsers.add_parser(
        "quantize", help="quantize a Hugging Face model folder into a GGUF file"
    )
    p.add_argument("input", help="Hugging Face model folder (safetensors or .bin)")
    p.add_argument("output", help="the GGUF file to write")
    p.add_argument(
        "--type",
        default="q4_k_m",
        help=f"one of {', '.join(choices)} (mistral.rs spellings such as Q4K also work). Default: q4_k_m.",
    )
    p.set_defaults(func=run_quantize)
    return p
