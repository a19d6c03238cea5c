"""Sampling parameters as hostile input (hypothesis): any combination the validators accept
samples a token in the vocabulary, inside top-k of the penalised logits, the same token for the
same seed alone or in any batch row, argmax when greedy; any value they refuse is a ValueError
naming the field (the APIs' 400), never another exception."""

from __future__ import annotations

import math

import pytest
import torch

from minerva.sampler import Sampler, process_logits
from minerva.sampling_metadata import SamplingMetadata
from minerva.sampling_params import SamplingParams
from tests.reliability.input_app import figure

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VOCAB = 48
CPU = torch.device("cpu")
SETTINGS = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip

valid_params = st.builds(
    SamplingParams,
    temperature=st.one_of(st.just(0.0), st.floats(0.05, 2.0)),
    top_p=st.floats(0.01, 1.0),
    top_k=st.integers(-1, VOCAB + 8),
    min_p=st.floats(0.0, 1.0),
    repetition_penalty=st.floats(0.2, 3.0),
    frequency_penalty=st.floats(-2.0, 2.0),
    presence_penalty=st.floats(-2.0, 2.0),
    seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
)
history = st.lists(st.integers(0, VOCAB - 1), max_size=12)


def _sample(rows: list[SamplingParams], logits: torch.Tensor, outputs: list[list[int]]):
    meta = SamplingMetadata.build(
        rows, [p.seed or 0 for p in rows], [len(o) for o in outputs], [[1, 2]] * len(rows),
        outputs, VOCAB, CPU,
    )  # fmt: skip
    return Sampler()(logits, meta).token_ids.tolist(), meta


checked = {"accepted": 0, "refused": 0}


@SETTINGS
@given(params=valid_params, out=history, data=st.data())
def test_accepted_params_sample_sane_tokens(params, out, data):
    logits = torch.tensor(data.draw(st.lists(st.floats(-20, 20), min_size=VOCAB,
                                             max_size=VOCAB)))  # fmt: skip
    other = SamplingParams(temperature=1.0, seed=7)
    (alone,), meta = _sample([params], logits[None], [out])
    batch, _ = _sample([other, params, other], logits.repeat(3, 1), [[], out, [3]])
    assert 0 <= alone < VOCAB
    penalised = process_logits(logits[None].clone(), meta)[0]  # bias and penalties applied
    if params.seed is not None or params.greedy:
        assert batch[1] == alone  # batch-invariant
    if params.greedy:
        assert penalised[alone] == penalised.max()
    if params.top_k > 0:
        assert int((penalised > penalised[alone]).sum()) < params.top_k
    checked["accepted"] += 1


bad_value = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10))


@SETTINGS
@given(field=st.sampled_from(["temperature", "top_p", "min_p", "repetition_penalty",
                              "frequency_penalty", "presence_penalty", "top_k", "n",
                              "max_tokens", "min_tokens", "logprobs"]), value=bad_value)  # fmt: skip
def test_refused_params_are_value_errors_naming_the_field(field, value):
    if field in ("top_k", "n", "max_tokens", "min_tokens", "logprobs") and not isinstance(
        value, int
    ):
        value = int(value) if math.isfinite(value) else -5
    try:
        SamplingParams(**{field: value})
    except ValueError as e:
        assert str(e).split(" ", 1)[0] == field, str(e)
        checked["refused"] += 1
    else:
        assert math.isfinite(value), f"{field}={value} accepted"
        checked["accepted"] += 1


def test_figure():
    figure("sampling properties", f"{checked['accepted']} accepted and {checked['refused']} "
           "refused hypothesis cases: tokens in vocab and top-k, seeded = batch-invariant, greedy "
           "= argmax, refusals name the field")  # fmt: skip
