"""The CLI refuses bad sampling flags before loading anything, draws a fresh seed per run,
names the bundled model `demo`, and prints --help without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minerva import cli
from minerva.demo import demo_model_path, resolve_model_arg

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "minerva.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip


BAD_FLAGS = [
    (["--max-tokens", "0"], "--max-tokens: must be at least 1, got 0"),
    (["--max-tokens", "-5"], "--max-tokens: must be at least 1"),
    (["--temperature", "-1"], "--temperature: must be >= 0"),
    (["--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["--min-p", "2"], "--min-p: must be in [0, 1]"),
    (["--repetition-penalty", "0"], "--repetition-penalty: must be > 0"),
    (["--stop", ""], "--stop: strings must not be empty"),
]


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_sampling_flags_fail_before_loading(monkeypatch, capsys, command, flags, message):
    def no_loading(args):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(cli, "_open_backend", no_loading)
    prompt = ["hi"] if command == "generate" else []
    code = cli.main([command, "--model", "/nonexistent/model", *flags, *prompt])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"minerva: error: {message}")


def test_bad_flag_is_reported_before_a_missing_model_in_a_real_process():
    r = run_cli("generate", "--model", "/nonexistent/model", "--top-p", "7", "hi")
    assert r.returncode == 1
    assert r.stderr.strip() == "minerva: error: --top-p: must be in (0, 1], got 7.0"


def test_seed_is_fresh_per_run_and_printed_with_verbose():
    args = ["generate", "--model", "demo", "--max-tokens", "24", "--temperature", "1", "-v", "Hi"]
    runs = [run_cli(*args) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    seeds = [next(ln for ln in r.stderr.splitlines() if ln.startswith("[seed ")) for r in runs]
    assert seeds[0] != seeds[1]
    # The printed seed reproduces the text.
    seed = seeds[0].removeprefix("[seed ").removesuffix("]")
    again = run_cli(*args[:-2], "--seed", seed, "Hi")
    assert again.stdout == runs[0].stdout


@pytest.mark.parametrize("command", [["generate"], ["bench", "latency"]])
def test_a_plain_file_as_model_says_what_it_is(tmp_path, command):
    plain = tmp_path / "notes.txt"
    plain.write_text("not a model")
    r = run_cli(*command, "--model", str(plain), *(["hi"] if command == ["generate"] else []))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is a file (.txt, no GGUF header)" in r.stderr and ".gguf file" in r.stderr


def test_demo_names_the_bundled_model(tmp_path, monkeypatch):
    from minerva.server.serve import served_model_name

    assert resolve_model_arg("demo") == demo_model_path()
    assert resolve_model_arg(None) == demo_model_path()
    assert served_model_name(None, "demo") == served_model_name(None, None) == "minerva-demo"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a local folder named demo wins
    assert resolve_model_arg("demo") == Path("demo")


def test_help_does_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from minerva.cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['bench', 'serve', '--help'],"
        " ['doctor', '--help'], ['quantize', '--help'], ['serve', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": "src"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _flags(parser, path=()):
    """(command path, flag, help) of every option of ``parser`` and its subcommands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*path, name))
        elif (
            action.option_strings
            and not action.required
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            yield " ".join(path), action.option_strings[-1], action.help or ""


def test_every_flag_shows_its_default():
    missing = [
        f"{path} {flag}" for path, flag, text in _flags(cli.build_parser())
        if "default" not in text.lower()
    ]  # fmt: skip
    assert missing == []
