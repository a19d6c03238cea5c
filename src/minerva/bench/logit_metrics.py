"""How far a quantized model's next-token distributions are from a reference model's: mean KL
divergence KL(ref || test), top-1 agreement, and each model's perplexity, over the same tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class LogitStats:
    """Running sums over scored positions; `add` one chunk at a time, then `result`."""

    kl_sum: float = 0.0
    kl_max: float = 0.0
    agree: int = 0
    nll_sum: float = 0.0
    ref_nll_sum: float = 0.0
    count: int = 0

    def add(self, ref_logprobs: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor):
        """ref_logprobs, logprobs [n, vocab] (log-softmaxed); targets [n]: the true next tokens."""
        ref, test = ref_logprobs.double(), logprobs.double()
        kl = (ref.exp() * (ref - test)).sum(dim=-1)  # [n]
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        self.agree += int((ref.argmax(-1) == test.argmax(-1)).sum())
        rows = torch.arange(len(targets))
        self.nll_sum -= float(test[rows, targets].sum())
        self.ref_nll_sum -= float(ref[rows, targets].sum())
        self.count += len(targets)

    def result(self) -> dict:
        n = max(self.count, 1)
        return {
            "mean_kl": self.kl_sum / n,
            "max_kl": self.kl_max,
            "top1_agreement": self.agree / n,
            "perplexity": math.exp(self.nll_sum / n),
            "ref_perplexity": math.exp(self.ref_nll_sum / n),
            "num_scored": self.count,
        }
