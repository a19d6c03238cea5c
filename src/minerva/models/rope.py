"""Rotary position embeddings: inverse frequencies for each `rope_type` and a cos/sin table
(applying them is a kernel: ops/torch_ops.apply_rope and its fast twins).

Frequencies follow the Hugging Face definitions (default, linear, dynamic NTK, yarn, llama3) so
logits match transformers. The table is computed once for every position up to max_positions.
"""

from __future__ import annotations

import math

import torch


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (base**exponents)


def _llama3_inv_freq(base: float, dim: int, scaling: dict, max_pos: int) -> torch.Tensor:
    inv_freq = _default_inv_freq(base, dim)
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings") or max_pos
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(
    base: float, dim: int, scaling: dict, max_pos: int
) -> tuple[torch.Tensor, float]:
    orig = scaling.get("original_max_position_embeddings") or max_pos
    factor = scaling.get("factor") or max_pos / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = scaling.get("attention_factor")
    if attn is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation = 1 - ramp  # 1 keeps the original frequency, 0 interpolates
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (
        1.0 / pos_freqs
    ) * extrapolation
    return inv_freq, float(attn)


def rope_cos_sin(
    head_dim: int,
    rope_theta: float,
    rope_scaling: dict | None,
    max_position_embeddings: int,
    max_positions: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape [max_positions, head_dim] in float32."""
    scaling = dict(rope_scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    positions = torch.arange(max_positions, dtype=torch.float32)
    attn_scale = 1.0
    if rope_type == "default":
        inv_freq = _default_inv_freq(rope_theta, head_dim)
    elif rope_type == "linear":
        inv_freq = _default_inv_freq(rope_theta, head_dim) / scaling["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(rope_theta, head_dim, scaling, max_position_embeddings)
    elif rope_type == "yarn":
        inv_freq, attn_scale = _yarn_inv_freq(
            rope_theta, head_dim, scaling, max_position_embeddings
        )
    elif rope_type == "dynamic":
        return _dynamic_cos_sin(
            head_dim, rope_theta, scaling["factor"], max_position_embeddings, positions
        )
    else:
        raise ValueError(f"rope_type {rope_type!r} is not supported")
    freqs = torch.outer(positions, inv_freq)  # [max_positions, head_dim // 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attn_scale, emb.sin() * attn_scale


def _dynamic_cos_sin(
    head_dim: int, base: float, factor: float, max_pos: int, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # Dynamic NTK: positions inside the trained context use the original frequencies (as
    # transformers does); past it, position p uses the base rescaled for a length of p + 1.
    n = positions.unsqueeze(1)  # [P, 1]
    lengths = torch.clamp(n + 1, min=max_pos)
    bases = base * ((factor * lengths / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = torch.where(n < max_pos, _default_inv_freq(base, head_dim), 1.0 / bases**exponents)
    emb = (n * inv_freq).repeat(1, 2)
    return emb.cos(), emb.sin()


def fold_sin(sin: torch.Tensor) -> torch.Tensor:
    """[..., D] sin table -> [-sin[:D/2], sin[D/2:]] for ops.torch_ops.apply_rope."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
