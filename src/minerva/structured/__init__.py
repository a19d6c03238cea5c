"""Structured outputs and token healing: grammar / JSON-schema compile cache (llguidance),
per-request token matchers and the batch token bitmask the sampler applies. No torch."""

from minerva.structured.bitmask import fill_bitmask
from minerva.structured.grammar_compiler import (
    CompiledGrammar,
    GrammarCompiler,
    StructuredOutputError,
)
from minerva.structured.matcher import GrammarMatcher, TokenMatcher
from minerva.structured.plan import StructuredPlan
from minerva.structured.token_healing import HealedPrompt, HealingMatcher, heal_prompt
from minerva.structured.vocab import Vocabulary, encode_fragment, vocabulary_of

__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "HealedPrompt",
    "HealingMatcher",
    "StructuredOutputError",
    "StructuredPlan",
    "TokenMatcher",
    "Vocabulary",
    "encode_fragment",
    "fill_bitmask",
    "heal_prompt",
    "vocabulary_of",
]
