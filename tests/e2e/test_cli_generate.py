"""`minerva generate` and `minerva chat` as a user runs them: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minerva import LLM, SamplingParams
from tests.tiny_models import build_tiny_text_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_text_model(tmp_path_factory.mktemp("cli_model"), seed=9)


def minerva(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "minerva.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_generate_streams_the_same_text_as_the_api(model_dir):
    prompt = "The quick brown fox"
    r = minerva(
        "generate",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--ignore-eos",
        prompt,
    )
    assert r.returncode == 0, r.stderr
    llm = LLM(model=str(model_dir), device="cpu", dtype="float32", progress=False)
    expected = llm.generate(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[
        0
    ]
    assert r.stdout == expected.text + "\n"
    assert "tokens/s" in r.stderr and "12 tokens" in r.stderr


def test_generate_seeded_sampling_is_reproducible(model_dir):
    args = (
        "generate",
        "--model",
        str(model_dir),
        "--max-tokens",
        "10",
        "--seed",
        "3",
        "--temperature",
        "0.9",
        "--ignore-eos",
        "Hello",
    )
    a, b = minerva(*args), minerva(*args)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.strip()


def test_chat_uses_the_template(model_dir):
    r = minerva(
        "chat",
        "--model",
        str(model_dir),
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        stdin="hi there\n\n",
    )
    assert r.returncode == 0, r.stderr
    llm = LLM(model=str(model_dir), device="cpu", progress=False)
    expected = llm.chat(
        [{"role": "user", "content": "hi there"}], SamplingParams(max_tokens=6, temperature=0)
    )[0].text
    assert expected in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--block-size", "7"], "--block-size: must be a power of two"),
        (["--device", "tpu"], "device"),
    ],
)
def test_user_errors_are_one_clear_line(model_dir, args, message):
    full = (
        ["generate", *args]
        if args[0] == "--model"
        else ["generate", "--model", str(model_dir), *args]
    )
    r = minerva(*full, "hi")
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
