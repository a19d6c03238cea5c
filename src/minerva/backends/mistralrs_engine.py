"""MistralrsEngine: mistral.rs's streamed chat completions as a TokenEngine.

One reader thread per request iterates the package's blocking stream and turns each chunk into
a token event (the id recovered from the chunk's bytes and top logprobs); the engine thread
collects them. Abort drops the stream, which cancels the sequence inside mistral.rs at its next
token. The Runner's methods borrow it mutably, so every call goes through one lock.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minerva.backends.token_engine import StepSummary, TokenEngine, TokenEvent
from minerva.errors import RequestError
from minerva.loader import ModelSource
from minerva.request import Logprobs, Request
from minerva.sampling_params import SamplingParams

if TYPE_CHECKING:
    from minerva.config import EngineConfig

logger = logging.getLogger(__name__)

NAME = "mistralrs"
_TOP = 5  # top logprobs asked for: the sampled token's id is found among them or by its bytes
_POLL_S = 0.05  # longest wait for a token before the engine thread looks at its commands


@dataclass
class _Failed:
    """A request mistral.rs failed (its reader's exception)."""

    request_id: str
    reason: str


class _Reader:
    """One request's stream, read on its own thread; ``stop`` ends it after the next chunk."""

    def __init__(self, request: Request, chat_request: Any, engine: MistralrsEngine) -> None:
        self.request = request
        self.num_top = request.sampling_params.logprobs or 0
        self.stopped = threading.Event()
        self._engine = engine
        self._thread = threading.Thread(
            target=self._run, args=(chat_request,), name=f"mistralrs-{request.request_id}",
            daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _run(self, chat_request: Any) -> None:
        events, rid = self._engine.events, self.request.request_id
        gate = self._engine.prompt_gate
        try:
            if gate is not None:
                gate.acquire()  # released at this prompt's first token: one prompt per step
                if self.stopped.is_set():
                    return  # aborted while it waited: never sent
            with self._engine.runner_lock:
                stream = self._engine.runner.send_chat_completion_request(chat_request)
            finished = False
            for chunk in stream:
                if gate is not None:
                    gate.release()
                    gate = None
                if self.stopped.is_set():
                    break  # dropping the stream cancels the sequence in mistral.rs
                for choice in chunk.choices:
                    event = self._engine.event_of(rid, choice, self.num_top)
                    finished |= event.finished
                    events.put(event)
            del stream
            if not (finished or self.stopped.is_set()):  # or it would stay live for ever
                events.put(_Failed(rid, "its stream ended without a finish reason"))
        except Exception as e:  # noqa: BLE001 - this request fails, not the engine
            if not self.stopped.is_set():
                events.put(_Failed(rid, f"{type(e).__name__}: {e}"))
        finally:
            if gate is not None:  # no token came: the next prompt may go
                gate.release()


class MistralrsEngine(TokenEngine):
    """Each request is one streamed mistral.rs chat completion; see the module docstring."""

    name = NAME

    def __init__(
        self,
        config: EngineConfig,
        source: ModelSource,
        max_model_len: int,
        runner: Any,
        module: Any,
        workdir: Path,
        one_prompt_at_a_time: bool = False,
    ) -> None:
        super().__init__(config, source, max_model_len)
        self.runner = runner
        self.runner_lock = threading.Lock()
        """The package's Runner methods borrow it mutably: one call at a time, or they fail."""
        self.prompt_gate = threading.Lock() if one_prompt_at_a_time else None
        """mistral.rs 0.9.5 with ISQ fails a step that prefills several prompts ("input tensor is
        not contiguous"): with this gate a request is sent only once the previous one's first
        token came back, so prompts are prefilled one at a time (decodes still batch)."""
        self.events: queue.Queue[TokenEvent | _Failed] = queue.Queue()
        self._module = module
        self._workdir = workdir
        self._readers: dict[str, _Reader] = {}
        self._ids_of_bytes: dict[bytes, list[int]] | None = None
        self._warned_seed = False

    def unsupported(self, params: SamplingParams) -> str | None:
        if params.min_tokens:
            return "min_tokens"
        return None

    def _start(self, request: Request) -> None:
        p = request.sampling_params
        if p.seed is not None and not p.greedy and not self._warned_seed:
            logger.warning("mistral.rs has one seed per engine (--seed): request seeds "
                           "are not honoured")  # fmt: skip
            self._warned_seed = True
        chat = self._module.ChatCompletionRequest(
            model="default",
            messages=self._prompt_text(request.prompt_token_ids),
            max_tokens=request.max_tokens,
            # Every knob explicit: a None takes the model's generation_config.json value
            # (its repetition_penalty, top_k ...), which the request already resolved.
            temperature=0.0 if p.greedy else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k or self.model_config.vocab_size,
            min_p=p.min_p,
            repetition_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty,
            logit_bias=dict(p.logit_bias) if p.logit_bias else None,
            ignore_eos=True,  # Minerva's stop rules end it (EOS included), then cancel
            logprobs=True,
            top_logprobs=max(_TOP, p.logprobs or 0),
            stream=True,
        )
        self._readers[request.request_id] = _Reader(request, chat, self)

    def _prompt_text(self, ids: list[int]) -> str:
        """The prompt's exact text (the raw decode, without clean-up of spaces)."""
        backend = getattr(self.tokenizer, "backend", None)
        if backend is not None:
            return backend.decode(list(ids), skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False)  # type: ignore[union-attr]

    def check_prompt(self, prompt_token_ids: list[int]) -> None:
        """mistral.rs must tokenize the prompt's text back to the same ids."""
        with self.runner_lock:
            ids = self.runner.tokenize_text(self._prompt_text(prompt_token_ids), False, None)
        if ids != list(prompt_token_ids):
            raise RequestError(
                "the mistralrs backend takes prompts as text, and these token ids do not come "
                "back from their text unchanged: send the prompt as text, or use another backend",
                param="prompt",
            )

    def _cancel(self, request: Request) -> None:
        reader = self._readers.pop(request.request_id, None)
        if reader is not None:
            reader.stopped.set()

    def _advance(self) -> list[TokenEvent]:
        try:
            first = self.events.get(timeout=_POLL_S)
        except queue.Empty:
            self.last_scheduler_output = StepSummary(num_seqs=0)
            return []
        items = [first]
        while True:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        events = []
        for item in items:
            if isinstance(item, _Failed):
                self._readers.pop(item.request_id, None)
                self.fail_request(item.request_id, item.reason)
                continue
            events.append(item)
            if item.finished:
                self._readers.pop(item.request_id, None)
        self.last_scheduler_output = StepSummary(0, len(events), len(self._readers))
        return events

    def event_of(self, request_id: str, choice: Any, num_top: int) -> TokenEvent:
        """A streamed chunk as a token event (on the reader's thread)."""
        lp, finished = choice.logprobs, choice.finish_reason is not None
        if lp is None:  # a closing chunk without a token
            return TokenEvent(request_id, None, None, finished=True)
        token = self._token_id(lp)
        return TokenEvent(request_id, token, _logprobs(token, lp, num_top), finished)

    def _token_id(self, lp: Any) -> int:
        """The sampled token: the top-logprob entry with its logprob and bytes, else the one
        vocabulary entry with its bytes."""
        raw = bytes(lp.bytes or b"") or lp.token.encode()
        candidates = self._bytes_table().get(raw, [])
        for top in lp.top_logprobs:
            if top.logprob == lp.logprob and (not candidates or top.token in candidates):
                return int(top.token)
        if candidates:
            return candidates[0]
        with self.runner_lock:
            ids = self.runner.tokenize_text(lp.token, False, None)
        if len(ids) == 1:
            return ids[0]
        raise ValueError(f"mistral.rs sampled a token Minerva cannot identify: {raw!r}")

    def _bytes_table(self) -> dict[bytes, list[int]]:
        if self._ids_of_bytes is None:  # a benign race: two threads build the same table
            from minerva.structured import vocabulary_of  # noqa: PLC0415

            vocab = vocabulary_of(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
            table: dict[bytes, list[int]] = {}
            for i, piece in enumerate(vocab.token_bytes):
                key = piece or (self.tokenizer.id_to_piece(i) or "").encode()
                table.setdefault(key, []).append(i)
            self._ids_of_bytes = table
        return self._ids_of_bytes

    def close(self) -> None:
        for reader in self._readers.values():
            reader.stopped.set()
        self._readers.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _logprobs(token: int, lp: Any, num_top: int) -> Logprobs:
    """The chunk's logprobs as Minerva's (rank: 1 + the top entries likelier than it)."""
    tops = list(lp.top_logprobs)
    rank = 1 + sum(1 for t in tops if t.logprob > lp.logprob)
    tops = tops[:num_top]
    return Logprobs(token, lp.logprob, rank, [t.token for t in tops], [t.logprob for t in tops])
