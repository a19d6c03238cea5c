"""SamplingMetadata: one step's sampling parameters as per-row device tensors.

Built once per step on the host (Python loops over rows are fine here) and moved to the device
with a few non-blocking copies, so the sampler itself never goes back to the host. A field is
None when no row needs it; the sampler reads those Nones as fast paths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from minerva.platform import copy_to_device as _to_device
from minerva.sampling_params import SamplingParams

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
# Odd multipliers below 2**31: a 32-bit value times one stays under 2**63, so int64 tensors
# never overflow on any backend.
_MULS = (0x5BD1E995, 0x27D4EB2F)
_KEY_SALTS = (0x165667B1, 0x3C6EF372)
IntOrTensor = TypeVar("IntOrTensor", int, torch.Tensor)


@dataclass
class SamplingMetadata:
    """Per-row sampling parameters for one step (one row per request that samples)."""

    temperature: torch.Tensor  # [n] float32; 1.0 on greedy rows so division is safe
    greedy_mask: torch.Tensor | None  # [n] bool; None when all rows are greedy or all random
    all_greedy: bool
    all_random: bool
    noise_keys: torch.Tensor  # [n, 2] int64: noise_keys(seed, token_index) of each row
    top_k: torch.Tensor | None  # [n] int64; vocab_size where disabled
    top_p: torch.Tensor | None  # [n] float32; 1.0 where disabled
    min_p: torch.Tensor | None  # [n] float32; 0.0 where disabled
    repetition_penalties: torch.Tensor | None  # [n] float32
    frequency_penalties: torch.Tensor | None  # [n] float32
    presence_penalties: torch.Tensor | None  # [n] float32
    prompt_mask: torch.Tensor | None = field(repr=False)  # [n, vocab] bool: in the prompt
    output_token_counts: torch.Tensor | None = field(repr=False)  # [n, vocab] int32, output
    logit_bias_indices: torch.Tensor | None  # [m] int64: row * vocab_size + token_id
    logit_bias_values: torch.Tensor | None  # [m] float32
    min_tokens_indices: torch.Tensor | None  # [m] int64: row * vocab_size + banned token_id
    max_num_logprobs: int | None  # most top alternatives any row asked for; None: no logprobs
    vocab_size: int
    token_bitmask: torch.Tensor | None = field(default=None, repr=False)
    """[n, ceil(vocab / 32)] int32 on the device: bit t % 32 of word t // 32 set = token t
    allowed (grammars, token healing); None when no row is constrained."""

    @property
    def num_seqs(self) -> int:
        return self.temperature.shape[0]

    @property
    def no_top_k(self) -> bool:
        return self.top_k is None

    @property
    def no_top_p(self) -> bool:
        return self.top_p is None

    @property
    def no_min_p(self) -> bool:
        return self.min_p is None

    @property
    def no_penalties(self) -> bool:
        return self.repetition_penalties is None and self.frequency_penalties is None

    @property
    def no_logit_bias(self) -> bool:
        return self.logit_bias_indices is None

    @property
    def no_min_tokens(self) -> bool:
        return self.min_tokens_indices is None

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        seeds: list[int],
        token_indices: list[int],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        vocab_size: int,
        device: torch.device,
        eos_token_ids: list[frozenset[int]] | None = None,
    ) -> SamplingMetadata:
        """Gather the rows' parameters into tensors on ``device``.

        ``token_indices[i]`` is the number of output tokens row i already has. Token ids
        (prompt, output) are only read for rows with penalties; ``eos_token_ids`` only for
        rows still under ``min_tokens``. Raises ValueError for a logit_bias id outside the vocab.
        """
        n = len(params)
        eos = eos_token_ids if eos_token_ids is not None else [frozenset()] * n
        lists = (seeds, token_indices, prompt_token_ids, output_token_ids, eos)
        if any(len(x) != n for x in lists):
            raise ValueError("SamplingMetadata.build: every per-row list needs one entry per row")
        device = torch.device(device)
        if all(p.plain_greedy for p in params):
            return cls.plain_greedy_rows(n, vocab_size, device)
        greedy = [p.greedy for p in params]
        all_greedy, all_random = all(greedy), not any(greedy)
        floats, ints = [], []
        for p, g, seed, index in zip(params, greedy, seeds, token_indices, strict=True):
            # Sampling knobs are neutral on greedy rows, so they never force the slow path.
            k = vocab_size if g or not 0 < p.top_k < vocab_size else p.top_k
            temperature, top_p, min_p = (1.0, 1.0, 0.0) if g else (p.temperature, p.top_p, p.min_p)
            penalties = [p.repetition_penalty, p.frequency_penalty, p.presence_penalty]
            floats.append([temperature, top_p, min_p, *penalties])
            ints.append([k, 0, 0] if g else [k, *noise_keys(seed, index)])  # greedy: no noise
        # Two host-to-device copies carry every per-row scalar (noise keys included).
        # numpy builds the arrays from the row lists faster than torch.tensor
        # (benchmarks/results/host_costs_cpu.json).
        f = _to_device(torch.from_numpy(np.array(floats, dtype=np.float32).reshape(n, 6)), device)
        i = _to_device(torch.from_numpy(np.array(ints, dtype=np.int64).reshape(n, 3)), device)
        use_top_k = any(row[0] != vocab_size for row in ints)
        use_top_p = any(row[1] < 1.0 for row in floats)
        use_min_p = any(row[2] > 0.0 for row in floats)
        use_rep = any(p.repetition_penalty != 1.0 for p in params)
        use_freq = any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params)

        prompt_mask = output_counts = None
        if use_rep:
            used = [
                ids if p.repetition_penalty != 1.0 else []
                for p, ids in zip(params, prompt_token_ids, strict=True)
            ]
            prompt_mask = _token_counts(used, vocab_size, device) > 0
        if use_rep or use_freq:
            used = [
                ids if p.has_penalties else []
                for p, ids in zip(params, output_token_ids, strict=True)
            ]
            output_counts = _token_counts(used, vocab_size, device)
        bias_idx, bias_val = _logit_bias(params, vocab_size)
        banned = _min_tokens_indices(params, token_indices, eos, vocab_size)
        wanted = [p.logprobs for p in params if p.logprobs is not None]
        mixed = not (all_greedy or all_random)
        return cls(
            temperature=f[:, 0],
            greedy_mask=_to_device(torch.tensor(greedy), device) if mixed else None,
            all_greedy=all_greedy,
            all_random=all_random,
            noise_keys=i[:, 1:],
            top_k=i[:, 0] if use_top_k else None,
            top_p=f[:, 1] if use_top_p else None,
            min_p=f[:, 2] if use_min_p else None,
            repetition_penalties=f[:, 3] if use_rep else None,
            frequency_penalties=f[:, 4] if use_freq else None,
            presence_penalties=f[:, 5] if use_freq else None,
            prompt_mask=prompt_mask,
            output_token_counts=output_counts,
            logit_bias_indices=_maybe_tensor(bias_idx, torch.int64, device),
            logit_bias_values=_maybe_tensor(bias_val, torch.float32, device),
            min_tokens_indices=_maybe_tensor(banned, torch.int64, device),
            max_num_logprobs=max(wanted) if wanted else None,
            vocab_size=vocab_size,
        )

    @classmethod
    def plain_greedy_rows(cls, n: int, vocab_size: int, device: torch.device) -> SamplingMetadata:
        """Every row takes the argmax of its raw logits: no per-row work, no copies."""
        temperature, keys = _neutral_rows(n, device)
        return cls(
            temperature=temperature,
            greedy_mask=None,
            all_greedy=True,
            all_random=False,
            noise_keys=keys,
            top_k=None,
            top_p=None,
            min_p=None,
            repetition_penalties=None,
            frequency_penalties=None,
            presence_penalties=None,
            prompt_mask=None,
            output_token_counts=None,
            logit_bias_indices=None,
            logit_bias_values=None,
            min_tokens_indices=None,
            max_num_logprobs=None,
            vocab_size=vocab_size,
        )


@functools.lru_cache(maxsize=64)
def _neutral_rows(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Read by nothing on the all-greedy path (the sampler never changes its metadata).
    return torch.ones(n, device=device), torch.zeros(n, 2, dtype=torch.int64, device=device)


def mix32(x: IntOrTensor) -> IntOrTensor:
    """Bijective 32-bit integer hash (xorshift-multiply) of ints or int64 tensors < 2**32.

    Works on Python ints (host) and in place on int64 tensors (device) with the same result.
    """
    x ^= x >> 16
    x *= _MULS[0]
    x &= _M32
    x ^= x >> 15
    x *= _MULS[1]
    x &= _M32
    x ^= x >> 16
    return x


def noise_keys(seed: int, token_index: int) -> tuple[int, int]:
    """Two 32-bit keys naming the sampling noise of one (seed, token_index); host-side.

    Any Python int seed counts by its low 64 bits. The sampler hashes each vocab position
    with these keys, so the noise depends on nothing else (not the row, not the batch).
    """
    seed_key = _seed_key(seed & _M64)
    key2 = mix32(mix32(seed_key ^ (token_index & _M32)) ^ _KEY_SALTS[1])
    return mix32(key2 ^ seed_key), key2


@functools.lru_cache(maxsize=256)
def _seed_key(seed: int) -> int:
    # A request keeps its seed for every token: hash it once, not once per step. 256 entries
    # hold the seeds of the requests in flight; 4,096 took ~0.5 MB that a soak of seeded
    # requests saw grow for thousands of requests (docs/reliability.md).
    return mix32(mix32((seed & _M32) ^ _KEY_SALTS[0]) ^ (seed >> 32))


def _maybe_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    return _to_device(torch.tensor(values, dtype=dtype), device) if values else None


def _token_counts(
    rows: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """[n, vocab] int32 occurrence counts, by scatter_add over a padded id matrix on the device."""
    max_len = max((len(r) for r in rows), default=0)
    host = np.full((len(rows), max_len), vocab_size, dtype=np.int64)  # pad → extra column
    for row, ids in enumerate(rows):
        host[row, : len(ids)] = ids  # numpy: faster than torch.tensor (host_costs_cpu.json)
    padded = _to_device(torch.from_numpy(host), device).clamp_(max=vocab_size)
    counts = torch.zeros(len(rows), vocab_size + 1, dtype=torch.int32, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.int32))
    return counts[:, :vocab_size]


def _logit_bias(params: list[SamplingParams], vocab_size: int) -> tuple[list[int], list[float]]:
    indices: list[int] = []
    values: list[float] = []
    for row, p in enumerate(params):
        for token_id, bias in (p.logit_bias or {}).items():
            token_id = int(token_id)  # JSON object keys arrive as strings
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"logit_bias token id {token_id} is outside the vocabulary [0, {vocab_size}); "
                    "use ids from this model's tokenizer"
                )
            indices.append(row * vocab_size + token_id)
            values.append(float(bias))
    return indices, values


def _min_tokens_indices(
    params: list[SamplingParams],
    token_indices: list[int],
    eos_token_ids: list[frozenset[int]],
    vocab_size: int,
) -> list[int]:
    """Flat indices of EOS and stop ids for rows that have not yet reached min_tokens."""
    indices: list[int] = []
    for row, (p, index, eos) in enumerate(zip(params, token_indices, eos_token_ids, strict=True)):
        if index < p.min_tokens:
            banned = set(eos) | set(p.stop_token_ids or ())
            indices.extend(row * vocab_size + t for t in sorted(banned) if 0 <= t < vocab_size)
    return indices
