"""StructuredPlan: what the engine decided for one constrained request, handed to the runner
through the scheduler as opaque data; the runner asks it for the request's matcher. No torch."""

from __future__ import annotations

from dataclasses import dataclass

from minerva.structured.grammar_compiler import CompiledGrammar
from minerva.structured.matcher import GrammarMatcher, TokenMatcher
from minerva.structured.token_healing import HealingMatcher
from minerva.structured.vocab import Vocabulary


@dataclass(frozen=True)
class StructuredPlan:
    vocabulary: Vocabulary
    grammar: CompiledGrammar | None = None
    healed_bytes: bytes = b""
    """Bytes token healing took off the prompt; the first tokens must spell them."""

    def new_matcher(self, output_token_ids: list[int]) -> TokenMatcher:
        """A fresh matcher advanced past ``output_token_ids`` (a resumed request's tokens)."""
        matcher: TokenMatcher
        if self.grammar is not None:
            matcher = GrammarMatcher(self.grammar.new_matcher(), self.vocabulary.eos_token_ids)
        else:
            matcher = HealingMatcher(self.healed_bytes, self.vocabulary)
        for token in output_token_ids:
            matcher.accept(token)
        return matcher
