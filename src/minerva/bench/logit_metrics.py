"""How far a quantized model's next-token distributions are from a reference model's: mean KL
divergence KL(ref || test), top-1 agreement, and each model's perplexity, over the same tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class LogitStats:
    """Running sums over scored positions; `add` one chunk at a time, then `result`."""

    kl_sum: float = 0.0
    kl_max: float = 0.0
    agree: int = 0
    nll_sum: float = 0.0
    ref_nll_sum: float = 0.0
    dnll_sq_sum: float = 0.0  # squares of per-token (nll - ref nll): the noise of the delta
    count: int = 0
    token_nlls: list[torch.Tensor] = field(default_factory=list)  # [n] per chunk, for pairing

    def add(self, ref_logprobs: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor):
        """ref_logprobs, logprobs [n, vocab] (log-softmaxed); targets [n]: the true next tokens."""
        ref, test = ref_logprobs.double(), logprobs.double()
        kl = (ref.exp() * (ref - test)).sum(dim=-1)  # [n]
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        self.agree += int((ref.argmax(-1) == test.argmax(-1)).sum())
        rows = torch.arange(len(targets))
        nll, ref_nll = -test[rows, targets], -ref[rows, targets]  # [n]
        self.nll_sum += float(nll.sum())
        self.ref_nll_sum += float(ref_nll.sum())
        self.dnll_sq_sum += float(((nll - ref_nll) ** 2).sum())
        self.token_nlls.append(nll)
        self.count += len(targets)

    def result(self) -> dict:
        """Means over the scored tokens; `ppl_delta_stderr` is the standard error of
        perplexity - ref_perplexity from the paired per-token NLL differences (first order)."""
        n = max(self.count, 1)
        ppl, ref_ppl = math.exp(self.nll_sum / n), math.exp(self.ref_nll_sum / n)
        mean_d = (self.nll_sum - self.ref_nll_sum) / n
        var_d = max(self.dnll_sq_sum / n - mean_d**2, 0.0) * n / max(n - 1, 1)
        return {
            "mean_kl": self.kl_sum / n,
            "max_kl": self.kl_max,
            "top1_agreement": self.agree / n,
            "perplexity": ppl,
            "ref_perplexity": ref_ppl,
            "ppl_delta": ppl - ref_ppl,
            "ppl_delta_stderr": ppl * math.sqrt(var_d / n),
            "num_scored": self.count,
        }


def paired_ppl_difference(a: LogitStats, b: LogitStats) -> dict:
    """perplexity(a) - perplexity(b) over the same tokens, with its standard error from the
    per-token NLL differences (first order): is one quantization's delta equal to another's?"""
    d = torch.cat(a.token_nlls) - torch.cat(b.token_nlls)  # [n]
    ppl_a, ppl_b = (math.exp(float(torch.cat(s.token_nlls).mean())) for s in (a, b))
    stderr = ppl_a * float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return {"ppl_difference": ppl_a - ppl_b, "stderr": stderr}
