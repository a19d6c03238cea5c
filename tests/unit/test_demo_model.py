"""The bundled demo model: it is complete, loads from the package, generates like transformers
does on the same weights, scores the model card's held-out perplexity, and backs the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.demo import DEMO_MODEL_FILES, demo_model_path
from minerva.errors import ModelLoadError
from minerva.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder() -> Path:
    return demo_model_path()


@pytest.fixture(scope="module")
def llm(folder: Path) -> LLM:
    return LLM(model=str(folder), device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def hf_model(folder: Path):
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def test_folder_is_complete_and_small(folder: Path) -> None:
    for name in (*DEMO_MODEL_FILES, "README.md", "loss_curve.png", "heldout.txt"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (folder / "model.safetensors").stat().st_size <= 12_600_000
    assert (folder / "heldout.txt").stat().st_size <= 200_000
    tokenizer = Tokenizer.from_folder(folder)
    assert tokenizer.vocab_size == config["vocab_size"]


def test_package_data_ships_the_folder() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["minerva"]
    assert "demo_model/*" in patterns


def test_missing_folder_names_the_fix(monkeypatch, tmp_path: Path) -> None:
    import minerva.demo as demo

    monkeypatch.setattr(demo.resources, "files", lambda package: tmp_path)
    with pytest.raises(ModelLoadError, match="demo model folder .* is missing.*--model"):
        demo.demo_model_path()
    (tmp_path / "demo_model").mkdir()
    (tmp_path / "demo_model" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="lacks generation_config.json, model.safetensors"):
        demo.demo_model_path()


def test_parameter_count_matches_the_card(folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", framework="pt") as f:
        # Tied embeddings: the checkpoint has no lm_head.weight, so each parameter counts once.
        num_params = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    assert 5_000_000 <= num_params <= 15_000_000
    card = (folder / "README.md").read_text()
    assert f"| parameters | {num_params:,} " in card


def test_tokenizer_matches_transformers_and_round_trips(folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_folder(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["The database stores rows.", "naïve 日本語 🎉\n\n\tx = 1  ", "<|user|>\nhi</s>"]
    for text in texts:
        assert ours.encode(text) == ref.encode(text)
        ids = ours.encode(text, add_special_tokens=False)
        assert ours.decode(ids, skip_special_tokens=False) == text  # byte-level: lossless
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is SQL?"},
    ]
    rendered = ours.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == "<s><|system|>\nBe brief.</s>\n<|user|>\nWhat is SQL?</s>\n<|assistant|>\n"
    assert rendered == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_greedy_generation_matches_transformers(llm: LLM, hf_model) -> None:
    prompt = "The database"
    out = llm.generate(prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
    ids = torch.tensor([llm.tokenizer.encode(prompt)])
    with torch.no_grad():
        ref = hf_model.generate(
            ids, max_new_tokens=24, min_new_tokens=24, do_sample=False, repetition_penalty=1.0
        )
    assert out.outputs[0].token_ids == ref[0, ids.shape[1] :].tolist()
    text = out.outputs[0].text
    assert sum(c.isalpha() for c in text) > 0.6 * len(text)  # words, not noise


def _minerva_heldout_nll(llm: LLM, ids: list[int], bos_id: int) -> tuple[float, int]:
    """The model card's protocol (scripts/train_demo_model.py: heldout_nll) through Minerva:
    each chunk of context - 1 tokens after a BOS is scored in one prefill (LLMEngine.score)."""
    context = llm.engine.max_model_len
    total, count = 0.0, 0
    for start in range(0, len(ids), context - 1):
        chunk = ids[start : start + context - 1]
        logprobs = llm.engine.score([bos_id, *chunk])  # logprob of each chunk token
        total -= sum(logprobs)
        count += len(chunk)
    return total, count


def test_heldout_perplexity_is_low_and_matches_the_card(llm: LLM, folder: Path) -> None:
    text = (folder / "heldout.txt").read_text(encoding="utf-8")
    tokenizer = llm.tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 5_000
    total, count = _minerva_heldout_nll(llm, ids, tokenizer.bos_token_id)
    nll = total / count
    assert nll < 0.5 * math.log(tokenizer.vocab_size)  # uniform guessing scores log(vocab)
    card = (folder / "README.md").read_text()
    match = re.search(r"Held-out perplexity: \*\*([0-9.]+)\*\*", card)
    assert match, "README.md must state the held-out perplexity"
    assert math.exp(nll) == pytest.approx(float(match.group(1)), rel=0.01)


def test_cli_generate_without_model_uses_the_demo() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "minerva.cli", "generate", "The database", "--max-tokens", "12"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bundled demo model" in proc.stderr
    assert "tokens/s" in proc.stderr
    assert len(proc.stdout.strip()) > 0
