"""The hand-off of the batch-1 GGUF chain (quant/gguf_one_token.py): a producer's 8-bit x serves
only the very next read of that output, read the way it was made for."""

from __future__ import annotations

import torch

from minerva.quant.gguf_one_token import Handoff, OneToken


def test_a_handoff_serves_only_its_own_read_once() -> None:
    out, other, w = torch.zeros(1, 64), torch.zeros(1, 64), torch.ones(64)
    xq = ("codes", "scales", "sums")
    state = OneToken()
    for x, norm_w, gated, want in [
        (out, w, False, xq),  # the norm it was made for
        (other, w, False, None),  # another tensor
        (out, torch.ones(64), False, None),  # another norm weight
        (out, None, False, None),  # a plain read
        (out, None, True, None),  # read through a gate
    ]:
        state.pending = Handoff(out, xq, w, False)
        assert state.take(x, norm_w, gated) == want
        assert state.pending is None  # dropped either way
    state.pending = Handoff(out, xq, None, True)  # silu(gate) * up of out
    assert state.take(out, None, False) is None  # a plain read of out is not the gated x
    state.pending = Handoff(out, xq, None, True)
    assert state.take(out, None, True) == xq
    assert state.take(out, None, True) is None  # once
