"""Turns sampled tokens into RequestOutputs: incremental detokenization, stop strings, n > 1."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from minerva.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from minerva.request import Logprobs, Request
from minerva.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class ParentState:
    """A user request: its n child sequences and their text so far."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]
    detokenizers: list[IncrementalDetokenizer]
    completions: list[CompletionOutput]
    metrics: RequestMetrics
    num_finished: int = 0
    dirty: set[int] = field(default_factory=set)
    stream: bool = True
    """Report every new token; False: one output, when the request has finished."""
    embedding: list[float] | None = None
    """A pooling request's vector, once computed."""

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.children)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.child_to_parent: dict[str, tuple[ParentState, int]] = {}
        self._dirty: dict[str, ParentState] = {}  # parents with news since the last collect

    def add(
        self,
        prompt: str | None,
        prompt_token_ids: list[int],
        children: list[Request],
        parent_id: str,
        stream: bool = True,
        healed_text: str = "",
    ) -> None:
        """Track a request (``healed_text``: prompt text token healing backed up, which the
        output repeats first and the detokenizer drops). stream=False (offline generate) skips the per-step outputs that
        nobody reads: at 256 running requests building them was about a fifth of the engine's
        host work per step on a 2-core VM (benchmarks/host_overhead.py)."""
        detoks = []
        for child in children:
            p = child.sampling_params
            detoks.append(
                IncrementalDetokenizer(
                    self.tokenizer,
                    prompt_token_ids,
                    skip_special_tokens=p.skip_special_tokens,
                    stop=p.stop,
                    include_stop_str_in_output=p.include_stop_str_in_output,
                    skip_prefix=healed_text,
                )
                if self.tokenizer is not None and p.pooling is None
                else None
            )
        state = ParentState(
            request_id=parent_id,
            prompt=prompt,
            prompt_token_ids=prompt_token_ids,
            children=children,
            detokenizers=detoks,
            completions=[
                CompletionOutput(
                    index=i, logprobs=[] if c.sampling_params.logprobs is not None else None
                )
                for i, c in enumerate(children)
            ],
            metrics=RequestMetrics(arrival_time=children[0].arrival_time),
            stream=stream,
        )
        self.parents[parent_id] = state
        for i, child in enumerate(children):
            self.child_to_parent[child.request_id] = (state, i)

    def on_token(self, child: Request, token: int, logprobs: Logprobs | None) -> str | None:
        """Record a new token; returns the stop string it completed, if any."""
        state, i = self.child_to_parent[child.request_id]
        comp = state.completions[i]
        now = time.monotonic()
        if state.metrics.first_token_time is None:
            state.metrics.first_token_time = now
            state.metrics.first_scheduled_time = child.first_scheduled_time
        if child.first_token_time is None:
            child.first_token_time = now
        comp.token_ids.append(token)
        comp.delta_token_ids.append(token)
        if logprobs is not None and comp.logprobs is not None:
            comp.logprobs.append(logprobs)
        if state.stream:
            state.dirty.add(i)
            self._dirty[state.request_id] = state
        detok = state.detokenizers[i]
        if detok is None:
            return None
        delta, stop = detok.update([token])
        comp.delta_text += delta
        comp.text += delta
        return stop

    def on_pooled(self, child: Request, vector: list[float]) -> None:
        """Record a pooling request's vector (its only output)."""
        state, _ = self.child_to_parent[child.request_id]
        state.embedding = vector
        now = time.monotonic()
        state.metrics.first_scheduled_time = child.first_scheduled_time
        state.metrics.first_token_time = child.first_token_time = now

    def on_finished(self, child: Request, stop_string: str | None = None) -> None:
        state, i = self.child_to_parent.pop(child.request_id)
        comp = state.completions[i]
        detok = state.detokenizers[i]
        if detok is not None and stop_string is None:
            tail = detok.flush()
            comp.delta_text += tail
            comp.text += tail
        comp.finish_reason = child.status.finish_reason
        comp.stop_reason = stop_string if stop_string is not None else child.stop_reason
        state.num_finished += 1
        if state.stream:
            state.dirty.add(i)
        elif state.finished:  # the one output: every completion
            state.dirty.update(range(len(state.children)))
        if state.stream or state.finished:
            self._dirty[state.request_id] = state
        if state.finished:
            state.metrics.finished_time = time.monotonic()

    def collect(self) -> list[RequestOutput]:
        """One RequestOutput per request that changed since the last call (deltas reset)."""
        outputs = []
        dirty, self._dirty = self._dirty, {}
        for parent_id, state in dirty.items():
            comps = []
            for i in sorted(state.dirty) if len(state.dirty) > 1 else state.dirty:
                c = state.completions[i]
                comps.append(
                    CompletionOutput(
                        index=c.index,
                        text=c.text,
                        # The completion's own lists, not copies: a copy per request per
                        # step grew with the output (quadratic in its length). Unfinished
                        # outputs therefore see them grow; delta_* is what is new.
                        token_ids=c.token_ids,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                        logprobs=c.logprobs,
                        delta_text=c.delta_text,
                        delta_token_ids=c.delta_token_ids,
                    )
                )
                c.delta_text, c.delta_token_ids = "", []
            state.dirty.clear()
            outputs.append(
                RequestOutput(
                    request_id=parent_id,
                    prompt=state.prompt,
                    prompt_token_ids=state.prompt_token_ids,
                    outputs=comps,
                    finished=state.finished,
                    num_cached_tokens=max(state.children[0].num_cached_tokens, 0),
                    metrics=state.metrics,
                    embedding=state.embedding,
                )
            )
            if state.finished:
                del self.parents[parent_id]
        return outputs

    def __contains__(self, parent_id: str) -> bool:
        """True until the request's final output has been collected."""
        return parent_id in self.parents

    def children(self, parent_id: str) -> list[Request]:
        """The sequences of a request still being tracked (empty once collected)."""
        state = self.parents.get(parent_id)
        return state.children if state is not None else []
