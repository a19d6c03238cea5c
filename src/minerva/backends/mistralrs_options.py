"""Minerva's configuration as mistral.rs ``Runner`` options, and what mistral.rs cannot do.

The seeds' names arrive through config_aliases.py (MISTRALRS_ISQ -> quantization,
MISTRALRS_PAGED_ATTN -> mistralrs_paged_attn, MISTRALRS_PAGED_ATTN_BLOCK_SIZE -> block_size,
MISTRALRS_PREFIX_CACHE_N -> enable_prefix_caching, MISTRALRS_SPECULATIVE_* -> draft_model /
num_speculative_tokens, MISTRALRS_DEVICE -> device); this module maps those fields onto the
package's arguments. Plain data only: the package itself is imported by backends/mistralrs.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from minerva.errors import ConfigError
from minerva.quant_names import OWN_FORMATS

if TYPE_CHECKING:
    from minerva.config import EngineConfig

ISQ_TYPES: dict[str, str] = {
    "q2_k": "Q2K", "q3_k": "Q3K", "q4_k": "Q4K", "q5_k": "Q5K", "q6_k": "Q6K",
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0", "q8_1": "Q8_1",
}  # fmt: skip
"""Minerva's quantization names -> mistral.rs in-situ quantization (ISQ) types."""

DTYPES = {"auto": "Auto", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
"""Minerva's dtype -> mistralrs.ModelDType member."""


@dataclass
class RunnerOptions:
    """Keyword arguments for ``mistralrs.Runner`` (besides ``which``) and the Which fields."""

    dtype: str = "Auto"
    kwargs: dict[str, Any] = field(default_factory=dict)


def runner_options(config: EngineConfig, is_gguf: bool, device: str) -> RunnerOptions:
    """The Runner's options for ``config`` on ``device``; ConfigError for what mistral.rs
    cannot do."""
    check_speculative(config)
    kwargs: dict[str, Any] = {
        "max_seqs": config.scheduler.max_num_seqs,
        "prefix_cache_n": prefix_cache_n(config),
        "token_source": "none",  # local files only: never reach for a Hugging Face token
    }
    if device != "cpu":  # its CPU generator cannot be seeded ("cannot seed the CPU rng")
        kwargs["seed"] = config.model.seed
    isq = isq_type(config.model.quantization, is_gguf)
    if isq is not None:
        kwargs["in_situ_quant"] = isq
    mode = config.mistralrs.mistralrs_paged_attn
    if mode == "on" and device == "cpu":
        raise ConfigError(
            "mistralrs_paged_attn=on (MISTRALRS_PAGED_ATTN=true): mistral.rs has PagedAttention "
            "on CUDA and Metal only, and this runs on the CPU: set it to auto or off"
        )
    if mode == "on":
        kwargs["paged_attn"] = True
        kwargs["pa_blk_size"] = config.cache.block_size
    elif mode == "off":
        kwargs["no_paged_attn"] = True
    return RunnerOptions(dtype=DTYPES[config.model.dtype], kwargs=kwargs)


def prefix_cache_n(config: EngineConfig) -> int:
    """Sequences mistral.rs's prefix cache keeps: 0 when prefix caching is off."""
    return config.mistralrs.mistralrs_prefix_cache_n if config.cache.enable_prefix_caching else 0


def isq_type(quantization: str | None, is_gguf: bool) -> str | None:
    """The ISQ type for ``[model] quantization`` (MISTRALRS_ISQ), or None for none."""
    if quantization is None:
        return None
    if quantization in OWN_FORMATS:
        raise ConfigError(
            f"quantization={quantization} is Minerva's own engine's format (CUDA): with the mistralrs "
            f"backend choose one of {', '.join(ISQ_TYPES)} (MISTRALRS_ISQ: Q2K ... Q8_1)"
        )
    if quantization not in ISQ_TYPES:
        raise ConfigError(
            f"quantization={quantization} is a llama.cpp mix, which mistral.rs's in-situ "
            f"quantization does not have: choose one of {', '.join(ISQ_TYPES)} "
            "(MISTRALRS_ISQ: Q2K ... Q8_1), e.g. q4_k for q4_k_m"
        )
    return ISQ_TYPES[quantization]


def check_speculative(config: EngineConfig) -> None:
    """Speculative decoding through mistral.rs: every reason it cannot run, in one error."""
    spec = config.speculative
    if spec.num_speculative_tokens == 0 and spec.draft_model is None:
        return
    problems = []
    if config.mistralrs.mistralrs_paged_attn == "on":
        problems.append(
            "mistral.rs's speculative decoding does not combine with PagedAttention "
            "(set MISTRALRS_PAGED_ATTN=false / --mistralrs-paged-attn off)"
        )
    if prefix_cache_n(config) > 0:
        problems.append(
            "mistral.rs's speculative decoding does not combine with prefix caching "
            "(set MISTRALRS_PREFIX_CACHE_N=0 / --no-enable-prefix-caching)"
        )
    problems.append(
        "the mistralrs Python package (0.9) speculates only with a model's own multi-token "
        "prediction heads, not with a separate draft model"
        + (f" ({spec.draft_model})" if spec.draft_model else "")
        + " or n-grams"
    )
    raise ConfigError(
        "speculative decoding (MISTRALRS_SPECULATIVE_DRAFT_MODEL / _GAMMA, draft_model, "
        "num_speculative_tokens) cannot run on the mistralrs backend: "
        + "; ".join(problems)
        + ". Use --backend minerva for speculative decoding, or drop draft_model and set "
        "num_speculative_tokens=0"
    )
