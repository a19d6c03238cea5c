"""What the Triton kernel tests share: they run on a CUDA GPU, or on the CPU under Triton's
interpreter (TRITON_INTERPRET=1), where bf16 arithmetic is emulated wrongly (numpy has no
bf16) and fp16 stands in for it."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
LOW = torch.bfloat16 if CUDA else torch.float16
MARKS = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (CUDA or INTERPRET), reason="needs a CUDA GPU (or Triton's interpreter: "
        "TRITON_INTERPRET=1)"
    ),
]  # fmt: skip


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())
