"""Turns a request's structured outputs / token healing into a StructuredPlan when the engine
accepts it: the grammar compiled (cached) and the prompt healed. Everything that can be wrong
with a request's grammar raises RequestError here, never on the step."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams
from minerva.structured import (
    GrammarCompiler,
    StructuredPlan,
    Vocabulary,
    heal_prompt,
    vocabulary_of,
)
from minerva.tokenizer import Tokenizer


@dataclass
class ConstrainedPrompt:
    prompt_token_ids: list[int]
    plan: StructuredPlan | None
    healed_text: str = ""
    """Text token healing took off the prompt: the output starts with it and drops it."""


class Constraints:
    """The engine's grammar compiler and token healer for one model (built on first use)."""

    def __init__(self, tokenizer: Tokenizer | None, vocab_size: int, eos_token_ids: list[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._vocabulary: Vocabulary | None = None
        self._compiler: GrammarCompiler | None = None
        self._lock = threading.Lock()  # the async engine precompiles from worker threads

    @property
    def compiler(self) -> GrammarCompiler:
        vocabulary = self.vocabulary
        with self._lock:
            if self._compiler is None:
                self._compiler = GrammarCompiler(self._tokenizer(), vocabulary)
            return self._compiler

    @property
    def vocabulary(self) -> Vocabulary:
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = vocabulary_of(
                    self._tokenizer(), self.vocab_size, self.eos_token_ids
                )
            return self._vocabulary

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RequestError(
                "structured outputs and token healing need the model's tokenizer; this model "
                "has none"
            )
        return self.tokenizer

    def precompile(self, params: SamplingParams) -> None:
        """Compile the request's grammar into the cache (callable from any thread)."""
        if params.structured is not None:
            self.compiler.compile(params.structured)

    def prepare(self, ids: list[int], params: SamplingParams) -> ConstrainedPrompt:
        """The prompt to run and the plan for the runner; RequestError for a bad grammar."""
        if params.structured is None and not params.token_healing:
            return ConstrainedPrompt(ids, None)
        if params.structured is not None:
            if params.token_healing:
                raise RequestError(
                    "token_healing cannot be combined with structured outputs: drop one",
                    param="token_healing",
                )
            grammar = self.compiler.compile(params.structured)
            return ConstrainedPrompt(ids, StructuredPlan(self.vocabulary, grammar=grammar))
        healed = heal_prompt(ids, self.vocabulary)
        text = self._healed_text(healed.prompt_token_ids, ids)
        if not healed.removed_bytes or text is None:
            return ConstrainedPrompt(ids, None)
        plan = StructuredPlan(self.vocabulary, healed_bytes=healed.removed_bytes)
        return ConstrainedPrompt(healed.prompt_token_ids, plan, text)

    def _healed_text(self, kept: list[int], ids: list[int]) -> str | None:
        """The text the removed tokens add after the kept prompt (None: not clean UTF-8)."""
        tail = kept[-5:]
        before = self._tokenizer().decode(tail)
        after = self._tokenizer().decode(tail + ids[len(kept) :])
        if not after.startswith(before) or "\ufffd" in after[len(before) :]:
            return None
        return after[len(before) :]
