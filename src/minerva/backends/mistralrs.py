"""The mistral.rs backend through the ``mistralrs`` package: safetensors folders and GGUF files.

mistral.rs schedules and samples; Minerva keeps tokenization, stop rules and outputs
(token_engine.py). The package takes text prompts only and streams only chat requests, so a
prompt goes in as its exact text through a chat template that renders the text unchanged
(checked: mistral.rs must tokenize it back to the same ids, or the request is refused); the
streaming side is mistralrs_engine.py. Per-request seeds are not honoured: the package has one
seed per engine ([model] seed). This module loads: options, device, the Runner.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minerva.backends.foreign import ForeignBackend, import_optional, source_model_info
from minerva.backends.mistralrs_engine import NAME, MistralrsEngine
from minerva.backends.mistralrs_options import ISQ_TYPES, runner_options
from minerva.errors import ConfigError, ModelLoadError
from minerva.loader import ModelSource, open_model

if TYPE_CHECKING:
    from minerva.config import EngineConfig

RAW_TEMPLATE = "{{ messages[0]['content'] }}"
"""The chat template that renders a prompt's text unchanged (the package streams chats only)."""
HONOURED_NOTE = (
    "temperature, top_k, top_p, min_p, repetition / frequency / presence penalties "
    "(mistral.rs's definitions), logit_bias, n, logprobs (top alternatives up to 20), stop "
    "strings; request seeds are NOT honoured: one seed per engine (--seed), and none "
    "on the CPU, whose generator mistral.rs cannot seed"
)
UNSUPPORTED_NOTE = (
    "structured output, min_tokens, embeddings, token healing, prompt logprobs / scoring "
    "(each a 400 or an error naming --backend minerva); speculative decoding with a draft "
    "model; PagedAttention on the CPU"
)


def doctor() -> dict[str, str]:
    """What mistral.rs can do here (minerva doctor)."""
    from importlib.metadata import version  # noqa: PLC0415

    import_optional("mistralrs", NAME, "mistralrs")
    return {
        "version": version("mistralrs"),
        "device": _device("auto") + " (the package's build picks it)",
        "concurrency": "mistral.rs's own scheduler, max_num_seqs sequences at once",
        "quantization": "GGUF files; in-situ (MISTRALRS_ISQ) " + ", ".join(ISQ_TYPES.values()),
        "sampling": HONOURED_NOTE,
        "not supported": UNSUPPORTED_NOTE,
    }


def load(config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False):
    """Load ``config``'s model with mistral.rs (blocking) and return its Backend."""
    mistralrs = import_optional("mistralrs", NAME, "mistralrs")
    from minerva.runner.model_loading import check_lengths, resolve_model_path  # noqa: PLC0415

    path = resolve_model_path(config)
    source = open_model(path, config.model.tokenizer)
    if source.tokenizer is None:
        raise ConfigError(f"{path} has no tokenizer: the mistralrs backend needs one (--tokenizer)")
    device = _device(config.device.device)
    options = runner_options(config, source.format == "gguf", device)
    workdir = Path(tempfile.mkdtemp(prefix="minerva-mistralrs-"))
    try:
        runner = _runner(mistralrs, config, source, options, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    max_model_len = min(
        check_lengths(config, source.config), runner.max_sequence_length() or 1 << 30
    )
    isq = options.kwargs.get("in_situ_quant")
    engine = MistralrsEngine(
        config, source, max_model_len, runner, mistralrs, workdir, one_prompt_at_a_time=bool(isq)
    )
    dtype = config.model.dtype if config.model.dtype != "auto" else _checkpoint_dtype(source)
    info = source_model_info(
        source,
        max_model_len=max_model_len,
        quantization=source.quantization or (f"ISQ_{isq}" if isq else dtype.upper()),
        dtype=dtype,
        device=device,
    )
    return ForeignBackend(engine, info, max_queued_requests)


def _device(requested: str) -> str:
    """The package runs where its build does (PyPI's mistralrs: the CPU on Linux, Metal on
    macOS; mistralrs-cuda: the first CUDA GPU): a device it cannot use is a ConfigError."""
    from importlib.metadata import PackageNotFoundError, distribution  # noqa: PLC0415

    built = "cpu"
    for dist, device in (("mistralrs-cuda", "cuda"), ("mistralrs-metal", "mps")):
        try:
            distribution(dist)
            built = device
        except PackageNotFoundError:
            pass
    if built == "cpu" and os.uname().sysname == "Darwin":
        built = "mps"
    if requested not in ("auto", built) and requested.split(":")[0] != built:
        raise ConfigError(
            f"device={requested}, but the installed mistralrs package runs on {built} (its "
            f"build picks the device): use --device {built} or auto, or install the package "
            "built for that device"
        )
    return built


def _checkpoint_dtype(source: ModelSource) -> str:
    dtype = getattr(source.config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def _runner(mistralrs: Any, config: EngineConfig, source: ModelSource, options, workdir: Path):
    """Build the mistralrs.Runner (loads the weights)."""
    template = workdir / "raw.jinja"
    template.write_text(RAW_TEMPLATE)
    dtype = getattr(mistralrs.ModelDType, options.dtype)
    tokenizer = config.model.tokenizer
    if source.format == "gguf":
        which = mistralrs.Which.GGUF(
            quantized_model_id=str(source.path.parent),
            quantized_filename=source.path.name,
            tok_model_id=tokenizer,
            dtype=dtype,
        )
    else:
        which = mistralrs.Which.Plain(
            model_id=str(_with_rope_theta(source.path, workdir)),
            dtype=dtype,
            tokenizer_json=str(Path(tokenizer) / "tokenizer.json") if tokenizer else None,
        )
    _kv_cache_dtype(config, source)
    try:
        return mistralrs.Runner(which=which, jinja_explicit=str(template), **options.kwargs)
    except (ValueError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"mistral.rs cannot load {source.path}: {e}") from None


def _kv_cache_dtype(config: EngineConfig, source: ModelSource) -> None:
    """mistral.rs keeps a CPU KV cache in f16 unless MISTRALRS_CPU_KV_F32=1: float32 models
    (and kv_cache_dtype=float32) keep float32 keys and values, as Minerva does."""
    kv, dtype = config.cache.kv_cache_dtype, config.model.dtype
    if dtype == "auto":
        dtype = _checkpoint_dtype(source)
    if kv.startswith("float8"):
        raise ConfigError(
            f"kv_cache_dtype={kv}: the mistralrs backend keeps its KV cache in the model's "
            "dtype here; use auto, or --backend minerva for an 8-bit KV cache"
        )
    if kv == "float32" or (kv == "auto" and dtype == "float32"):
        os.environ.setdefault("MISTRALRS_CPU_KV_F32", "1")


def _with_rope_theta(folder: Path, workdir: Path) -> Path:
    """mistral.rs 0.9 reads ``rope_theta`` at the top of config.json, where transformers 5
    writes ``rope_parameters.rope_theta``: such a folder is presented through a copy of its
    config with the key added and links to its other files."""
    config = json.loads((folder / "config.json").read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if "rope_theta" in config or theta is None:
        return folder
    shim = workdir / folder.name
    shim.mkdir()
    for item in folder.iterdir():
        if item.name != "config.json":
            (shim / item.name).symlink_to(item.resolve())
    (shim / "config.json").write_text(json.dumps({**config, "rope_theta": theta}))
    return shim
