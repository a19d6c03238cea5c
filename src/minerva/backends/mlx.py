"""The MLX backend: mlx-lm's continuous batching (BatchGenerator) samples, Minerva does the rest.

Loads Hugging Face folders and MLX-format folders (the mlx-community layout, including weights
quantized by ``mlx_lm.convert -q``). Metal on Apple Silicon; on Linux the CPU build of MLX runs
the same code, which is what CI tests. ``[model] quantization`` quantizes a float model at load
with MLX's affine scheme at the same bit width (q8_0 -> 8 bits, q4_k_m -> 4; group 32): the
same bits as the GGUF types, not their block format. Seeds hold per request (mlx_sampling.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from minerva.backends.foreign import ForeignBackend, import_optional, source_model_info
from minerva.backends.token_engine import StepSummary, TokenEngine, TokenEvent
from minerva.engine.request_validation import check_token_ids
from minerva.errors import ConfigError, ModelLoadError, RequestError
from minerva.loader import open_model
from minerva.request import Logprobs, Request

if TYPE_CHECKING:
    from minerva.config import EngineConfig

NAME = "mlx"
HONOURED_NOTE = (
    "temperature, top_k, top_p, min_p, repetition / frequency / presence penalties, "
    "logit_bias, min_tokens, n, logprobs, stop strings; request seeds are honoured per "
    "request (same seed, same tokens on MLX, whatever runs beside it; not the minerva "
    "engine's tokens, whose generator differs)"
)
UNSUPPORTED_NOTE = (
    "structured output, embeddings, token healing (each a 400 naming --backend minerva)"
)
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
_GROUP_SIZE = 32


def import_mlx_lm() -> ModuleType:
    """``import mlx_lm`` without SentencePiece: its wheel bundles a second libgomp, and with two
    OpenMP runtimes in the process Minerva's C kernels refuse to load (ops/native.py), slowing
    the minerva engine of a multi-engine run. This backend tokenizes with Minerva's tokenizer,
    so mlx-lm's SentencePiece tokenizers are never needed; a later ``import sentencepiece``
    still works."""
    if "mlx_lm" in sys.modules or "sentencepiece" in sys.modules:
        return import_optional("mlx_lm", NAME, "mlx")
    sys.modules["sentencepiece"] = None  # type: ignore[assignment] - import fails: skipped
    try:
        return import_optional("mlx_lm", NAME, "mlx")
    finally:
        del sys.modules["sentencepiece"]


def doctor() -> dict[str, str]:
    """What MLX can do here (minerva doctor)."""
    import mlx.core as mx  # noqa: PLC0415

    mlx_lm = import_mlx_lm()

    gpu = mx.is_available(mx.gpu)
    return {
        "version": f"{mlx_lm.__version__} (mlx {mx.__version__})",
        "devices": "cpu, gpu (" + ("Metal" if _is_apple() else "CUDA") + ")" if gpu else "cpu",
        "concurrency": "continuous batching (mlx-lm's BatchGenerator), max_num_seqs at once",
        "quantization": "MLX-quantized folders; --quantization = MLX affine, same bits",
        "sampling": HONOURED_NOTE,
        "not supported": UNSUPPORTED_NOTE,
    }


def load(config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False):
    """Load ``config``'s model folder with mlx-lm (blocking) and return its Backend."""
    import_optional("mlx.core", NAME, "mlx")
    import_mlx_lm()
    import mlx.core as mx  # noqa: PLC0415 - optional dependency

    from minerva.runner.model_loading import check_lengths, resolve_model_path  # noqa: PLC0415

    path = resolve_model_path(config)
    if not path.is_dir():
        raise ConfigError(
            f"the mlx backend loads model folders (Hugging Face or MLX format), not {path}: "
            "for a .gguf file use --backend minerva, llamacpp or mistralrs"
        )
    _check_supported(config)
    device = _select_device(config.device.device, mx)
    source = open_model(path, config.model.tokenizer)
    model, mlx_config = _load_model(path)
    quantization = _quantize(model, mlx_config, config.model.quantization)
    dtype = _cast(model, config.model.dtype, mx)
    mx.eval(model.parameters())  # now: MLX streams are per thread, the engine runs on its own
    max_model_len = check_lengths(config, source.config)
    engine = MlxEngine(config, source, model, max_model_len)
    info = source_model_info(
        source,
        max_model_len=max_model_len,
        quantization=quantization or dtype.upper(),
        dtype=dtype,
        device=device,
        weight_bytes=_weight_bytes(model),
    )
    return ForeignBackend(engine, info, max_queued_requests)


def _check_supported(config: EngineConfig) -> None:
    """Settings of Minerva's engine that MLX cannot honour are errors, not silently dropped."""
    if config.speculative.num_speculative_tokens or config.speculative.draft_model:
        raise ConfigError(
            "speculative decoding (draft_model / num_speculative_tokens) cannot run on the mlx "
            "backend: mlx-lm's batched generator does not speculate; use --backend minerva, or "
            "set num_speculative_tokens=0"
        )
    if config.cache.kv_cache_dtype.startswith("float8"):
        raise ConfigError(
            f"kv_cache_dtype={config.cache.kv_cache_dtype}: the mlx backend keeps its KV cache "
            "in the model's dtype; use auto, or --backend minerva for an 8-bit KV cache"
        )


def _select_device(requested: str, mx: Any) -> str:
    """MLX's device for the config's: cpu, else its GPU (Metal, or CUDA in MLX's CUDA build)."""
    has_gpu = mx.is_available(mx.gpu)
    if requested == "cpu" or (requested == "auto" and not has_gpu):
        mx.set_default_device(mx.cpu)
        return "cpu"
    if not has_gpu:
        raise ConfigError(
            f"device={requested} asked for a GPU, but this MLX build runs on the CPU only "
            "(MLX uses Metal on Apple Silicon; on Linux pip install mlx[cuda]): use --device cpu"
        )
    mx.set_default_device(mx.gpu)
    return "mps" if _is_apple() else "cuda"


def _is_apple() -> bool:
    import platform  # noqa: PLC0415

    return platform.system() == "Darwin"


def _load_model(path: Path) -> tuple[Any, dict]:
    from mlx_lm.utils import load_model  # noqa: PLC0415

    try:
        return load_model(path)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ModelLoadError(f"mlx-lm cannot load {path}: {e}") from None


def _quantize(model: Any, mlx_config: dict, quantization: str | None) -> str | None:
    """The weights' quantization as ModelInfo names it; quantizes a float model if asked."""
    existing = mlx_config.get("quantization")
    if existing:
        if quantization is not None:
            raise ConfigError(
                f"this MLX folder is already quantized ({existing.get('bits')} bits); drop "
                f"quantization={quantization}, or convert its float original instead"
            )
        return f"MLX_{existing.get('bits')}BIT_G{existing.get('group_size')}"
    if quantization is None:
        return None
    import mlx.nn as nn  # noqa: PLC0415

    bits = int(re.search(r"\d", quantization).group())  # type: ignore[union-attr]
    nn.quantize(model, group_size=_GROUP_SIZE, bits=bits)
    return f"MLX_{bits}BIT_G{_GROUP_SIZE}"


def _cast(model: Any, dtype: str, mx: Any) -> str:
    """Cast float weights to the config's dtype (auto: keep the checkpoint's); the dtype."""
    if dtype in _DTYPES:
        model.set_dtype(getattr(mx, _DTYPES[dtype]))
        return dtype
    for _, value in _leaves(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            return str(value.dtype).removeprefix("mlx.core.")
    return "float32"


def _leaves(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix, tree


def _weight_bytes(model: Any) -> int:
    return sum(v.nbytes for _, v in _leaves(model.parameters()))


class MlxEngine(TokenEngine):
    """Sequences run in one mlx-lm BatchGenerator: prompts prefill in batches, then decode
    together; abort and Minerva's stop rules remove a sequence from the batch."""

    name = NAME

    def __init__(self, config: EngineConfig, source: Any, model: Any, max_model_len: int):
        super().__init__(config, source, max_model_len)
        from mlx_lm.generate import BatchGenerator  # noqa: PLC0415

        from minerva.backends import mlx_sampling  # noqa: PLC0415 - imports mlx

        self._sampling = mlx_sampling
        self.model = model
        sched = config.scheduler
        self._gen = BatchGenerator(
            model,
            max_tokens=max_model_len,
            completion_batch_size=sched.max_num_seqs,
            prefill_batch_size=min(8, sched.max_num_seqs),
            prefill_step_size=sched.max_num_batched_tokens,
        )
        self._uid: dict[str, int] = {}  # child id -> BatchGenerator uid
        self._child: dict[int, Request] = {}
        import mlx.core as mx  # noqa: PLC0415

        self._device, self._bound = mx.default_device(), False

    def _bind(self) -> None:
        """Use the loading thread's device on the engine thread too (MLX keeps it per thread)."""
        if not self._bound:
            import mlx.core as mx  # noqa: PLC0415

            mx.set_default_device(self._device)
            self._bound = True

    def _start(self, request: Request) -> None:
        self._bind()
        p = request.sampling_params
        [uid] = self._gen.insert(
            [list(request.prompt_token_ids)],
            max_tokens=[request.max_tokens],
            samplers=[self._sampling.make_sampler(p, request.seed)],
            logits_processors=[self._sampling.make_processors(request, self.eos_token_ids)],
        )
        self._uid[request.request_id] = uid
        self._child[uid] = request

    def _cancel(self, request: Request) -> None:
        uid = self._uid.pop(request.request_id, None)
        if uid is not None:
            self._child.pop(uid, None)
            self._gen.remove([uid])

    def _advance(self) -> list[TokenEvent]:
        self._bind()
        with self._gen.stats() as counted:
            _, responses = self._gen.next()
        self.last_scheduler_output = StepSummary(
            counted.prompt_tokens, counted.generation_tokens, len(self._uid)
        )
        events = []
        for r in responses:
            req = self._child.get(r.uid)
            if req is None:
                continue
            if r.finish_reason is not None:  # its max_tokens: the generator dropped it
                self._child.pop(r.uid, None)
                self._uid.pop(req.request_id, None)
            events.append(
                TokenEvent(
                    req.request_id, r.token, self._logprobs(req, r), r.finish_reason is not None
                )
            )
        return events

    def _logprobs(self, req: Request, response: Any) -> Logprobs | None:
        num_top = req.sampling_params.logprobs
        if num_top is None:
            return None
        return _logprobs_of(response.logprobs, response.token, num_top)

    def score(self, token_ids: list[int]) -> list[float]:
        return [lp.logprob for lp in self.prompt_logprobs(token_ids)]

    def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        """One forward pass of the whole sequence, without a cache (between steps)."""
        import mlx.core as mx  # noqa: PLC0415

        self._bind()
        if not 2 <= len(token_ids) <= self.max_model_len:
            raise RequestError(
                f"score needs 2 to {self.max_model_len} tokens, got {len(token_ids)}"
            )
        if not 0 <= num_top <= 20:
            raise RequestError(f"logprobs must be between 0 and 20, got {num_top}")
        ids = check_token_ids(token_ids, self.model_config.vocab_size, "prompt", "token")
        logits = self.model(mx.array([ids[:-1]]))[0].astype(mx.float32)  # [n-1, V]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return [_logprobs_of(logprobs[i], tok, num_top) for i, tok in enumerate(ids[1:])]

    def stats(self):
        s = super().stats()
        s.num_waiting = len(self._gen._unprocessed_sequences)  # noqa: SLF001 - no public count
        s.num_running = len(self._uid) - s.num_waiting
        return s


def _logprobs_of(row: Any, token: int, num_top: int) -> Logprobs:
    """The sampled token's logprob, its rank (1 = likeliest) and the top ``num_top``."""
    import mlx.core as mx  # noqa: PLC0415

    row = row.astype(mx.float32)  # [V]
    chosen = row[token].item()
    rank = int((row > chosen).sum().item()) + 1
    top_ids: list[int] = []
    top_values: list[float] = []
    if num_top:
        order = mx.argsort(-row)[:num_top]
        top_ids = order.tolist()
        top_values = row[order].tolist()
    return Logprobs(token, chosen, rank, top_ids, top_values)
