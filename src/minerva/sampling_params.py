"""SamplingParams: how one request turns logits into tokens and when it stops. No torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

_STRUCTURED_KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
MAX_STOP_STRINGS = 16
"""Stop strings per request (both APIs and Python): they are matched on the engine thread."""
MAX_STOP_CHARS = 512
"""Characters per stop string."""


@dataclass(frozen=True)
class StructuredOutputs:
    """A constraint on the generated text; exactly one field is set.

    json_schema: a JSON Schema (dict or its JSON text); json_object: any JSON object;
    regex: the text matches it (Rust ``regex`` syntax); choice: exactly one of these strings;
    grammar: a Lark grammar (llguidance's dialect, the library Minerva uses) or a llama.cpp
    GBNF grammar (recognised by its ``::=`` rules and converted to Lark)."""

    json_schema: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        set_fields = [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]
        if len(set_fields) != 1:
            raise ValueError(
                "structured outputs take exactly one of json_schema, json_object, regex, "
                f"choice or grammar; got {set_fields or 'none'}"
            )

    @property
    def kind(self) -> str:
        return next(k for k in _STRUCTURED_KINDS if getattr(self, k) not in (None, False))


@dataclass
class SamplingParams:
    """Per-request decoding settings (names follow the OpenAI / vLLM vocabulary)."""

    n: int = 1
    """Number of completions to generate for the prompt."""
    temperature: float = 1.0
    """0 means greedy (argmax); higher values flatten the distribution."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 or -1 disables."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability mass reaches top_p; 1.0 disables."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the top token's; 0 disables."""
    repetition_penalty: float = 1.0
    """>1 discourages tokens already in the prompt or output (CTRL-style, divides positive logits)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it appears in the output."""
    presence_penalty: float = 0.0
    """Subtracted from a token's logit if it appears in the output at all."""
    logit_bias: dict[int, float] | None = None
    """Token id -> value added to its logit before sampling."""
    seed: int | None = None
    """Same seed, same prompt, same tokens, whatever else runs in the batch."""
    stop: list[str] | str | None = None
    """Strings that end generation; they are not included in the output text."""
    stop_token_ids: list[int] | None = None
    """Token ids that end generation (in addition to the model's EOS tokens)."""
    ignore_eos: bool = False
    """Keep generating past EOS tokens (benchmarks)."""
    min_tokens: int = 0
    """EOS and stop tokens are masked until this many tokens were generated."""
    max_tokens: int | None = 16
    """Most tokens to generate; None means up to the model's context length."""
    logprobs: int | None = None
    """Return the sampled token's logprob and this many top alternatives (0 = sampled only)."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the detokenized text."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text."""
    pooling: str | None = None
    """'mean': generate nothing; run the prompt and return the mean of its final-norm hidden
    states, L2-normalised (embeddings). None: an ordinary generation request."""
    structured: StructuredOutputs | None = None
    """Constrain the output to a JSON schema, JSON object, regex, choice list or grammar."""
    token_healing: bool = False
    """Back up the prompt's last token when it is the start of longer vocabulary entries and
    make the first generated token(s) begin with its text (prompts ending mid-word)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k is None or self.top_k < 0:
            self.top_k = 0
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the accepted range."""
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (
                0 <= self.temperature < math.inf,
                f"temperature must be >= 0 and finite, got {self.temperature}",
            ),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 disables), got {self.top_k}"),
            (
                0 < self.repetition_penalty < math.inf,
                f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty}",
            ),
            (
                -2 <= self.frequency_penalty <= 2,
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                -2 <= self.presence_penalty <= 2,
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (
                self.max_tokens is None or self.max_tokens >= 1,
                f"max_tokens must be at least 1, got {self.max_tokens}",
            ),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= 20,
                f"logprobs must be between 0 and 20, got {self.logprobs}",
            ),
            (all(s for s in self.stop), "stop strings must not be empty"),
            (
                len(self.stop) <= MAX_STOP_STRINGS,
                f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}",
            ),
            (
                all(len(s) <= MAX_STOP_CHARS for s in self.stop if isinstance(s, str)),
                f"stop strings must be at most {MAX_STOP_CHARS} characters, got one of "
                f"{max((len(s) for s in self.stop if isinstance(s, str)), default=0)}",
            ),
            (
                self.pooling in (None, "mean"),
                f"pooling must be 'mean' or None, got {self.pooling!r}",
            ),
            (
                self.pooling is None or (self.n == 1 and self.logprobs is None),
                "pooling requests generate nothing: n must be 1 and logprobs None",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature < 1e-5 or self.top_k == 1

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: greedy, no penalties, bias, min_tokens, logprobs or
        constraint."""
        return (
            self.greedy
            and not self.has_penalties
            and not self.logit_bias
            and self.min_tokens == 0
            and self.logprobs is None
            and self.structured is None
            and not self.token_healing
        )

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )
