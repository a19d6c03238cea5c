"""`minerva chat`: an interactive conversation that survives its own length.

When the history no longer fits the context, the oldest turns are dropped (the system prompt
stays) with a notice; Ctrl-C stops the current reply, Ctrl-D or /exit ends the chat. A reasoning
model's thinking (server/reasoning.py, the parser chosen from its chat template) is shown between
"Thinking..." and "...done thinking." (dimmed in a terminal), as Ollama's CLI shows it, and kept
in the history as the message's ``reasoning_content``, which the template decides whether to use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from minerva.server.reasoning import ReasoningStream, reasoning_start, resolve_parser

HELP = """Commands:
  /help    this text
  /reset   forget the conversation (keeps the system prompt; asks first)
  /exit    end the chat (also /bye, Ctrl-D)
Ctrl-C stops the reply being written; the chat goes on."""

QUIT_COMMANDS = ("/exit", "/quit", "/bye")


@dataclasses.dataclass
class ReplyStats:
    """One reply's token count and timings, for the --verbose stats line."""

    num_tokens: int
    start: float
    first: float | None
    end: float
    finish_reason: str | None

    def line(self) -> str:
        ttft = (self.first - self.start) if self.first else 0.0
        span = self.end - self.first if self.first else 0.0
        decode = (self.num_tokens - 1) / span if self.num_tokens > 1 and span > 0 else 0.0
        return (
            f"[{self.num_tokens} tokens, finish={self.finish_reason}, time to first token "
            f"{ttft * 1000:.0f} ms, {decode:.1f} tokens/s decode]"
        )


class ChatSession:
    """The conversation and its fitting into the model's context; I/O goes through callables
    so tests can drive it with scripted input."""

    def __init__(
        self,
        runner: Any,
        make_params: Callable[[], Any],
        system: str | None = None,
        verbose: bool = False,
        read: Callable[[str], str] = input,
        out: TextIO | None = None,
        err: TextIO | None = None,
        reasoning_parser: str = "auto",
    ) -> None:
        self.runner, self.make_params = runner, make_params
        self.parser = resolve_parser(reasoning_parser, runner.backend.chat_template)
        self.system, self.verbose, self.read = system, verbose, read
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.messages: list[dict[str, str]] = self._fresh()

    def _fresh(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _notice(self, text: str) -> None:
        print(f"[{text}]", file=self.err, flush=True)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Prompt, answer, repeat until Ctrl-D or /exit."""
        with _ctrl_c_raises():
            self._run()

    def _run(self) -> None:
        self._notice("chat with the model; /help for commands, Ctrl-D to quit")
        while True:
            try:
                line = self.read(">>> ")
            except EOFError:
                print(file=self.err)
                return
            except KeyboardInterrupt:  # at the prompt: drop the line, keep the chat
                print(file=self.err)
                self._notice("Ctrl-D or /exit to quit")
                continue
            text = line.strip()
            if not text:
                continue
            try:
                if not text.startswith("/"):
                    self.reply(line)
                elif not self._command(text):
                    return
            except KeyboardInterrupt:  # landed outside the reply's stream (fitting, a command)
                print(file=self.err)
                self._notice("stopped; Ctrl-D or /exit to quit")

    def _command(self, text: str) -> bool:
        """Run a /command; False means end the chat."""
        name = text.split()[0].lower()
        if name in QUIT_COMMANDS:
            return False
        if name == "/help":
            print(HELP, file=self.err)
        elif name == "/reset":
            self._reset()
        else:
            self._notice(f"unknown command {name}; /help lists the commands")
        return True

    def _reset(self) -> None:
        try:
            answer = self.read("Forget the whole conversation? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer.strip().lower() in ("y", "yes"):
            self.messages = self._fresh()
            self._notice("conversation reset")
        else:
            self._notice("kept the conversation")

    # -- one reply --------------------------------------------------------------------
    def reply(self, text: str) -> str | None:
        """Answer one user message; the reply (partial if stopped), or None if it cannot fit.
        A Ctrl-C before the reply streams (or after) leaves the conversation as it was."""
        before = list(self.messages)
        try:
            return self._reply(text)
        except KeyboardInterrupt:
            self.messages = before
            raise

    def _reply(self, text: str) -> str | None:
        self.messages.append({"role": "user", "content": text})
        params = self.make_params()
        fitted = self.fit(params.max_tokens)
        if fitted is None:
            self.messages.pop()
            return None
        prompt, max_tokens = fitted
        if max_tokens != params.max_tokens:
            params = dataclasses.replace(params, max_tokens=max_tokens)
        reply, thinking, stats = self._stream(prompt, params)
        message = {"role": "assistant", "content": reply}
        if thinking:
            message["reasoning_content"] = thinking
        self.messages.append(message)
        if self.verbose:
            print(stats.line(), file=self.err)
        return reply

    def _stream(self, prompt: list[int], params: Any) -> tuple[str, str, ReplyStats]:
        """Stream one reply to `out`: (answer, thinking, stats)."""
        n, start, first, reason = 0, time.perf_counter(), None, None
        in_reasoning = reasoning_start(self.runner.backend, self.parser, prompt)
        split = None if in_reasoning is None else ReasoningStream(in_reasoning)
        shown = _Shown(self.out, split)
        deltas = _first_completion(self.runner.stream(prompt, params))
        try:
            for delta in deltas:
                if first is None and delta.delta_token_ids:
                    first = time.perf_counter()
                n += len(delta.delta_token_ids)
                shown.feed(delta.delta_text)
                reason = delta.finish_reason or reason
        except KeyboardInterrupt:  # stop this reply only; closing the stream aborts it
            deltas.close()
            reason = "stopped"
            shown.finish()
            self.out.write("\n")
            self._notice("reply stopped")
        else:
            shown.finish()
            self.out.write("\n")
        self.out.flush()
        stats = ReplyStats(n, start, first, time.perf_counter(), reason)
        return shown.answer, shown.thinking, stats

    def fit(self, max_tokens: int | None) -> tuple[list[int], int | None] | None:
        """The prompt ids of the conversation, dropping the oldest turns until prompt plus
        reply fit the context; (ids, max_tokens), the reply shortened if even the last message
        alone leaves less room; None when the last message alone does not fit."""
        limit = self.runner.backend.max_model_len
        want = max_tokens or 1  # None: the reply takes whatever room is left
        dropped = 0
        prompt = self.runner.backend.apply_chat_template(self.messages)
        while len(prompt) + want > limit and self._drop_oldest_turn():
            dropped += 1
            prompt = self.runner.backend.apply_chat_template(self.messages)
        if dropped:
            self._notice(
                f"the conversation outgrew the {limit}-token context: dropped the "
                + (f"{dropped} oldest turns" if dropped > 1 else "oldest turn")
                + (" (the system prompt stays)" if self.system else "")
            )
        room = limit - len(prompt)
        if room < 1:
            self._notice(
                f"that message is {len(prompt)} tokens with the chat template; the context "
                f"holds {limit}: send a shorter one (or start with a larger --max-model-len)"
            )
            return None
        if max_tokens is not None and room < max_tokens:
            self._notice(f"the reply is limited to {room} tokens by the context")
            return prompt, room
        return prompt, max_tokens

    def _drop_oldest_turn(self) -> bool:
        """Remove the oldest user message and the replies after it; never the system prompt
        or the message being answered. False when nothing is left to drop."""
        start = 1 if self.system else 0
        users = [i for i, m in enumerate(self.messages) if i >= start and m["role"] == "user"]
        if len(users) < 2:
            return False
        del self.messages[start : users[1]]
        return True


class _Shown:
    """Writes a reply as it streams: its thinking between "Thinking..." and "...done
    thinking." (dimmed in a terminal), then the answer; keeps both texts."""

    def __init__(self, out: TextIO, split: ReasoningStream | None) -> None:
        self.out, self.split = out, split
        self.answer = self.thinking = ""
        tty = getattr(out, "isatty", lambda: False)()
        self.dim, self.plain = ("\x1b[2m", "\x1b[0m") if tty else ("", "")

    def feed(self, text: str) -> None:
        if self.split is None:
            self._write("", text)
        else:
            self._write(*self.split.feed(text))

    def finish(self) -> None:
        if self.split is not None:
            self._write(*self.split.finish())
        if self.thinking and not self.answer:  # stopped while thinking: close the block
            self.out.write(f"{self.plain}\n...done thinking.")

    def _write(self, thinking: str, answer: str) -> None:
        if thinking:
            if not self.thinking:
                self.out.write(f"{self.dim}Thinking...\n")
            self.thinking += thinking
            self.out.write(thinking)
        if answer:
            if self.thinking and not self.answer:
                self.out.write(f"\n...done thinking.{self.plain}\n\n")
            self.answer += answer
            self.out.write(answer)
        self.out.flush()


def _first_completion(outputs: Iterator[Any]) -> Iterator[Any]:
    """The deltas of completion 0; closing it closes (and so aborts) the request's stream."""
    try:
        for out in outputs:
            yield from (c for c in out.outputs if c.index == 0)
    finally:
        close = getattr(outputs, "close", None)
        if close:
            close()


def enable_line_editing() -> Callable[[], None]:
    """readline editing and a history file when stdin is a terminal; returns the saver."""
    if not sys.stdin.isatty():
        return lambda: None
    try:
        import readline  # noqa: PLC0415 - stdlib, absent on some platforms (Windows)
    except ImportError:
        return lambda: None
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    history = state / "minerva" / "chat_history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass

    return save


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt for the chat's lifetime, even where the process started
    with SIGINT ignored (a shell's background job, nohup): the chat promises that Ctrl-C stops
    a reply, so it must hear it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    if before in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if before in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGINT, before)
