"""The BPE pre-tokenizers that a GGUF file names in ``tokenizer.ggml.pre``. No torch.

llama.cpp splits text with a list of regexes applied one after the other (each splits the
pieces the previous one left, keeping matches and the gaps between them) and then BPE-merges
each piece. The regexes below are llama.cpp's for each name (they are the tokenizer's
definition, so they are data we must reproduce exactly); the ``tokenizers`` library runs them
as ``Split(..., behavior="isolated")`` pre-tokenizers with the same Unicode classes.
"""

from __future__ import annotations

from dataclasses import dataclass

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's tekken and GPT-4o: an upper-case run then a lower-case run form one word.
_UPPER = r"((?=[\p{L}])([^a-z]))"
_LOWER = r"((?=[\p{L}])([^A-Z]))"
TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*|\p{{N}}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SEED_CODER = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_CJK = "[一-龥ࠀ-一가-퟿]+"
DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",  # noqa: E501, RUF001
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",  # noqa: RUF001
    "\\s+$",
    _CJK,
    r"\p{N}+",
)
DEEPSEEK_CODER = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}")
DEEPSEEK3 = (
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]")
STARCODER = (r"\p{N}", GPT2)
DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
BLOOM = (" ?[^(\\s|.,!?…。，、।۔،)]+",)  # noqa: RUF001
# SPM-style BPE (Gemma 4): spaces become "▁" first, pieces are lines and runs of newlines.
NEWLINE_RUNS = ("[^\n]+|[\n]+",)


@dataclass(frozen=True)
class PreTokenizerSpec:
    """How llama.cpp prepares text for one ``tokenizer.ggml.pre`` name."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole vocabulary token is used as is
    add_bos: bool | None = None  # llama.cpp's default when the GGUF has no add_bos_token
    has_bos: bool = True  # False: the model has no BOS token even if the GGUF names one
    byte_level: bool = True  # GPT-2 byte-to-unicode mapping (False: raw UTF-8, "▁" spaces)


_SPECS: dict[tuple[str, ...], PreTokenizerSpec] = {
    ("default",): PreTokenizerSpec(DEFAULT),
    (
        "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
        "lfm2", "jina-v5-nano",
    ): PreTokenizerSpec((LLAMA3,), ignore_merges=True, add_bos=True),
    ("dbrx", "smaug-bpe"): PreTokenizerSpec((LLAMA3,)),
    ("chatglm-bpe",): PreTokenizerSpec((LLAMA3,), has_bos=False),
    ("glm4", "glm5"): PreTokenizerSpec((LLAMA3,), ignore_merges=True, has_bos=False),
    ("deepseek-llm",): PreTokenizerSpec(DEEPSEEK_LLM),
    ("deepseek-coder",): PreTokenizerSpec(DEEPSEEK_CODER),
    ("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"): PreTokenizerSpec(DEEPSEEK3),
    ("falcon",): PreTokenizerSpec(FALCON),
    (
        "gpt-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "phi-2", "jina-es",
        "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert",
        "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe",
    ): PreTokenizerSpec((GPT2,)),
    (
        "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
        "mellum2",
    ): PreTokenizerSpec(STARCODER),
    (
        "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan",
        "solar-open", "grok-2",
    ): PreTokenizerSpec((QWEN2,)),
    ("qwen35",): PreTokenizerSpec((QWEN35,)),
    ("poro-chat", "bloom", "gpt3-finnish"): PreTokenizerSpec(BLOOM),
    ("viking",): PreTokenizerSpec((*BLOOM, r"\p{N}")),
    ("tekken",): PreTokenizerSpec((TEKKEN,), ignore_merges=True, add_bos=True),
    ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"): PreTokenizerSpec((GPT4O,)),
    ("seed-coder",): PreTokenizerSpec((SEED_CODER,)),
    ("gemma4",): PreTokenizerSpec(NEWLINE_RUNS, add_bos=True, byte_level=False),
}  # fmt: skip
PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    name: spec for names, spec in _SPECS.items() for name in names
}


def pre_tokenizer_spec(name: str | None) -> PreTokenizerSpec | None:
    """The spec for a ``tokenizer.ggml.pre`` value (missing means "default"); None if unknown."""
    return PRE_TOKENIZERS.get(name or "default")
