"""Counters of speculative decoding: drafts proposed, accepted, acceptance per position. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodeStats:
    num_verify_steps: int = 0
    """Request-steps that verified at least one draft token."""
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0
    """Tokens those request-steps emitted (accepted drafts + the one the target adds)."""
    drafts_per_position: list[int] = field(default_factory=list)
    """How many request-steps had a draft at position j (0-based)."""
    accepted_per_position: list[int] = field(default_factory=list)
    """How many of them accepted it."""

    def observe(self, num_drafts: int, num_accepted: int, num_emitted: int) -> None:
        """One request-step that verified ``num_drafts`` drafts and accepted the first
        ``num_accepted`` (emitting ``num_emitted`` tokens, fewer when a stop cut them)."""
        if num_drafts <= 0:
            return
        self.num_verify_steps += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        self.num_emitted_tokens += num_emitted
        grow = num_drafts - len(self.drafts_per_position)
        if grow > 0:
            self.drafts_per_position.extend([0] * grow)
            self.accepted_per_position.extend([0] * grow)
        for j in range(num_drafts):
            self.drafts_per_position[j] += 1
            self.accepted_per_position[j] += j < num_accepted

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify step (1 = no draft accepted)."""
        return self.num_emitted_tokens / self.num_verify_steps if self.num_verify_steps else 0.0

    @property
    def acceptance_rate_per_position(self) -> list[float]:
        return [
            a / d if d else 0.0
            for a, d in zip(self.accepted_per_position, self.drafts_per_position)
        ]

    def as_dict(self) -> dict:
        return {
            "num_verify_steps": self.num_verify_steps,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "acceptance_rate_per_position": self.acceptance_rate_per_position,
        }
