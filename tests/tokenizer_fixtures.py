"""Tiny tokenizers built in a temp folder, shaped like the real families Minerva loads.

* ``byte_level``: GPT-2 / Llama-3 style byte-level BPE (every byte is a token, so multi-byte
  characters split across tokens) with Llama-3 special tokens and chat template.
* ``llama2``: Llama-2 / Mistral-v0.1 style SentencePiece BPE as converted to ``tokenizer.json``
  (Prepend + Replace normalizer, byte_fallback ``<0xNN>`` tokens, Strip decoder).
* ``metaspace``: the newer SentencePiece layout (Metaspace pre-tokenizer, prepend_scheme="first"),
  saved with ``tokenizer_class: LlamaTokenizer`` as many Hub folders are.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "Streaming text one token at a time is what servers do.",
    "Le café est très chaud; l'élève préfère le thé glacé.",
    "Über den Wolken muß die Freiheit wohl grenzenlos sein.",
    "El niño comió piña en la mañana, ¿verdad?",
    "Tiếng Việt có nhiều dấu thanh điệu.",
    "你好，世界。今天天气很好，我们去公园吧。",
    "日本語のテキストも少し入れておきます。",
    "한국어 문장도 하나 있습니다.",
    "Emoji time 😀🎉🚀 and hearts ❤️ everywhere 👍",
    "def add(a, b):\n    return a + b\n",
    "Numbers 1234567890 and symbols #$%&*()[]{}<>",
]

# A few strings with characters the tiny vocabularies never saw: they exercise byte fallback.
EXTRA_TEXTS = [
    "",
    " ",
    "  leading spaces",
    "trailing space ",
    "Hello",
    " Hello world",
    "line one\nline two\n\n  indented\ttab",
    "Straße, Œuvre, naïve façade, Ångström",
    "混合 mixed 文本 text",
    "新しい漢字：龘 𠀋",
    "👍🏽👨‍👩‍👧 🇫🇷 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "<s>inside</s> text",
    "<|eot_id|>chat<|start_header_id|>",
    "a</s>b",
    "\ufffd replacement char",
]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Tools:\n{{ tools | tojson(indent=2) }}<|eot_id|>{% endif %}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content | trim + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


def _save(tokenizer: Tokenizer, folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return folder


def build_byte_level(folder: Path, vocab_size: int = 500) -> Path:
    """GPT-2 / Llama-3 style byte-level BPE with a Llama-3 chat template."""
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": {
            "__type": "AddedToken",
            "content": "<|eot_id|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        },
        "clean_up_tokenization_spaces": True,
        "model_max_length": 8192,
        "chat_template": LLAMA3_TEMPLATE,
    }
    return _save(tok, folder, config)


def _sentencepiece_bpe(pre_tokenizer, normalizer, vocab_size: int) -> Tokenizer:
    """Train a BPE on the corpus, then lay the vocab out like Llama-2: <unk> <s> </s> <0x00>..."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, max_token_length=8, show_progress=False)
    trainer_tok.train_from_iterator(CORPUS, trainer)
    state = json.loads(trainer_tok.to_str())["model"]
    trained = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for piece in BYTE_TOKENS:
        vocab[piece] = len(vocab)
    for piece, _ in trained:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def _llama2_config(**extra) -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {
            "__type": "AddedToken",
            "content": "<s>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "chat_template": LLAMA2_TEMPLATE,
        **extra,
    }


def build_llama2(folder: Path, vocab_size: int = 420) -> Path:
    """Llama-2 tokenizer.json layout: Prepend("▁") + Replace(" ", "▁") normalizer, no pre-tokenizer."""
    normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(Regex(" "), "▁")]
    )
    tok = _sentencepiece_bpe(None, normalizer, vocab_size)
    return _save(tok, folder, _llama2_config())


def build_metaspace(folder: Path, vocab_size: int = 420) -> Path:
    """Newer SentencePiece layout: Metaspace pre-tokenizer (prepend only to the first section)."""
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok = _sentencepiece_bpe(pre, None, vocab_size)
    config = _llama2_config(tokenizer_class="LlamaTokenizer", legacy=False, pad_token="</s>")
    return _save(tok, folder, config)


BUILDERS = {"byte_level": build_byte_level, "llama2": build_llama2, "metaspace": build_metaspace}
