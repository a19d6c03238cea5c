"""Fill-in-the-middle prompts for OpenAI's ``suffix``: the model's own FIM markers around the
prompt (the text before the gap) and the suffix (the text after it); the completion is the
middle. A model is taken to have a template when its tokenizer holds each marker as one token.
No torch."""

from __future__ import annotations

from dataclasses import dataclass

from minerva.backends.base import Backend
from minerva.errors import RequestError


@dataclass(frozen=True)
class FimTemplate:
    prefix: str
    suffix: str
    middle: str
    suffix_first: bool = False
    """SPM order (suffix, then prefix), as Codestral's [SUFFIX] ... [PREFIX] ... is."""

    def render(self, before: str, after: str) -> str:
        if self.suffix_first:
            return f"{self.suffix}{after}{self.prefix}{before}{self.middle}"
        return f"{self.prefix}{before}{self.suffix}{after}{self.middle}"


FIM_TEMPLATES = (
    FimTemplate("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    FimTemplate("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder family
    FimTemplate("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    FimTemplate("[PREFIX]", "[SUFFIX]", "", suffix_first=True),  # Codestral
)


def _is_one_token(backend: Backend, text: str, baseline: int) -> bool:
    """True when `text` encodes to one token more than the empty string does (BOS aside)."""
    ids = backend.encode(text)
    return len(ids) == baseline + 1 and backend.decode(ids[-1:], False) == text


def find_fim_template(backend: Backend) -> FimTemplate | None:
    """The first template whose markers are all single tokens of this model's tokenizer."""
    if not backend.has_tokenizer:
        return None
    baseline = len(backend.encode(""))
    for template in FIM_TEMPLATES:
        markers = [m for m in (template.prefix, template.suffix, template.middle) if m]
        if all(_is_one_token(backend, m, baseline) for m in markers):
            return template
    return None


def fim_prompts(backend: Backend, prompts: list[str | list[int]], suffix: str) -> list[str]:
    """Each prompt with the suffix in the model's FIM template; a 400 where there is none."""
    template = find_fim_template(backend)
    if template is None:
        raise RequestError(
            "'suffix' (fill-in-the-middle insertion) is not supported: this model's tokenizer "
            "has no fill-in-the-middle tokens; put the whole text in the prompt",
            code="unsupported_field",
            param="suffix",
        )
    if not all(isinstance(p, str) for p in prompts):
        raise RequestError("'suffix' needs text prompts, not token ids", param="suffix")
    return [template.render(p, suffix) for p in prompts]  # type: ignore[arg-type]
