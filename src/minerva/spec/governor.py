"""Speculation that turns itself down when it stops paying, from measured step times.

Per batch-size bucket (powers of two) the governor keeps the goodput it measured for steps
with drafts and for steps without: output tokens per second of step wall time (proposing and
verifying included). Each step it speculates where speculation measured faster, and now and
then runs the other mode once so that both figures follow the workload (acceptance changes,
the batch grows compute-bound). No torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Goodput:
    tokens_per_s: float = 0.0
    num_steps: int = 0

    def observe(self, value: float, weight: float) -> None:
        if self.num_steps == 0:
            self.tokens_per_s = value
        else:
            self.tokens_per_s += weight * (value - self.tokens_per_s)
        self.num_steps += 1


class SpeculationGovernor:
    def __init__(self, explore_every: int = 32, smoothing: float = 0.2, warmup: int = 2) -> None:
        """explore_every: steps between two tries of the mode that measured slower;
        smoothing: weight of a new step in the moving average; warmup: steps each mode runs
        in a bucket before the figures are compared."""
        self.explore_every = explore_every
        self.smoothing = smoothing
        self.warmup = warmup
        self._figures: dict[tuple[int, bool], _Goodput] = {}
        self._since_explore: dict[int, int] = {}

    @staticmethod
    def bucket(num_rows: int) -> int:
        return 1 << max(num_rows - 1, 0).bit_length()

    def should_speculate(self, num_rows: int) -> bool:
        b = self.bucket(num_rows)
        spec, plain = self._get(b, True), self._get(b, False)
        if spec.num_steps < self.warmup:
            return True
        if plain.num_steps < self.warmup:
            return False
        better = spec.tokens_per_s >= plain.tokens_per_s
        n = self._since_explore.get(b, 0) + 1
        if n >= self.explore_every:
            n, better = 0, not better
        self._since_explore[b] = n
        return better

    def observe(self, num_rows: int, speculated: bool, seconds: float, num_tokens: int) -> None:
        """One step that ran num_rows sequences (decoding) and emitted num_tokens tokens."""
        if num_rows <= 0 or seconds <= 0:
            return
        figure = self._get(self.bucket(num_rows), speculated)
        figure.observe(num_tokens / seconds, self.smoothing)

    def goodput(self, num_rows: int, speculated: bool) -> float:
        """Measured tokens per second of this batch size's bucket (0 before any step)."""
        return self._get(self.bucket(num_rows), speculated).tokens_per_s

    def _get(self, bucket: int, speculated: bool) -> _Goodput:
        return self._figures.setdefault((bucket, speculated), _Goodput())
