"""spec_bench.py's `pair` part on tiny random pairs that speak the demo tokenizer: greedy
speculation equals plain decoding, a draft equal to the target is always accepted, and the
held-out prompts are documents and chats of the demo family."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from minerva import LLM
from minerva.demo import demo_model_path
from minerva.tokenizer import Tokenizer
from tests.tiny_models import build_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import spec_pair  # noqa: E402


def demo_family(path: Path, seed: int) -> Path:
    """A tiny random Llama with the demo model's vocabulary and tokenizer files."""
    build_tiny_model(path, seed=seed, vocab_size=4096, max_position_embeddings=512)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_model_path() / name, path / name)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return demo_family(root / "target", 1), demo_family(root / "draft", 2)


@pytest.fixture(scope="module")
def prompts() -> list[tuple[str, list[int]]]:
    tok = Tokenizer.from_folder(demo_model_path())
    text = (demo_model_path() / "heldout.txt").read_text()
    return spec_pair.heldout_prompts(tok, text, 3)


def run_pair(target: Path, draft: Path, prompts, ks=(2,), k=2) -> dict:
    def make(folder: Path, **kw) -> LLM:
        return LLM(model=str(folder), device="cpu", dtype="float32", progress=False,
                   max_model_len=512, **kw)  # fmt: skip

    return spec_pair.part_pair(
        lambda **kw: make(target, **kw), lambda: make(draft), draft, prompts, list(ks), k,
        n=10, device="cpu", repeats=1,
    )  # fmt: skip


def test_prompts_are_held_out_documents_and_chats(prompts) -> None:
    tok = Tokenizer.from_folder(demo_model_path())
    kinds = [kind for kind, _ in prompts]
    assert kinds == ["doc", "chat", "chat"]
    doc = tok.decode(prompts[0][1])
    assert len(doc.split()) == spec_pair.DOC_WORDS and doc in " ".join(
        (demo_model_path() / "heldout.txt").read_text().split()
    )
    chat = tok.decode(prompts[1][1], skip_special_tokens=False)
    assert chat.startswith("<s><|user|>\n") and chat.endswith("</s>\n<|assistant|>\n")


def test_speculation_gives_plain_decodings_tokens(pair, prompts) -> None:
    result = run_pair(*pair, prompts)
    for mode in ("greedy", "sampled"):  # seeded sampling too: the same noise per token index
        equality = result[mode]["equal_to_plain"]
        assert equality["all_equal"], (mode, equality)
        assert set(equality) == {"k2", "k2_adaptive", "all_equal"}
        row = result[mode]["k2"]
        assert row["draft_tokens"] > 0
        assert row["acceptance_rate"] == row["accepted_tokens"] / row["draft_tokens"]
        assert len(row["acceptance_rate_per_position"]) == 2
        assert result[mode]["plain"]["speedup"] == 1.0
        assert "draft_tokens" not in result[mode]["plain"]  # no speculation there
    assert spec_pair.summary(result).count("\n") == 1 + 2 * 4


def test_a_draft_equal_to_the_target_is_always_accepted_greedy(pair, prompts) -> None:
    target = pair[0]
    result = run_pair(target, target, prompts[:1], ks=(3,), k=3)
    row = result["greedy"]["k3"]
    assert row["draft_tokens"] > 0 and row["acceptance_rate"] == 1.0, row
    assert row["acceptance_rate_per_position"] == [1.0, 1.0, 1.0]
    # Sampled: the greedy draft is kept when the target samples the same token.
    row = result["sampled"]["k3"]
    assert 0 <= row["accepted_tokens"] < row["draft_tokens"]
    assert result["sampled"]["equal_to_plain"]["all_equal"]


def test_first_difference() -> None:
    assert spec_pair.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert spec_pair.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert spec_pair.first_difference([1, 2], [1, 2, 3]) == 2
