"""minerva.tokenizer vs transformers (encode, decode, chat templates) and a slow re-decoding twin
(streaming detokenization and stop strings), on tiny tokenizers built in a temp folder."""

from __future__ import annotations

import ast
import json
import random
import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizer_fixtures import BUILDERS, CORPUS, EXTRA_TEXTS  # noqa: E402
from tokenizers import Tokenizer as RustTokenizer  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, processors  # noqa: E402

from minerva.errors import MinervaError, ModelLoadError, RequestError  # noqa: E402
from minerva.tokenizer import IncrementalDetokenizer, Tokenizer, compile_chat_template  # noqa: E402
from minerva.tokenizer.detokenizer import INITIAL_CONTEXT_TOKENS  # noqa: E402

NAMES = list(BUILDERS)
TEXTS = CORPUS + EXTRA_TEXTS
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "You are terse. Réponds en français."},
        {"role": "user", "content": "What is 2+2? 你好"},
        {"role": "assistant", "content": "4 😀"},
        {"role": "user", "content": "  And 3+3?  "},
    ],
    [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two", "tool_calls": None},
        {"role": "user", "content": "Three"},
    ],
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def toks(folders) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_folder(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def hfs(folders) -> dict:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return {name: transformers.AutoTokenizer.from_pretrained(f) for name, f in folders.items()}


def _hf_chat(hf, messages, **kwargs):
    return hf.apply_chat_template(messages, tokenize=False, **kwargs)


def _copy_folder(src: Path, dst: Path, config_update: dict | None = None) -> Path:
    dst.mkdir(parents=True)
    (dst / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.update(config_update or {})
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


# --- encode / decode / vocabulary ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_transformers(name, toks, hfs):
    tok, hf = toks[name], hfs[name]
    for text in TEXTS:
        for add_special in (True, False):
            expected = hf(text, add_special_tokens=add_special)["input_ids"]
            assert tok.encode(text, add_special_tokens=add_special) == expected, (text, add_special)


@pytest.mark.parametrize("name", NAMES)
def test_byte_fallback_splits_unseen_characters(name, toks):
    if name == "byte_level":
        pieces = toks[name].convert_ids_to_tokens(toks[name].encode("龘", add_special_tokens=False))
        assert pieces == ["é¾", "ĺ"] or len(pieces) >= 2  # 3 UTF-8 bytes over >= 2 tokens
    else:
        ids = toks[name].encode("龘", add_special_tokens=False)
        assert toks[name].convert_ids_to_tokens(ids)[-3:] == ["<0xE9>", "<0xBE>", "<0x98>"]


@pytest.mark.parametrize("name", NAMES)
def test_decode_matches_transformers(name, toks, hfs):
    tok, hf = toks[name], hfs[name]
    rng = random.Random(0)
    sequences = [tok.encode(t) for t in TEXTS]
    sequences += [
        [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 30))] for _ in range(40)
    ]
    for ids in sequences:
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(
                ids, skip_special_tokens=skip
            )


@pytest.mark.parametrize("name", NAMES)
def test_vocab_and_special_ids_match_transformers(name, toks, hfs):
    tok, hf = toks[name], hfs[name]
    assert tok.vocab_size == len(hf)
    ids = list(range(tok.vocab_size))
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert [tok.id_to_piece(i) for i in ids[:50]] == hf.convert_ids_to_tokens(ids[:50])
    assert tok.bos_token_id == hf.bos_token_id
    assert tok.eos_token_id == hf.eos_token_id
    assert tok.pad_token_id == hf.pad_token_id
    assert tok.unk_token_id == hf.unk_token_id
    assert tok.all_special_ids == hf.all_special_ids


def test_special_tokens_from_config(toks):
    byte = toks["byte_level"]
    assert byte.bos_token_id == byte.token_to_id("<|begin_of_text|>")
    assert byte.eos_token_id == byte.token_to_id("<|eot_id|>")  # given as an AddedToken dict
    assert byte.pad_token_id is None and byte.model_max_length == 8192
    llama = toks["llama2"]
    assert (llama.unk_token_id, llama.bos_token_id, llama.eos_token_id) == (0, 1, 2)
    assert llama.model_max_length is None  # transformers' "no limit" sentinel
    assert toks["metaspace"].pad_token_id == 2
    for tok in toks.values():
        assert tok.add_bos_token and not tok.add_eos_token
        assert tok.encode("hi")[0] == tok.bos_token_id
        assert tok.encode("hi", add_special_tokens=False)[0] != tok.bos_token_id


@pytest.mark.parametrize(
    ("with_post_processor", "add_bos_token"), [(True, False), (False, True), (True, True)]
)
def test_tokenizer_json_post_processor_decides_bos(
    folders, hfs, tmp_path, with_post_processor, add_bos_token
):
    # transformers 5 ignores add_bos_token once a tokenizer.json exists; so do we.
    from transformers import AutoTokenizer

    folder = _copy_folder(folders["llama2"], tmp_path / "t", {"add_bos_token": add_bos_token})
    if not with_post_processor:
        raw = RustTokenizer.from_file(str(folder / "tokenizer.json"))
        raw.post_processor = None
        raw.save(str(folder / "tokenizer.json"))
    tok, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert tok.encode("Hello world") == hf("Hello world")["input_ids"]
    assert (tok.encode("Hello world")[0] == 1) == with_post_processor == tok.add_bos_token


def test_special_token_missing_from_vocab_is_added(folders, hfs, tmp_path):
    from transformers import AutoTokenizer

    update = {"pad_token": "<|pad|>", "additional_special_tokens": ["<|tool|>"]}
    folder = _copy_folder(folders["byte_level"], tmp_path / "t", update)
    tok, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert tok.vocab_size == len(hf) == len(hfs["byte_level"]) + 2
    assert tok.pad_token_id == hf.pad_token_id == tok.token_to_id("<|pad|>")
    assert tok.all_special_ids == hf.all_special_ids
    ids = tok.encode("a<|pad|>b<|tool|>c")
    assert ids == hf("a<|pad|>b<|tool|>c")["input_ids"] and tok.pad_token_id in ids
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True) == "abc"


def test_clean_up_tokenization_spaces_for_wordpiece(tmp_path):
    from transformers import AutoTokenizer

    vocab = {"[UNK]": 0, "hello": 1, ",": 2, "world": 3, ".": 4, "isn": 5, "'": 6, "t": 7}
    raw = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece(cleanup=False)
    raw.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    folder = tmp_path / "wp"
    folder.mkdir()
    raw.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"unk_token": "[UNK]", "clean_up_tokenization_spaces": True})
    )
    tok, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    ids = tok.encode("hello, world.")
    assert raw.decode(ids) == "hello , world ."
    assert tok.decode(ids) == hf.decode(ids) == "hello, world."


# --- loading errors ------------------------------------------------------------------------


def test_missing_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as e:
        Tokenizer.from_folder(tmp_path)
    assert str(tmp_path) in str(e.value) and "needs a tokenizer.json" in str(e.value)
    assert "fast tokenizer" in str(e.value)


def test_corrupt_tokenizer_json(folders, tmp_path):
    text = (folders["llama2"] / "tokenizer.json").read_text()
    (tmp_path / "tokenizer.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelLoadError) as e:
        Tokenizer.from_folder(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(e.value) and "not valid JSON" in str(e.value)
    assert "line" in str(e.value)  # the parse error's position


def test_corrupt_tokenizer_config(folders, tmp_path):
    folder = _copy_folder(folders["llama2"], tmp_path / "t")
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>",,}')
    with pytest.raises(ModelLoadError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_folder(folder)


# --- chat templates ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_chat_template_matches_transformers(name, toks, hfs):
    tok, hf = toks[name], hfs[name]
    for messages in CONVERSATIONS:
        for gen in (True, False):
            ours = tok.apply_chat_template(messages, add_generation_prompt=gen)
            assert ours == _hf_chat(hf, messages, add_generation_prompt=gen)
    prompt = tok.apply_chat_template(CONVERSATIONS[0])
    if name == "byte_level":
        assert prompt == (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    else:
        assert prompt == "<s>[INST] Hi there [/INST]"


@pytest.mark.parametrize("name", NAMES)
def test_encode_chat_adds_no_second_bos(name, toks, hfs):
    tok, hf = toks[name], hfs[name]
    for messages in CONVERSATIONS:
        ids = tok.encode_chat(messages)
        expected = hf.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert ids == list(expected)
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        assert tok.encode(tok.apply_chat_template(messages))[:2] == [tok.bos_token_id] * 2


def test_tools_and_tojson_match_transformers(toks, hfs):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "météo",
                "description": "Weather <b>&</b> 天气",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [{"role": "user", "content": "Temps à Paris ?"}]
    tok, hf = toks["byte_level"], hfs["byte_level"]
    ours = tok.apply_chat_template(messages, tools=tools)
    assert ours == _hf_chat(hf, messages, tools=tools, add_generation_prompt=True)
    assert (
        json.dumps(tools, ensure_ascii=False, indent=2) in ours
    )  # no \u escapes, no HTML escaping
    template = "{{ messages | tojson }}|{{ tools | tojson(separators=(',', ':'), sort_keys=true) }}"
    assert tok.apply_chat_template(messages, tools=tools, chat_template=template) == _hf_chat(
        hf, messages, tools=tools, chat_template=template
    )


def test_template_extensions_and_none_fields(toks, hfs):
    # {% generation %}, loop controls, namespace(), dict(), reasoning aliases, None keys dropped.
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 3 %}{% break %}"
        "{% endif %}{% set ns.n = ns.n + 1 %}{{ m.role }}:{% generation %}{{ m.content }}"
        "{% endgeneration %}{{ '|' ~ m.reasoning_content if m.reasoning_content }}"
        "{{ '|tc' if 'tool_calls' in m }};{% endfor %}{{ ns.n }}{{ dict(a=1) | tojson }}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "reasoning": "think", "tool_calls": None},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    tok, hf = toks["llama2"], hfs["llama2"]
    ours = tok.apply_chat_template(messages, chat_template=template)
    assert ours == _hf_chat(hf, messages, chat_template=template, add_generation_prompt=True)
    assert ours == 'user:a;assistant:b|think;user:c;3{"a": 1}'


def test_named_templates_and_jinja_file(folders, hfs, tmp_path):
    from transformers import AutoTokenizer

    named = [
        {"name": "default", "template": "D:{{ messages[0]['content'] }}"},
        {"name": "tool_use", "template": "T:{{ tools[0]['name'] }}"},
    ]
    folder = _copy_folder(folders["llama2"], tmp_path / "named", {"chat_template": named})
    tok, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    messages, tools = [{"role": "user", "content": "x"}], [{"name": "f"}]
    assert tok.apply_chat_template(messages) == _hf_chat(hf, messages) == "D:x"
    assert tok.apply_chat_template(messages, tools=tools) == _hf_chat(hf, messages, tools=tools)
    assert tok.apply_chat_template(messages, tools=tools) == "T:f"
    assert tok.apply_chat_template(messages, chat_template="tool_use", tools=tools) == "T:f"

    folder = _copy_folder(folders["llama2"], tmp_path / "jinja")
    (folder / "chat_template.jinja").write_text("J:{{ messages | length }}{{ eos_token }}")
    tok, hf = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert tok.apply_chat_template(messages) == _hf_chat(hf, messages) == "J:1</s>"


def test_no_chat_template(folders, tmp_path):
    folder = _copy_folder(folders["llama2"], tmp_path / "t", {"chat_template": None})
    tok = Tokenizer.from_folder(folder)
    with pytest.raises(
        MinervaError, match="this model has no chat template; pass a prompt instead"
    ):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        ["hello"],
        [{"content": "no role"}],
        [{"role": "user", "content": 5}],
    ],
)
def test_bad_message_shapes(toks, messages):
    with pytest.raises(RequestError) as e:
        toks["byte_level"].apply_chat_template(messages)
    assert e.value.param == "messages"


def test_template_raise_exception_is_a_request_error(toks):
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(RequestError, match="roles must alternate"):
        toks["llama2"].apply_chat_template(messages)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ messages.append({'role': 'x'}) }}",
    ],
)
def test_sandbox_refuses_unsafe_templates(toks, tmp_path, template):
    marker = tmp_path / "pwned"
    template = template.replace("{marker}", str(marker))
    with pytest.raises(ModelLoadError, match="the sandbox forbids"):
        toks["byte_level"].apply_chat_template(
            [{"role": "user", "content": "hi"}], chat_template=template
        )
    assert not marker.exists()


def test_syntax_error_and_compile_cache(toks):
    with pytest.raises(ModelLoadError, match="syntax error at line 1"):
        toks["byte_level"].apply_chat_template(
            [{"role": "user", "content": "hi"}], chat_template="{% for m in messages %}"
        )
    source = "{{ messages[0].content }}!"
    first = compile_chat_template(source)
    hits = compile_chat_template.cache_info().hits
    assert (
        toks["byte_level"].apply_chat_template(
            [{"role": "user", "content": "x"}], chat_template=source
        )
        == "x!"
    )
    assert compile_chat_template(source) is first
    assert compile_chat_template.cache_info().hits == hits + 2


def test_strftime_now(toks):
    before = datetime.now().strftime("%Y-%m-%d")
    out = toks["byte_level"].apply_chat_template(
        [{"role": "user", "content": "x"}], chat_template="{{ strftime_now('%Y-%m-%d') }}"
    )
    assert out in {before, datetime.now().strftime("%Y-%m-%d")}


# --- streaming detokenization ------------------------------------------------------------------


def _stream(tok, prompt, output, chunk_sizes=None, **kwargs):
    """Feed output ids in chunks; return (deltas, stop matched, detokenizer)."""
    detok = IncrementalDetokenizer(tok, prompt, **kwargs)
    deltas, stop, i = [], None, 0
    rng = random.Random(len(output))
    while i < len(output):
        n = chunk_sizes or rng.randint(1, 3)
        delta, matched = detok.update(output[i : i + n])
        deltas.append(delta)
        stop = stop or matched
        i += n
    deltas.append(detok.flush())
    return deltas, stop, detok


def _reference_text(tok, prompt, output, skip):
    """Slow twin: what the output adds after the prompt, by decoding everything."""
    before = tok.decode(prompt, skip_special_tokens=skip)
    full = tok.decode(prompt + output, skip_special_tokens=skip)
    assert full.startswith(before)
    return full[len(before) :]


def _is_byte_piece(tok, token_id):
    piece = tok.id_to_piece(token_id) or ""
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _random_output(tok, rng, length):
    """Ids mixing real text, split multi-byte characters, special tokens and arbitrary ids.

    With byte_fallback, ``decode`` turns a whole run of <0xNN> tokens into U+FFFD when the run
    ends invalid, even the valid characters at its start, which a stream has already sent;
    so runs of byte tokens here are always whole characters (real models emit valid UTF-8).
    """
    byte_fallback = any(_is_byte_piece(tok, i) for i in range(tok.vocab_size))
    pool = [tok.encode(t, add_special_tokens=False) for t in TEXTS if t]
    out: list[int] = []
    while len(out) < length:
        kind = rng.random()
        if kind < 0.5:
            ids = rng.choice(pool)
            start = rng.randrange(len(ids))
            end = start + rng.randint(1, 6)
            while byte_fallback and 0 < start < len(ids) and _is_byte_piece(tok, ids[start]):
                start -= 1
            while byte_fallback and end < len(ids) and _is_byte_piece(tok, ids[end]):
                end += 1
            out += ids[start:end]
        elif kind < 0.7:
            out += tok.encode(rng.choice("龘éß你😀👍🏽"), add_special_tokens=False)
        elif kind < 0.85:
            out.append(rng.choice(tok.all_special_ids))
        else:
            token_id = rng.randrange(tok.vocab_size)
            if not (byte_fallback and _is_byte_piece(tok, token_id)):
                out.append(token_id)
    return out if byte_fallback else out[:length]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("skip", [True, False])
def test_streaming_matches_full_decode(name, skip, toks):
    tok = toks[name]
    rng = random.Random(1234)
    prompt = tok.encode("Hello there, friend")
    for _ in range(60):
        output = _random_output(tok, rng, rng.randint(1, 40))
        deltas, stop, detok = _stream(tok, prompt, output, skip_special_tokens=skip)
        expected = _reference_text(tok, prompt, output, skip)
        assert "".join(deltas) == expected == detok.output_text and stop is None
        if name == "byte_level":
            assert expected == tok.decode(output, skip_special_tokens=skip)
        deltas, _, _ = _stream(tok, [], output, skip_special_tokens=skip)
        assert "".join(deltas) == tok.decode(output, skip_special_tokens=skip)


@pytest.mark.parametrize("name", NAMES)
def test_streaming_text_never_emits_partial_characters(name, toks):
    tok = toks[name]
    prompt = tok.encode("Say:")
    for text in TEXTS:
        if "\ufffd" in text:
            continue
        output = tok.encode(text, add_special_tokens=False)
        deltas, _, _ = _stream(tok, prompt, output, chunk_sizes=1)
        assert not any("\ufffd" in d for d in deltas)
        assert "".join(deltas) == _reference_text(tok, prompt, output, True)


@pytest.mark.parametrize("name", NAMES)
def test_split_character_is_held_until_complete(name, toks):
    tok = toks[name]
    output = tok.encode("a龘", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(output[:1]) in (["a"], ["▁a"]) and len(output) >= 3
    detok = IncrementalDetokenizer(tok, [])
    deltas = [detok.update([i])[0] for i in output]
    assert deltas == ["a"] + [""] * (len(output) - 2) + ["龘"]
    # A truncated character is released by flush(), as U+FFFD like a full decode shows it.
    detok = IncrementalDetokenizer(tok, [])
    assert detok.update(output[:-1]) == ("a", None)
    assert detok.flush() == tok.decode(output[:-1])[1:] and detok.flush() == ""


@pytest.mark.parametrize("name", ["llama2", "metaspace"])
def test_sentencepiece_leading_space_uses_prompt_context(name, toks):
    tok = toks[name]
    piece = next(
        p
        for p in tok.convert_ids_to_tokens(range(tok.vocab_size))
        if p.startswith("▁") and len(p) > 2 and p[1:].isascii() and p[1:].isalpha()
    )
    output = [tok.token_to_id(piece)]
    assert tok.decode(output) == piece[1:]  # alone, the decoder strips the leading space
    deltas, _, _ = _stream(tok, tok.encode("Hello"), output)
    assert "".join(deltas) == " " + piece[1:]


def test_windows_stay_small():
    """O(tokens) per step: every decode call sees a short window, not the whole output."""

    class Recorder:
        def __init__(self, tok):
            self.tok, self.sizes = tok, []

        def decode(self, ids, skip_special_tokens=True):
            self.sizes.append(len(ids))
            return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    tok = Tokenizer.from_folder(BUILDERS["byte_level"](Path(_tmp_dir()) / "t"))
    ascii_text = " ".join(t for t in CORPUS if t.isascii())
    output = tok.encode(ascii_text * 4, add_special_tokens=False)
    recorder = Recorder(tok)
    deltas, _, _ = _stream(recorder, tok.encode("Hi"), output, chunk_sizes=1)
    assert "".join(deltas) == tok.decode(output)
    assert len(output) > 400 and max(recorder.sizes) <= INITIAL_CONTEXT_TOKENS + 1


def _tmp_dir() -> str:
    import tempfile

    return tempfile.mkdtemp()


# --- stop strings ---------------------------------------------------------------------------


def _char_ids(tok, text):
    """One token per character, so a stop string is always split across tokens."""
    return [i for c in text for i in tok.encode(c, add_special_tokens=False)]


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_split_across_tokens(toks, include):
    tok = toks["byte_level"]
    output = _char_ids(tok, "The answer is 42. STOP and more")
    detok = IncrementalDetokenizer(tok, [], stop=["STOP"], include_stop_str_in_output=include)
    emitted, results = "", []
    for token_id in output:
        delta, stop = detok.update([token_id])
        emitted += delta
        results.append(stop)
        assert "The answer is 42. ".startswith(emitted) or include
        assert "S" not in emitted or include
        if stop:
            break
    expected = "The answer is 42. STOP" if include else "The answer is 42. "
    assert results.count("STOP") == 1 and results[-1] == "STOP" and len(results) == 22
    assert emitted == expected == detok.output_text and detok.finished
    assert detok.update(_char_ids(tok, "more")) == ("", None) and detok.flush() == ""
    assert detok.output_text == expected


def test_held_back_text_is_released_by_flush(toks):
    tok = toks["byte_level"]
    detok = IncrementalDetokenizer(tok, [], stop=["STOP", "<end>"])
    deltas = [detok.update([i])[0] for i in _char_ids(tok, "Hello ST")]
    assert "".join(deltas) == "Hello " and detok.output_text == "Hello ST"
    assert detok.update(_char_ids(tok, "X")) == ("STX", None)
    assert detok.update(_char_ids(tok, " <en")) == (" ", None)
    assert detok.flush() == "<en" and detok.stop_str is None


def test_earliest_completed_stop_wins(toks):
    tok = toks["byte_level"]
    deltas, stop, detok = _stream(
        tok, [], _char_ids(tok, "xx abcd yy"), chunk_sizes=1, stop=["abcd", "bc", "zz"]
    )
    assert stop == "bc" and "".join(deltas) == "xx a"
    # Ids are checked one at a time even within one update: "bc" still completes first.
    deltas, stop, _ = _stream(
        tok, [], _char_ids(tok, "xx abcd yy"), chunk_sizes=4, stop=["abcd", "bc"]
    )
    assert stop == "bc" and "".join(deltas) == "xx a"
    # Two stops completed by the same token: the one that starts first wins.
    deltas, stop, _ = _stream(
        tok,
        [],
        _char_ids(tok, "xx abcd yy"),
        chunk_sizes=1,
        stop=["cd", "abcd"],
        include_stop_str_in_output=True,
    )
    assert stop == "abcd" and "".join(deltas) == "xx abcd"


@pytest.mark.parametrize("name", NAMES)
def test_stop_strings_never_leak(name, toks):
    tok = toks[name]
    rng = random.Random(99)
    prompt = tok.encode("Question:")
    for trial in range(60):
        output = tok.encode(rng.choice(CORPUS) + " " + rng.choice(TEXTS), add_special_tokens=False)
        text = _reference_text(tok, prompt, output, True)
        start = rng.randrange(len(text))
        stops = [text[start : start + rng.randint(1, 5)], "never-there"]
        if trial % 3 == 0:
            stops.append(rng.choice(["e", "th", "ll", "。", "😀"]))
        include = trial % 2 == 1
        # Slow twin: re-decode after every token; the first token that completes a stop ends it.
        expected, expected_stop = text, None
        for k in range(1, len(output) + 1):
            partial = _reference_text(tok, prompt, output[:k], True)
            found = [(partial.find(s), s) for s in stops if s in partial]
            if found:
                index, expected_stop = min(found)
                expected = partial[: index + len(expected_stop) * include]
                break
        detok = IncrementalDetokenizer(tok, prompt, stop=stops, include_stop_str_in_output=include)
        emitted, stop = "", None
        for token_id in output:
            delta, stop = detok.update([token_id])
            emitted += delta
            assert expected.startswith(emitted), (stops, emitted, expected)
            held = detok.output_text[len(emitted) :]
            assert len(held) <= max(map(len, stops)) - 1 or stop
            assert not held or any(s.startswith(held) for s in stops) or stop
            if stop:
                break
        emitted += detok.flush()
        assert (emitted, stop) == (expected, expected_stop), stops


# --- import rules -------------------------------------------------------------------------------


def test_package_imports_no_torch():
    allowed_third_party = {"tokenizers", "jinja2"}
    lazy_third_party = {"gguf"}  # only inside the function that reads a GGUF file
    package = Path(__file__).resolve().parents[2] / "src" / "minerva" / "tokenizer"
    stdlib = set(sys.stdlib_module_names)
    for file in package.glob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if node not in tree.body and isinstance(node, ast.ImportFrom):
                if node.module in lazy_third_party:
                    continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert (
                    top in stdlib
                    or top in allowed_third_party
                    or name in ("minerva.errors",)
                    or name.startswith("minerva.tokenizer")
                ), (file.name, name)
