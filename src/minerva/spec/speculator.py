"""Speculator: asks a proposer for draft tokens before each schedule and counts what the
verify steps accepted. The engine's one handle on speculative decoding. No torch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from minerva.request import Request, RunnerOutput, SchedulerOutput
from minerva.spec.governor import SpeculationGovernor
from minerva.spec.proposer import Proposer
from minerva.spec.spec_stats import SpecDecodeStats


class Speculator:
    def __init__(
        self,
        proposer: Proposer,
        num_speculative_tokens: int,
        max_model_len: int,
        governor: SpeculationGovernor | None = None,
    ):
        """governor: decides per step whether to speculate (None: always)."""
        self.proposer = proposer
        self.num_speculative_tokens = num_speculative_tokens
        self.max_model_len = max_model_len
        self.governor = governor
        self.stats = SpecDecodeStats()
        self._step: tuple[int, bool] | None = None  # (rows, speculated) of the step timed now
        self._step_tokens = 0

    def propose(self, running: Sequence[Request]) -> None:
        """``decide`` and, where it says so, ``fill``: one step's proposals."""
        if self.decide(running):
            self.fill(running)

    def decide(self, running: Sequence[Request]) -> bool:
        """Whether this step speculates (the governor's call; always without one), and the
        start of the step the governor times. The engine asks before it reads the step in
        flight: only a speculating step needs every running request's tokens on the host."""
        self._step, self._step_tokens = None, 0
        if not running:
            return False
        speculate = self.governor is None or self.governor.should_speculate(len(running))
        self._step = (len(running), speculate)
        return speculate

    def fill(self, running: Sequence[Request]) -> None:
        """Set ``spec_token_ids`` of every running request that samples next step (all its
        tokens computed but the last, none pending) to up to K drafts, fewer near its
        max_tokens or max_model_len (every draft could become an output token)."""
        requests, num_tokens = [], []
        k_max, max_len = self.num_speculative_tokens, self.max_model_len
        for req in running:
            num = req.num_tokens
            if req.num_pending_tokens or req.num_computed_tokens != num - 1:
                continue
            if not can_speculate(req):
                continue
            k = min(k_max, req.max_tokens - req.num_output_tokens - 1, max_len - num - 1)
            if k > 0:
                requests.append(req)
                num_tokens.append(k)
        if not requests:
            return
        for req, drafts in zip(requests, self.proposer.propose(requests, num_tokens)):
            req.spec_token_ids = drafts

    def observe(self, scheduled: SchedulerOutput, result: RunnerOutput) -> None:
        """Count each verify step's drafts and accepted tokens (before any stop cut them)."""
        if scheduled.num_prefill_tokens:
            self._step = None  # a prefill's cost says nothing about decoding
        self._step_tokens += sum(len(tokens) for tokens in result.sampled_token_ids)
        spec = scheduled.scheduled_spec_token_ids
        if not spec:
            return
        for rid, tokens in zip(result.request_ids, result.sampled_token_ids):
            drafts = spec.get(rid)
            if drafts and tokens:
                self.stats.observe(len(drafts), len(tokens) - 1, len(tokens))

    def end_step(self, seconds: float) -> None:
        """The wall time of the step that began with the last propose (proposing, verifying
        and reading the tokens): what the governor compares."""
        if self.governor is not None and self._step is not None:
            rows, speculated = self._step
            self.governor.observe(rows, speculated, seconds, self._step_tokens)
        self._step = None

    def forget(self, request_ids: Iterable[str]) -> None:
        self.proposer.forget(request_ids)


def can_speculate(req: Request) -> bool:
    """Whether drafts may be verified for a request: not when each token's mask depends on the
    ones before it (a grammar, token healing) nor for pooling requests, which sample nothing."""
    params = req.sampling_params
    return not (req.pooling or params.structured is not None or params.token_healing)
