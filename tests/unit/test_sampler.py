"""Sampler: masks, penalties, greedy, seeded batch-invariant sampling, logprobs, no host sync."""

from __future__ import annotations

import math

import pytest
import torch

from minerva.sampler import (
    Sampler,
    apply_top_k_top_p_min_p,
    exponential_noise,
    process_logits,
    uniform_noise,
)
from minerva.sampling_metadata import SamplingMetadata, mix32, noise_keys
from minerva.sampling_params import SamplingParams as SP

INF = float("inf")
CPU = torch.device("cpu")


def build(
    params, vocab, seeds=None, indices=None, prompts=None, outputs=None, eos=None, device=CPU
):
    n = len(params)
    return SamplingMetadata.build(
        params,
        seeds if seeds is not None else list(range(n)),
        indices if indices is not None else [0] * n,
        prompts if prompts is not None else [[] for _ in range(n)],
        outputs if outputs is not None else [[] for _ in range(n)],
        vocab,
        device,
        eos,
    )


def keys(seeds, indices) -> torch.Tensor:
    """[n, 2] noise keys, as SamplingMetadata.build makes them."""
    return torch.tensor([noise_keys(s, i) for s, i in zip(seeds, indices, strict=True)])


def kept(masked: torch.Tensor) -> list[set[int]]:
    """Token ids with nonzero probability after masking, per row."""
    probs = masked.softmax(-1)
    assert torch.all((probs == 0) == torch.isinf(masked)), "masked tokens must have p == 0"
    return [set(torch.nonzero(row > 0).flatten().tolist()) for row in probs]


def sample_many(params: SP, logits_row: torch.Tensor, num: int, index: int = 0) -> torch.Tensor:
    """One row per seed: `num` draws of the same request at the same token index."""
    meta = build([params] * num, logits_row.numel(), seeds=list(range(num)), indices=[index] * num)
    return Sampler()(logits_row.expand(num, -1).contiguous(), meta).token_ids


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token of probability 0"
    return float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())


# ---- masks -------------------------------------------------------------------------------


def test_top_k_per_row_keeps_k_best_ranks():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]] * 3)
    out = apply_top_k_top_p_min_p(logits, torch.tensor([2, 3, 5]), None, None)
    assert kept(out) == [{0, 2}, {0, 1, 2}, {0, 1, 2, 3, 4}]
    assert torch.equal(out[2], logits[2])  # k = vocab disables; kept logits are unchanged
    assert torch.equal(out[0, [0, 2]], logits[0, [0, 2]])


def test_top_p_boundary_with_exact_probabilities():
    # Four equal logits: p = 0.25 each, exactly, so the cumulative masses are exact too.
    logits = torch.zeros(5, 4)
    top_p = torch.tensor([0.5, 0.5 + 1e-6, 0.25, 1e-6, 1.0])
    out = apply_top_k_top_p_min_p(logits, None, top_p, None)
    # Mass 0.5 is reached by 2 tokens exactly; a hair more needs a third; the top one always.
    assert [len(s) for s in kept(out)] == [2, 3, 1, 1, 4]


def test_top_p_boundary_on_distinct_probabilities():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.0, 0.0]])  # order: 1, 3, 0, 4, 2
    probs = logits.sort(dim=-1, descending=True).values.softmax(-1)[0]
    mass_two = probs.cumsum(-1)[1]  # float32, exactly as the mask accumulates it
    above = torch.nextafter(mass_two, torch.tensor(2.0))  # the next float32 up
    rows = logits.expand(4, -1)
    top_p = torch.stack([mass_two, above, torch.tensor(1e-3), probs[0]])
    assert kept(apply_top_k_top_p_min_p(rows, None, top_p, None)) == [{1, 3}, {1, 3, 0}, {1}, {1}]


def test_min_p_relative_to_top_token():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    logits = torch.cat([probs.log(), torch.tensor([[1.0, 1.0, 0.5, 0.0]])])
    out = apply_top_k_top_p_min_p(logits, None, None, torch.tensor([0.6, 1.0]))
    # 0.6 * 0.4 = 0.24 keeps 0.4, 0.3; min_p = 1 keeps exactly the tied top tokens.
    assert kept(out) == [{0, 1}, {0, 1}]


def test_top_k_top_p_min_p_combined():
    logits = torch.tensor([[4.0, 3.0, 2.5, 2.0, 1.0, 0.0]])
    # top_k=4 → {0,1,2,3}; renormalized probs ≈ .53 .20 .12 .07 → top_p .8 → {0,1,2}
    # min_p .3: .12 < .3 * .53 → {0,1}
    cases = {(4, 1.0, 0.0): {0, 1, 2, 3}, (4, 0.8, 0.0): {0, 1, 2}, (4, 0.8, 0.3): {0, 1}}
    for (k, p, m), expected in cases.items():
        out = apply_top_k_top_p_min_p(
            logits, torch.tensor([k]), torch.tensor([p]), torch.tensor([m])
        )
        assert kept(out) == [expected], (k, p, m)
    # min_p on the sorted path equals min_p on the unsorted (no top_k/top_p) path
    rows = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    min_p = torch.linspace(0.0, 0.9, 6)
    sorted_path = apply_top_k_top_p_min_p(rows, torch.full((6,), 50), None, min_p)
    assert torch.equal(sorted_path, apply_top_k_top_p_min_p(rows, None, None, min_p))


def test_sampling_only_hits_allowed_tokens():
    logits = torch.tensor([4.0, 3.0, 2.5, 2.0, 1.0, 0.0, 3.5, -1.0])
    params = SP(temperature=1.0, top_k=5, top_p=0.9, min_p=0.1)
    allowed = kept(
        apply_top_k_top_p_min_p(
            logits[None], torch.tensor([5]), torch.tensor([0.9]), torch.tensor([0.1])
        )
    )[0]
    drawn = set(sample_many(params, logits, 3000).tolist())
    assert drawn == allowed and len(allowed) > 1


def test_min_p_applies_after_temperature():
    logits = torch.tensor([0.0, -1.0, -2.0, -3.0])  # ratios e^-1=.37, e^-2=.14 at T=1
    assert set(sample_many(SP(temperature=1.0, min_p=0.3), logits, 2000).tolist()) == {0, 1}
    # At T=2 the ratios are .61, .37, .22: token 2 passes min_p = 0.3.
    assert set(sample_many(SP(temperature=2.0, min_p=0.3), logits, 2000).tolist()) == {0, 1, 2}


# ---- greedy and fast paths ------------------------------------------------------------------


def test_all_greedy_is_argmax_without_noise(monkeypatch):
    import minerva.sampler as sampler_module

    def no_noise(*args):
        raise AssertionError("greedy batch must not draw noise")

    monkeypatch.setattr(sampler_module, "exponential_noise", no_noise)
    logits = torch.randn(7, 33, generator=torch.Generator().manual_seed(1))
    meta = build([SP(temperature=0.0)] * 6 + [SP(temperature=0.7, top_k=1)], 33)
    assert meta.all_greedy and meta.no_penalties and meta.no_top_k and meta.no_top_p
    assert meta.no_min_p and meta.no_logit_bias and meta.max_num_logprobs is None
    out = Sampler()(logits, meta)
    assert torch.equal(out.token_ids, logits.argmax(-1)) and out.logprobs is None


def test_mixed_batch_greedy_rows_stay_greedy():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 40, generator=gen) * 0.1  # flat: random rows rarely pick argmax
    params = [SP(temperature=t) for t in (0.0, 1.5, 1e-6, 1.5, 0.0, 1.5)]
    meta = build(params, 40, seeds=[9] * 6, indices=[0, 0, 1, 1, 2, 2])
    assert not meta.all_greedy and not meta.all_random
    assert torch.equal(meta.temperature, torch.tensor([1.0, 1.5, 1.0, 1.5, 1.0, 1.5]))
    tokens = Sampler()(logits, meta).token_ids
    greedy_rows = [0, 2, 4]
    assert torch.equal(tokens[greedy_rows], logits[greedy_rows].argmax(-1))
    random_rows = [1, 3, 5]
    assert not torch.equal(tokens[random_rows], logits[random_rows].argmax(-1))


def test_min_p_only_batch_skips_the_sort(monkeypatch):
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(3))
    meta = build([SP(min_p=0.2)] * 4, 30)
    assert meta.no_top_k and meta.no_top_p and not meta.no_min_p

    def no_sort(*args, **kwargs):
        raise AssertionError("sort must be skipped without top_k/top_p")

    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    assert Sampler()(logits, meta).token_ids.shape == (4,)


# ---- penalties -----------------------------------------------------------------------------

LOGITS = [2.0, -1.0, 0.5, 3.0, -2.0]


def penalized(params: SP, prompt=(0, 1), output=(1, 3, 3), index=3, eos=frozenset()):
    meta = build(
        [params], 5, indices=[index], prompts=[list(prompt)], outputs=[list(output)], eos=[eos]
    )
    return process_logits(torch.tensor([LOGITS]), meta)[0].tolist()


def test_repetition_penalty_hf_semantics():
    # seen (prompt or output): 0, 1, 3. Positive divided, negative multiplied.
    assert penalized(SP(repetition_penalty=2.0)) == [1.0, -2.0, 0.5, 1.5, -2.0]


def test_frequency_and_presence_penalties_output_only():
    # output counts: token 1 once, token 3 twice; prompt-only token 0 is untouched.
    expected = [2.0, -1.0 - 0.5 - 0.25, 0.5, 3.0 - 1.0 - 0.25, -2.0]
    assert penalized(SP(frequency_penalty=0.5, presence_penalty=0.25)) == expected
    assert penalized(SP(frequency_penalty=-1.0)) == [2.0, 0.0, 0.5, 5.0, -2.0]


def test_logit_bias_then_penalties_in_order():
    params = SP(
        logit_bias={0: -4.0, 4: 10.0},
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
    )
    # bias first: token 0 → -2.0 (then seen, negative → ×2 = -4.0; penalty-first would give -3.0)
    expected = [-4.0, -2.0 - 0.75, 0.5, 1.5 - 1.25, 8.0]
    assert penalized(params) == expected
    meta = build([params, SP()], 5, prompts=[[0, 1], []], outputs=[[1, 3, 3], [4]])
    assert Sampler()(torch.tensor([LOGITS, LOGITS]), meta).token_ids.tolist() == [4, 3]
    assert meta.repetition_penalties.tolist() == [2.0, 1.0]  # second row neutral


def test_logit_bias_outside_vocab_is_refused():
    with pytest.raises(ValueError, match="logit_bias token id 9 .*vocabulary"):
        build([SP(logit_bias={9: 1.0})], 5)


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 1.0, 5.0, 0.5, 4.0]] * 2)  # eos 2 best, stop id 4 second
    params = SP(temperature=0.0, min_tokens=3, stop_token_ids=[4])
    picks = []
    for index in range(5):
        meta = build(
            [params, SP(temperature=0.0)], 5, indices=[index] * 2, eos=[frozenset({2})] * 2
        )
        out = process_logits(logits, meta)
        banned = index < 3
        assert (out[0, [2, 4]] == -INF).all().item() == banned
        assert torch.equal(out[1], logits[1])  # the other row is untouched
        picks.append(Sampler()(logits, meta).token_ids[0].item())
    assert picks == [1, 1, 1, 2, 2]


# ---- seeded sampling -----------------------------------------------------------------------


def test_seeded_token_ignores_batch_and_row():
    gen = torch.Generator().manual_seed(4)
    vocab = 64
    target = SP(temperature=0.8, top_p=0.95, top_k=40)
    others = [
        SP(temperature=0.0),
        SP(temperature=1.3, min_p=0.05),
        SP(repetition_penalty=1.3),
        SP(top_k=3),
    ]
    for index in range(6):
        row = torch.randn(vocab, generator=gen) * 2
        alone = Sampler()(
            row[None], build([target], vocab, seeds=[1234], indices=[index])
        ).token_ids
        batch_logits = torch.randn(5, vocab, generator=gen) * 2
        batch_logits[3] = row
        meta = build(
            others[:3] + [target] + others[3:],
            vocab,
            seeds=[7, 8, 9, 1234, 10],
            indices=[0, 5, 2, index, 9],
            prompts=[[], [], [1, 2], [], []],
        )
        assert Sampler()(batch_logits, meta).token_ids[3] == alone[0]


def test_noise_depends_only_on_seed_index_and_position():
    seeds, indices = [5, 6, 5, -3, 2**63 - 1], [0, 0, 1, 0, 7]
    noise = uniform_noise(keys(seeds, indices), 100)
    assert torch.equal(noise[2], uniform_noise(keys([5], [1]), 100)[0])  # row-independent
    assert torch.equal(uniform_noise(keys(seeds, indices), 37), noise[:, :37])  # width-independent
    for a in range(5):
        for b in range(a):
            assert not torch.equal(noise[a], noise[b])
    # Python seeds count by their low 64 bits; the metadata carries exactly these keys.
    assert noise_keys(2**64 + 5, 3) == noise_keys(5, 3)
    assert noise_keys(-1, 3) == noise_keys(2**64 - 1, 3)
    assert noise_keys(5 + 2**40, 3) != noise_keys(5, 3)  # the high half of the seed counts
    meta = build([SP(), SP(temperature=0.0)], 10, seeds=[2**64 + 5, 8], indices=[3, 4])
    assert meta.noise_keys.tolist() == [list(noise_keys(5, 3)), [0, 0]]  # greedy rows: no noise


def test_mix32_same_on_host_ints_and_tensors():
    values = [0, 1, 2**31, 2**32 - 1, 123456789]
    assert mix32(torch.tensor(values)).tolist() == [mix32(v) for v in values]
    assert len({mix32(v) for v in range(1000)}) == 1000 and all(
        0 <= mix32(v) < 2**32 for v in values
    )


def test_different_seeds_and_indices_give_different_tokens():
    flat = torch.zeros(64)
    by_seed = sample_many(SP(), flat, 200)
    assert len(set(by_seed.tolist())) > 50  # 200 uniform draws over 64 hit ~61 ids
    meta = build([SP()] * 200, 64, seeds=[42] * 200, indices=list(range(200)))
    by_index = Sampler()(flat.expand(200, -1).contiguous(), meta).token_ids
    assert len(set(by_index.tolist())) > 50


def test_seeded_samples_follow_softmax_over_temperature():
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0])
    tokens = sample_many(SP(temperature=0.7), logits, 6000, index=3)
    # 5 degrees of freedom: P(chi2 > 25) ≈ 1.4e-4
    assert chi_square(tokens, (logits / 0.7).softmax(-1)) < 25.0


def test_seeded_samples_follow_renormalized_top_k_top_p():
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 2.0, -3.0, 0.2])
    params = SP(temperature=1.2, top_k=6, top_p=0.85)
    masked = apply_top_k_top_p_min_p(
        (logits / 1.2)[None], torch.tensor([6]), torch.tensor([0.85]), None
    )
    probs = masked.softmax(-1)[0]
    tokens = sample_many(params, logits, 6000)
    dof = int((probs > 0).sum()) - 1
    assert chi_square(tokens, probs) < dof + 6 * math.sqrt(2 * dof)


def test_uniform_noise_statistics():
    n, vocab = 256, 4096
    u = uniform_noise(
        keys([7919 * i - 50 for i in range(n)], [i % 5 for i in range(n)]), vocab
    ).double()
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.0015  # 5 sigma for 1M samples
    counts = torch.histc(u, bins=256, min=0.0, max=1.0)
    expected = u.numel() / 256
    assert ((counts - expected) ** 2 / expected).sum().item() < 255 + 6 * math.sqrt(2 * 255)

    def corr(a, b):
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].abs().item()

    assert corr(u[:, 1:], u[:, :-1]) < 0.006  # neighbouring vocab positions
    assert corr(u[1:], u[:-1]) < 0.006  # neighbouring seeds
    seq = uniform_noise(keys([3] * n, range(n)), vocab).double()
    assert corr(seq[1:], seq[:-1]) < 0.006  # consecutive token indices of one request
    q = exponential_noise(keys(range(n), [0] * n), vocab)
    assert q.min() > 0 and abs(q.double().mean().item() - 1.0) < 0.005


def unmix32(y: int) -> int:
    """Inverse of mix32 (xorshifts undone, multiplies by their inverses mod 2**32)."""
    from minerva.sampling_metadata import _MULS

    y ^= y >> 16
    y = (y * pow(_MULS[1], -1, 2**32)) & 0xFFFFFFFF
    y ^= (y >> 15) ^ (y >> 30)
    y = (y * pow(_MULS[0], -1, 2**32)) & 0xFFFFFFFF
    return y ^ (y >> 16)


def test_noise_edges_stay_inside_open_interval():
    # Position 0 under key1 = 0 hashes to 0, so key2 picks the final hash: 0 and 2**32 - 1.
    assert all(unmix32(mix32(v)) == v for v in (0, 1, 2**32 - 1, 987654321))
    edges = torch.tensor([[0, 0], [0, unmix32(2**32 - 1)]])
    u = uniform_noise(edges, 4)[:, 0]
    assert 0.0 < u[0] < 1e-9 and 1.0 - 1e-7 < u[1] < 1.0
    q = exponential_noise(edges, 4)[:, 0]
    assert (q > 0).all() and torch.isfinite(q).all()


def test_mix32_avalanche():
    # Flipping any input bit flips every output bit with probability 1/2 (sigma 0.0035 here).
    x = torch.randint(0, 2**32, (20000,), generator=torch.Generator().manual_seed(0))
    hashed, bits = mix32(x.clone()), torch.arange(32)
    for b in range(32):
        flipped = mix32(x ^ (1 << b)) ^ hashed
        p = ((flipped[:, None] >> bits) & 1).double().mean(0)
        assert (p - 0.5).abs().max() < 0.02, f"input bit {b}"


# ---- vectorized vs a slow per-row twin -----------------------------------------------------


def reference_token(logits: torch.Tensor, p: SP, seed: int, index: int, prompt, output) -> int:
    """Straightforward one-row sampler: the spec, written with loops."""
    x = logits.clone().double().tolist()
    for t, b in (p.logit_bias or {}).items():
        x[t] += b
    for t, (c_out, in_prompt) in enumerate((output.count(t), t in prompt) for t in range(len(x))):
        if p.repetition_penalty != 1.0 and (c_out or in_prompt):
            x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
        x[t] -= p.frequency_penalty * c_out + p.presence_penalty * (c_out > 0)
    if p.greedy:
        return max(range(len(x)), key=lambda t: x[t])
    order = sorted(range(len(x)), key=lambda t: -x[t])
    if p.top_k:
        order = order[: p.top_k]
    weights = {t: math.exp((x[t] - x[order[0]]) / p.temperature) for t in order}
    total, mass, keep = sum(weights.values()), 0.0, []
    for t in order:
        if mass >= p.top_p * total:
            break
        keep.append(t)
        mass += weights[t]
    keep = [t for t in keep if weights[t] >= p.min_p * weights[keep[0]]]
    q = exponential_noise(keys([seed], [index]), len(x))[0]
    return max(keep, key=lambda t: weights[t] / q[t].item())


def test_batched_sampler_matches_per_row_reference():
    gen = torch.Generator().manual_seed(5)
    vocab, n = 48, 64
    choices = [
        SP(), SP(temperature=0.0), SP(temperature=0.6, top_k=5), SP(top_p=0.7), SP(min_p=0.2),
        SP(temperature=1.4, top_k=10, top_p=0.9, min_p=0.05), SP(repetition_penalty=1.5),
        SP(frequency_penalty=0.7, presence_penalty=-0.3, temperature=0.9),
        SP(logit_bias={3: 4.0, 7: -2.0}, top_k=8), SP(temperature=0.0, repetition_penalty=1.2),
    ]  # fmt: skip
    params = [choices[i % len(choices)] for i in range(n)]
    seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
    indices = torch.randint(0, 500, (n,), generator=gen).tolist()
    prompts = [torch.randint(0, vocab, (5,), generator=gen).tolist() for _ in range(n)]
    outputs = [torch.randint(0, vocab, (i % 4,), generator=gen).tolist() for i in range(n)]
    logits = torch.randn(n, vocab, generator=gen) * 2
    meta = build(params, vocab, seeds=seeds, indices=indices, prompts=prompts, outputs=outputs)
    tokens = Sampler()(logits, meta).token_ids.tolist()
    expected = [
        reference_token(logits[i], params[i], seeds[i], indices[i], prompts[i], outputs[i])
        for i in range(n)
    ]
    assert tokens == expected


# ---- logprobs ------------------------------------------------------------------------------


def test_logprobs_are_raw_model_logprobs():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 20, generator=gen)
    params = [
        SP(temperature=0.0, logprobs=4, logit_bias={5: 50.0}),  # forces a low-ranked token
        SP(temperature=0.5, repetition_penalty=1.7, logprobs=0),
        SP(temperature=1.0),  # asks for none, still gets the batch's width
    ]
    meta = build(params, 20, prompts=[[], [1, 2], []])
    assert meta.max_num_logprobs == 4
    out = Sampler()(logits, meta)
    raw = torch.log_softmax(logits, -1)
    assert out.logprobs.shape == (3, 5) and out.logprob_token_ids.shape == (3, 5)
    assert out.token_ids[0] == 5
    assert torch.equal(out.logprob_token_ids[:, 0], out.token_ids)
    assert torch.allclose(out.logprobs, raw.gather(1, out.logprob_token_ids), atol=1e-6)
    top = raw.sort(-1, descending=True)
    assert torch.equal(out.logprob_token_ids[:, 1:], top.indices[:, :4])
    expected_ranks = [
        1 + int((raw[i] > raw[i, t]).sum()) for i, t in enumerate(out.token_ids.tolist())
    ]
    assert out.ranks.tolist() == expected_ranks and expected_ranks[0] > 1


def test_sampler_does_not_modify_logits():
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(7))
    before = logits.clone()
    meta = build(
        [SP(logit_bias={1: 3.0}, repetition_penalty=2.0), SP(min_tokens=2)],
        10,
        prompts=[[1], []],
        eos=[frozenset({0})] * 2,
    )
    Sampler()(logits, meta)
    assert torch.equal(logits, before)


# ---- no host sync --------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_call_never_syncs_on_cuda():
    device = torch.device("cuda")
    vocab, n = 1000, 16
    params = [
        SP(temperature=0.0), SP(top_k=20, top_p=0.9, min_p=0.05, logprobs=5),
        SP(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.5, logit_bias={3: 2.0}),
        SP(min_tokens=4, stop_token_ids=[9]),
    ] * 4  # fmt: skip
    meta = build(
        params, vocab, indices=[1] * n, prompts=[[1, 2, 3]] * n, outputs=[[4, 4]] * n,
        eos=[frozenset({0})] * n, device=device,
    )  # fmt: skip
    logits = torch.randn(n, vocab, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            logits.sum().item()  # proves the guard is armed
        out = Sampler()(logits, meta)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_meta = build(
        params, vocab, indices=[1] * n, prompts=[[1, 2, 3]] * n, outputs=[[4, 4]] * n,
        eos=[frozenset({0})] * n,
    )  # fmt: skip
    cpu_out = Sampler()(logits.cpu(), cpu_meta)
    assert torch.equal(out.token_ids.cpu(), cpu_out.token_ids)  # same noise, same tokens


def test_plain_greedy_batches_skip_the_per_row_work_and_still_take_the_argmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 40)
    plain = build([SP(temperature=0.0)] * 5, 40)
    assert plain.all_greedy and plain.no_penalties and plain.max_num_logprobs is None
    assert torch.equal(Sampler()(logits, plain).token_ids, logits.argmax(dim=-1))
    # Anything that changes a greedy row's result (or adds to it) takes the general path.
    for extra in (
        dict(repetition_penalty=1.3),
        dict(logit_bias={3: 5.0}),
        dict(min_tokens=2),
        dict(logprobs=2),
    ):
        assert not SP(temperature=0.0, **extra).plain_greedy
    biased = build([SP(temperature=0.0)] * 4 + [SP(temperature=0.0, logit_bias={7: 100.0})], 40)
    assert Sampler()(logits, biased).token_ids[4].item() == 7
