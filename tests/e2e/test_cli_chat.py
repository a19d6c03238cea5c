"""`minerva chat` on the bundled demo model: a conversation longer than the context goes on
(oldest turns dropped with a notice, the system prompt kept), Ctrl-C stops one reply, /reset
asks first, Ctrl-D ends cleanly."""

from __future__ import annotations

import _thread
import contextlib
import io
import os
import subprocess
import sys

import pytest

from minerva.chat import ChatSession
from minerva.cli import _open_backend, _sampling_params, build_parser

MESSAGES = [
    "hello there",
    "what is a shell command",
    "tell me more about it please",
    "and how do I list files",
    "what about hidden files too",
    "thanks, one more question",
]


def minerva(*args: str, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "minerva.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_chat_past_the_context_keeps_going():
    stdin = "".join(m + "\n" for m in MESSAGES)
    r = minerva(
        "chat", "--model", "demo", "--max-model-len", "64", "--max-tokens", "16",
        "--temperature", "0", "--system", "be brief", stdin=stdin,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "error" not in r.stderr
    assert "outgrew the 64-token context" in r.stderr
    assert r.stdout.count(">>> ") == len(MESSAGES) + 1  # every message answered, then Ctrl-D
    assert "tokens/s" not in r.stderr  # the stats line is for --verbose


def test_chat_verbose_prints_seed_and_stats():
    r = minerva("chat", "--model", "demo", "--max-tokens", "4", "-v", stdin="hi\n")
    assert r.returncode == 0, r.stderr
    assert "[seed " in r.stderr and "tokens/s decode]" in r.stderr


@pytest.fixture(scope="module")
def runner():
    args = build_parser().parse_args(["chat", "--max-model-len", "64", "--device", "cpu"])
    r = _open_backend(args)
    yield r
    r.close()


def session(runner, lines, system=None, max_tokens=16, **kwargs):
    args = build_parser().parse_args(
        ["chat", "--max-tokens", str(max_tokens), "--temperature", "0", "--ignore-eos"]
    )
    feed = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    err = io.StringIO()
    chat = ChatSession(
        kwargs.pop("wrap", lambda r: r)(runner),
        lambda: _sampling_params(runner.backend, args),
        system, read=read, out=io.StringIO(), err=err, **kwargs,
    )  # fmt: skip
    chat.run()
    return chat, err.getvalue()


def test_oldest_turns_go_first_and_the_system_prompt_stays(runner):
    chat, err = session(runner, MESSAGES, system="be brief")
    assert "dropped the oldest turn" in err
    assert chat.messages[0] == {"role": "system", "content": "be brief"}
    assert chat.messages[-2] == {"role": "user", "content": MESSAGES[-1]}
    assert chat.messages[-1]["role"] == "assistant" and chat.messages[-1]["content"]
    assert {"role": "user", "content": MESSAGES[0]} not in chat.messages
    prompt = runner.backend.apply_chat_template(chat.messages[:-1])
    assert len(prompt) + 16 <= runner.backend.max_model_len


def test_a_message_too_long_alone_is_refused_and_the_chat_goes_on(runner):
    chat, err = session(runner, ["word " * 200, "hello"])
    assert "send a shorter one" in err
    assert [m["content"] for m in chat.messages if m["role"] == "user"] == ["hello"]


def test_reset_asks_first(runner):
    chat, err = session(runner, ["hello", "/reset", "n", "/reset", "y", "again"], system="s")
    assert "kept the conversation" in err and "conversation reset" in err
    assert [m["content"] for m in chat.messages if m["role"] != "assistant"] == ["s", "again"]


def test_help_and_unknown_commands_do_not_reach_the_model(runner):
    chat, err = session(runner, ["/help", "/nope", "/exit", "never read"])
    assert "/reset" in err and "unknown command /nope" in err
    assert chat.messages == []


class InterruptingRunner:
    """Raises Ctrl-C (SIGINT's KeyboardInterrupt) in the main thread during the first reply."""

    def __init__(self, runner) -> None:
        self.runner, self.backend, self.calls = runner, runner.backend, 0

    def stream(self, prompt, params):
        self.calls += 1
        for i, out in enumerate(self.runner.stream(prompt, params)):
            if self.calls == 1 and i == 2:
                _thread.interrupt_main()
            yield out


def test_ctrl_c_stops_the_reply_not_the_chat(runner):
    chat, err = session(runner, ["first", "second"], max_tokens=24, wrap=InterruptingRunner)
    assert "reply stopped" in err
    first, second = chat.messages[1]["content"], chat.messages[3]["content"]
    assert len(runner.backend.encode(first)) < 24
    assert chat.messages[2] == {"role": "user", "content": "second"}
    # The second reply is whole and as a fresh run gives it: the stopped one left nothing behind.
    prompt = runner.backend.apply_chat_template(chat.messages[:3])
    params = runner.backend.default_sampling_params(max_tokens=24, temperature=0, ignore_eos=True)
    outs = list(runner.stream(prompt, params))
    assert second == "".join(c.delta_text for o in outs for c in o.outputs)
    assert len(runner.backend.encode(second)) >= 20


class InterruptedFit:
    """Raises Ctrl-C while the first message's prompt is built, before any token streams."""

    def __init__(self, runner) -> None:
        self.runner, self.backend, self.calls = runner, self, 0

    def __getattr__(self, name: str):
        return getattr(self.runner.backend, name)

    def apply_chat_template(self, messages):
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.runner.backend.apply_chat_template(messages)

    def stream(self, prompt, params):
        return self.runner.stream(prompt, params)


def test_ctrl_c_before_the_reply_streams_keeps_the_chat_as_it_was(runner):
    chat, err = session(runner, ["first", "second"], system="s", wrap=InterruptedFit)
    assert "stopped; Ctrl-D or /exit to quit" in err
    assert [m["content"] for m in chat.messages if m["role"] != "assistant"] == ["s", "second"]
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty")
def test_in_a_terminal_ctrl_c_at_the_prompt_and_ctrl_d_end_cleanly(tmp_path):
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: minerva chat on a terminal, history under tmp_path
        os.environ.update(PYTHONPATH="src", XDG_STATE_HOME=str(tmp_path))
        os.execv(sys.executable, [sys.executable, "-m", "minerva.cli", "chat", "--model", "demo"])
    seen = b""

    def wait_for(text: bytes, after: int = 0, timeout: float = 120) -> None:
        nonlocal seen
        end = time.monotonic() + timeout
        while text not in seen[after:] and time.monotonic() < end:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    return
        assert text in seen[after:], seen.decode(errors="replace")

    def asleep_in_readline(timeout: float = 120) -> None:
        """Wait until the child's main thread sleeps (readline's select: after printing the
        prompt it holds no GIL and waits on nothing else). A SIGINT between the prompt and
        that select is only seen by CPython's readline after the next line is entered."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "S":
                    return
            time.sleep(0.01)

    wait_for(b">>> ")
    os.write(fd, b"/help\n")
    wait_for(b"the chat goes on.")  # the help's last line; then wait for the next prompt
    wait_for(b">>> ", after=seen.index(b"the chat goes on."))
    asleep_in_readline()
    os.write(fd, b"\x03")  # Ctrl-C at the prompt: the chat goes on
    wait_for(b"Ctrl-D or /exit to quit")
    wait_for(b">>> ", after=seen.index(b"Ctrl-D or /exit to quit"))
    asleep_in_readline()  # a ^D before readline sets the terminal up is lost with cooked mode
    os.write(fd, b"\x04")  # Ctrl-D: a clean end
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        seen += os.read(fd, 65536)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"Traceback" not in seen and b"Exception ignored" not in seen
    assert (tmp_path / "minerva" / "chat_history").read_text().strip().endswith("/help")


def test_ctrl_c_is_heard_where_the_process_started_with_sigint_ignored(runner):
    # a shell's background job (and nohup) starts with SIGINT ignored: the chat still stops a
    # reply on Ctrl-C, and gives the process its ignored SIGINT back when it ends
    import signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        chat, err = session(runner, ["first", "second"], max_tokens=24, wrap=InterruptingRunner)
        assert "reply stopped" in err
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_reasoning_models_thinking_is_shown_apart_and_kept_apart(runner):
    """A reply forced (regex) to be a think block then an answer, as a Qwen3 writes it: the
    thinking is printed between the markers, the answer after, and the history holds them
    apart; a stream stopped by max_tokens inside the block still closes it."""
    import dataclasses

    from minerva.sampling_params import StructuredOutputs

    args = build_parser().parse_args(["chat", "--max-tokens", "64", "--temperature", "0"])
    forced = StructuredOutputs(regex="<think>\nfirst a plan\n</think>\n\nthe answer")

    def make_params(max_tokens=64):
        params = _sampling_params(runner.backend, args)
        return dataclasses.replace(params, structured=forced, max_tokens=max_tokens)

    out = io.StringIO()
    lines = iter(["hello"])
    chat = ChatSession(runner, make_params, read=lambda _: next(lines), out=out,
                       err=io.StringIO(), reasoning_parser="qwen3")  # fmt: skip
    with pytest.raises(StopIteration):
        chat._run()
    assert out.getvalue().endswith(
        "Thinking...\nfirst a plan\n...done thinking.\n\nthe answer\n"
    )  # no escape codes: not a terminal
    assert chat.messages[-1] == {
        "role": "assistant",
        "content": "the answer",
        "reasoning_content": "first a plan",
    }
    out = io.StringIO()
    for cut in range(1, 40):  # the shortest reply that stops inside the thinking
        out = io.StringIO()
        chat = ChatSession(runner, lambda n=cut: make_params(max_tokens=n), out=out,
                           err=io.StringIO(), reasoning_parser="qwen3")  # fmt: skip
        reply = chat.reply("hi")  # a cut "<thi" is plain text: no block was opened
        if chat.messages[-1].get("reasoning_content"):
            break
    assert reply == ""
    thought = chat.messages[-1]["reasoning_content"]
    assert "first a plan".startswith(thought) and thought != "first a plan"
    assert out.getvalue() == f"Thinking...\n{thought}\n...done thinking.\n"
