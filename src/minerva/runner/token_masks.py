"""A step's grammar token masks, for the runner: the matcher of each logits row, their bitmask
filled on the host (structured/bitmask.py, llguidance) and moved to the device.

On CUDA (`early`) the fill starts on a thread of its own as soon as the matchers have seen every
token before the step: at `launch`, before the forward is queued, when they have; else (a grammar
row's previous token was still on the device at launch) at the end of `wait` for the step before,
which advances them. It then overlaps the device's forward and the engine's output processing
(llguidance releases the GIL). The matchers are not touched elsewhere until `bitmask` has the
result: the runner's sampling of the step takes it, and the runner reads no other step's tokens
before that sampling is queued. On the CPU the forward already takes every core, and an early
fill would only compete with it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from minerva.platform import copy_to_device
from minerva.runner.input_batch import HostInputs
from minerva.structured import fill_bitmask
from minerva.structured.bitmask import bitmask_words


class TokenMasks:
    """The runner's grammar masks: started early (`start`), taken at sampling (`bitmask`)."""

    def __init__(self, device: torch.device, vocab_size: int | None) -> None:
        self.device = device
        self.vocab_size = vocab_size
        self.early = device.type == "cuda"
        # a parallel group's bitmask broadcast (rank 0's matchers decide for every rank)
        self.share: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._thread: ThreadPoolExecutor | None = None

    def start(self, host: HostInputs) -> Future[np.ndarray | None] | None:
        """Begin filling this step's masks on the mask thread; None where it does not start
        early or no row has a grammar."""
        if not self.early or self.vocab_size is None:
            return None
        matchers = mask_rows(host)
        if all(m is None for m in matchers):
            return None
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="minerva-masks")
        return self._thread.submit(fill_bitmask, matchers, self.vocab_size)

    def bitmask(
        self, host: HostInputs, vocab_size: int, started: Future[np.ndarray | None] | None = None
    ) -> torch.Tensor | None:
        """[num_sampling, ceil(vocab / 32)] int32 on the device, None where no row has a
        grammar: `started`'s result, or filled now (after the forward is queued on a GPU)."""
        bitmask = started.result() if started is not None else None
        if bitmask is None or bitmask.shape[1] != bitmask_words(vocab_size):
            matchers = mask_rows(host)
            if all(m is None for m in matchers):
                return None
            bitmask = fill_bitmask(matchers, vocab_size)
        mask = copy_to_device(torch.from_numpy(bitmask), self.device)
        return mask if self.share is None else self.share(mask)


def mask_rows(host: HostInputs) -> list:
    """The grammar matcher (or None) of each logits row of a step. A verify step has several
    rows per request, but a grammar row never has drafts (the speculator skips it)."""
    states, num_logits = host.sampling_states, host.num_logits
    if num_logits is None:
        return [s.matcher for s in states]
    return [s.matcher for s, n in zip(states, num_logits) for _ in range(n)]
