"""Speculative decoding: proposers (n-gram prompt lookup, a draft model) and the rule that
verifies their proposals in one target forward pass (rejection_sampler)."""

from minerva.spec.draft_proposer import DraftModelProposer
from minerva.spec.governor import SpeculationGovernor
from minerva.spec.ngram_proposer import NgramProposer
from minerva.spec.proposer import Proposer
from minerva.spec.rejection_sampler import accept_drafts
from minerva.spec.spec_stats import SpecDecodeStats
from minerva.spec.speculator import Speculator

__all__ = [
    "DraftModelProposer",
    "NgramProposer",
    "Proposer",
    "SpecDecodeStats",
    "SpeculationGovernor",
    "Speculator",
    "accept_drafts",
]
