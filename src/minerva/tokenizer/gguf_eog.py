"""End-of-generation tokens of a GGUF vocabulary, found as llama.cpp finds them. No torch.

GGUF files name one EOS id, but chat models stop on more (Qwen's ``<|im_end|>`` while EOS is
``<|endoftext|>``): llama.cpp adds the ids of the end-of-turn keys and of tokens with these
texts, and treats those tokens as control tokens even where the file typed them otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EOG_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
        "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
        "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",  # noqa: RUF001 - DeepSeek's bars
    }
)  # fmt: skip
_EOG_ID_KEYS = ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")


def eog_token_ids(fields: Mapping[str, Any]) -> list[int]:
    """Ids that end generation: EOS, end-of-turn/-message and FIM-separator ids the file
    names, then every token whose text is a known end-of-generation marker."""
    tokens = fields.get("tokenizer.ggml.tokens") or []
    ids = []
    for key in _EOG_ID_KEYS:
        value = fields.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(value, int) and 0 <= value < len(tokens):
            ids.append(value)
    ids += [i for i, text in enumerate(tokens) if text in EOG_TEXTS]
    return list(dict.fromkeys(ids))
