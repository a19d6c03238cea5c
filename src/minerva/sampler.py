"""Sampler: logits → token ids on the device, vectorized over rows, with no host sync.

Per row (all rows at once): logit_bias → min_tokens mask → repetition penalty →
frequency/presence penalties → greedy rows take argmax → temperature → top_k → top_p →
min_p → exponential race ``argmax(probs / q)``, q ~ Exp(1).

The noise q is counter-based: an integer hash of (seed, token_index, vocab position). The
(seed, token_index) part is hashed into two keys on the host (``noise_keys``, in the metadata);
positions are hashed with them on the device in int64 ops. So a seeded request draws the same
token alone or at any row of any batch.

Logprobs are "raw": log_softmax of the logits as the model produced them, before bias,
penalties and temperature (OpenAI's and vLLM's default), so they describe the model, not the
sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minerva.sampling_metadata import SamplingMetadata, mix32

_ONE_BELOW_1 = 1.0 - 2.0**-24  # largest float32 below 1


@dataclass
class SamplerOutput:
    """Sampled ids (on device) and, when asked for, raw logprobs of sampled + top tokens."""

    token_ids: torch.Tensor  # [n] int64
    logprobs: torch.Tensor | None = None  # [n, 1 + k] float32: sampled token first, then top-k
    logprob_token_ids: torch.Tensor | None = None  # [n, 1 + k] int64
    ranks: torch.Tensor | None = None  # [n] int64: 1 = the model's most likely token


class Sampler:
    """Turns a batch of logits into tokens; see the module docstring for the pipeline."""

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """logits: [num_seqs, vocab_size] (any float dtype); never modified."""
        if logits.shape[-1] != meta.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} columns, metadata {meta.vocab_size}")
        raw_logprobs = None
        if meta.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)  # [n, V]

        logits = process_logits(logits, meta)
        if meta.all_greedy:
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = _sample_random(logits, meta)
            if meta.greedy_mask is not None:
                token_ids = torch.where(meta.greedy_mask, logits.argmax(dim=-1), token_ids)

        if raw_logprobs is None:
            return SamplerOutput(token_ids=token_ids)
        return compute_logprobs(raw_logprobs, token_ids, meta.max_num_logprobs)


def process_logits(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """logit_bias, min_tokens, penalties, token bitmask → fp32 [n, V]; the input is never
    changed."""
    if meta.no_logit_bias and meta.no_min_tokens and meta.no_penalties:
        return apply_token_bitmask(logits.float(), meta.token_bitmask)
    logits = logits.to(torch.float32, copy=True).contiguous()
    logits = apply_logit_bias(logits, meta)
    logits = apply_min_tokens(logits, meta)
    return apply_token_bitmask(apply_penalties(logits, meta), meta.token_bitmask)


_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor | None) -> torch.Tensor:
    """Sets the tokens a row's bitmask [n, ceil(V / 32)] int32 leaves out to -inf (new tensor).

    A row that allows nothing (cannot happen with a consistent grammar) is left unmasked rather
    than turned into NaNs."""
    if bitmask is None:
        return logits
    shifts = _BIT_SHIFTS.get(logits.device)
    if shifts is None:
        shifts = _BIT_SHIFTS[logits.device] = torch.arange(32, device=logits.device)
    bits = (bitmask.to(torch.int64)[:, :, None] >> shifts) & 1  # [n, words, 32]
    allowed = bits.flatten(1)[:, : logits.shape[-1]].bool()  # [n, V]
    allowed |= ~allowed.any(dim=-1, keepdim=True)
    return logits.masked_fill(~allowed, float("-inf"))


def apply_logit_bias(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Adds each row's logit_bias, in place on a contiguous fp32 [n, V] tensor."""
    if meta.logit_bias_indices is not None:
        logits.view(-1).index_add_(0, meta.logit_bias_indices, meta.logit_bias_values)
    return logits


def apply_min_tokens(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Sets EOS / stop ids to -inf on rows still under min_tokens, in place."""
    if meta.min_tokens_indices is not None:
        logits.view(-1).index_fill_(0, meta.min_tokens_indices, float("-inf"))
    return logits


def apply_penalties(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Repetition (HF: prompt + output) then frequency/presence (OpenAI: output only)."""
    counts = meta.output_token_counts  # [n, V]
    if meta.repetition_penalties is not None:
        seen = meta.prompt_mask | (counts > 0)
        penalty = meta.repetition_penalties[:, None]
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalized, logits)
    if meta.frequency_penalties is not None:
        logits = logits - meta.frequency_penalties[:, None] * counts
        logits = logits - meta.presence_penalties[:, None] * (counts > 0)
    return logits


def apply_top_k_top_p_min_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    min_p: torch.Tensor | None,
) -> torch.Tensor:
    """Masks dropped tokens to -inf (new tensor); logits are already temperature-scaled.

    top_k [n] int keeps the k best ranks; top_p [n] keeps the smallest prefix (by probability)
    whose mass reaches top_p, the top token always; min_p [n] drops tokens whose probability
    is below min_p times the top token's. Applied in that order, each on what the last kept.
    """
    if top_k is None and top_p is None:
        if min_p is None:
            return logits
        probs = logits.softmax(dim=-1)  # [n, V]
        too_small = probs < min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        return logits.masked_fill(too_small, float("-inf"))

    # One descending sort serves top_k, top_p and min_p; masks are scattered back at the end.
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)  # [n, V]
    if top_k is not None:
        ranks = torch.arange(logits.shape[-1], device=logits.device)  # [V]
        sorted_logits.masked_fill_(ranks[None, :] >= top_k[:, None], float("-inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))  # exclusive
        sorted_logits.masked_fill_(mass_before >= top_p[:, None], float("-inf"))
    if min_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        sorted_logits.masked_fill_(probs < min_p[:, None] * probs[:, :1], float("-inf"))
    return torch.empty_like(logits).scatter_(-1, sorted_ids, sorted_logits)


def _sample_random(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Exponential race on the masked, tempered distribution: argmax(probs / q)."""
    logits = logits / meta.temperature[:, None]
    logits = apply_top_k_top_p_min_p(logits, meta.top_k, meta.top_p, meta.min_p)
    probs = logits.softmax(dim=-1)  # [n, V] fp32; masked tokens exactly 0
    q = exponential_noise(meta.noise_keys, logits.shape[-1])
    return probs.div_(q).argmax(dim=-1)


def uniform_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, vocab_size] float32 uniforms in (0, 1), a function of (keys, position) only.

    keys: [n, 2] int64 from ``noise_keys(seed, token_index)``. Each position is hashed with
    the first key, then again with the second, so rows never share a (permuted) stream.
    """
    positions = torch.arange(vocab_size, dtype=torch.int64, device=keys.device)  # [V]
    x = mix32(positions[None, :] ^ keys[:, :1])  # [n, V]
    x ^= keys[:, 1:]
    x = mix32(x)
    # +0.5 keeps u > 0; the clamp keeps u < 1 where float32 rounding reaches 2**32.
    return ((x.to(torch.float32) + 0.5) * 2.0**-32).clamp_(max=_ONE_BELOW_1)


def exponential_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, vocab_size] float32 Exp(1) samples, strictly positive (q = -log(1 - u))."""
    return torch.log1p(-uniform_noise(keys, vocab_size)).neg_()


def compute_logprobs(
    raw_logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: int
) -> SamplerOutput:
    """Sampled token's logprob and rank, then the num_logprobs best (sorted descending)."""
    sampled = raw_logprobs.gather(-1, token_ids[:, None])  # [n, 1]
    ranks = (raw_logprobs > sampled).sum(dim=-1) + 1  # [n]
    top_logprobs, top_ids = raw_logprobs.topk(num_logprobs, dim=-1)  # [n, k]
    return SamplerOutput(
        token_ids=token_ids,
        logprobs=torch.cat([sampled, top_logprobs], dim=-1),
        logprob_token_ids=torch.cat([token_ids[:, None], top_ids], dim=-1),
        ranks=ranks,
    )
