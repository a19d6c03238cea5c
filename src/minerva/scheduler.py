"""Continuous batching on a token budget. No torch.

One rule: each step, requests catch `num_computed_tokens` up towards `num_tokens` (plus the
tokens still pending on the device). Running requests go first (decodes and unfinished prefill
chunks), then waiting ones in arrival order. When KV blocks run out, the newest running request
is preempted and later recomputed. `schedule` advances `num_computed_tokens` (and marks the
token a caught-up request will sample as pending); `update` appends the sampled tokens.

The runner holds its own copy of each running request: `schedule` sends a request's full data
once (`NewRequestData`, again after a preemption) and per-step deltas after that, plus the ids
of requests that ended so the runner drops them. Draft tokens (`Request.spec_token_ids`, from a
proposer) are scheduled as extra tokens after a caught-up request's last one; `update` takes
1 + accepted tokens and rolls `num_computed_tokens` back by the drafts that were rejected.
A pooling request (embeddings) computes its prompt, samples nothing and ends when the runner
returns its vector (`finish_pooled`).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Sequence

from minerva.cache import KVCacheManager
from minerva.request import NewRequestData, Request, RequestStatus, SchedulerOutput


class Scheduler:
    def __init__(
        self,
        kv_cache_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
        num_lookahead_tokens: int = 0,
    ) -> None:
        """num_lookahead_tokens: KV slots each request holds past the tokens it computes (a
        draft model writes the K/V of its proposals there before the next schedule)."""
        self.kv = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.chunked_prefill = enable_chunked_prefill
        self.num_lookahead_tokens = num_lookahead_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self._finished_ids: list[str] = []  # ended since the last step: the runner drops them
        self._step_ids = itertools.count()
        self._in_flight: dict[int, list[Request]] = {}  # step_id -> its requests, until update

    # -- queue management -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.waiting.append(request)
        self.requests[request.request_id] = request

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> list[Request]:
        """End requests (abort, stop string) wherever they are; their blocks are freed at once."""
        finished = []
        for rid in request_ids:
            req = self.requests.pop(rid, None)
            if req is None:
                continue
            if req in self.running:
                self.running.remove(req)
            else:
                self.waiting.remove(req)
            req.status = status
            self.kv.free(req)
            self._forget_in_runner(req)
            finished.append(req)
        return finished

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ---------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[str] = []
        spec: dict[str, list[int]] = {}

        i, max_model_len = 0, self.max_model_len
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            pending = req.num_pending_tokens
            num_outputs = len(req.output_token_ids) + pending  # counting the pending ones
            num_tokens = len(req.prompt_token_ids) + num_outputs
            num_new = min(num_tokens - req.num_computed_tokens, budget)
            # A request that needs its previous token on the host waits until it is read; a
            # pending token that ends the request by length needs no step of its own.
            if num_new <= 0 or (
                pending
                and (
                    req.needs_host_tokens
                    or num_outputs >= req.max_tokens
                    or num_tokens >= max_model_len
                )
            ):
                i += 1
                continue
            if req.spec_token_ids and not pending:
                num_new += self._take_spec_tokens(req, num_new, budget, spec)
            lookahead = self._lookahead(req.num_computed_tokens + num_new)
            while not self.kv.allocate_slots(req, num_new + lookahead):
                victim = self.running.pop()  # newest first
                self._preempt(victim)
                preempted.append(victim.request_id)
                spec.pop(victim.request_id, None)
                if victim is req:
                    break
            else:
                scheduled.append((req, num_new))
                budget -= num_new
                i += 1
                continue
            break  # the current request itself was preempted: nothing later can fit

        if not preempted:
            budget = self._admit_waiting(scheduled, budget)

        # Decode rows (one query token) first: attention backends batch them together.
        scheduled.sort(key=lambda item: item[1] != 1)
        out = SchedulerOutput(
            preempted_request_ids=preempted,
            scheduled_spec_token_ids=spec,
            step_id=next(self._step_ids),
        )
        if not scheduled:  # nothing runs: the runner hears of the preemptions next time
            self._finished_ids.extend(preempted)
            return out
        out.finished_request_ids, self._finished_ids = self._finished_ids, []
        now = time.monotonic()
        ids, counts, cached = out.request_ids, out.num_scheduled_tokens, out.cached_requests
        cached_ids, cached_starts = cached.request_ids, cached.num_computed_tokens
        cached_blocks = cached.new_block_ids
        num_prefill = num_decode = 0
        for req, n in scheduled:
            start, rid, block_ids = req.num_computed_tokens, req.request_id, req.block_ids
            ids.append(rid)
            counts.append(n)
            sent, num_blocks = req.num_runner_blocks, len(block_ids)
            if sent < 0:
                out.new_requests.append(_new_request_data(req))
            else:
                cached_ids.append(rid)
                cached_starts.append(start)
                cached_blocks.append(block_ids[sent:])
            req.num_runner_blocks = num_blocks
            end = start + n
            num_prompt = len(req.prompt_token_ids)
            if end <= num_prompt:
                num_prefill += n
            else:
                num_decode += n
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            req.num_computed_tokens = end
            if spec:
                end -= len(spec.get(rid, ()))
            if end == num_prompt + len(req.output_token_ids) + req.num_pending_tokens:
                if not req.pooling:  # a pooling request samples nothing: update finishes it
                    req.num_pending_tokens += 1  # caught up: this step samples its next token
        out.num_prefill_tokens, out.num_decode_tokens = num_prefill, num_decode
        self._in_flight[out.step_id] = [req for req, _ in scheduled]
        return out

    def _take_spec_tokens(
        self, req: Request, num_new: int, budget: int, spec: dict[str, list[int]]
    ) -> int:
        """Schedule a caught-up request's draft tokens after its last one, as many as the
        budget, max_tokens and max_model_len leave room for; returns how many."""
        if req.num_computed_tokens + num_new != req.num_tokens:
            return 0  # still prefilling: drafts wait until the request samples
        room = min(
            budget - num_new,
            req.max_tokens - req.num_output_tokens - 1,
            self.max_model_len - req.num_tokens - 1,
        )
        drafts, req.spec_token_ids = req.spec_token_ids[: max(room, 0)], []
        if drafts:
            spec[req.request_id] = drafts
        return len(drafts)

    def _lookahead(self, num_computed_after: int) -> int:
        """Lookahead slots past a step's tokens, never past max_model_len (no block table
        outgrows what the CUDA graphs hold)."""
        return max(0, min(self.num_lookahead_tokens, self.max_model_len - num_computed_after))

    def _length_reached(self, req: Request, num_output_tokens: int, num_tokens: int) -> bool:
        return num_output_tokens >= req.max_tokens or num_tokens >= self.max_model_len

    def _admit_waiting(self, scheduled: list[tuple[Request, int]], budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if req.num_pending_tokens:
                break  # preempted while a token was in flight: resume once it has arrived
            # Pooling needs every prompt token's hidden state: no prefix-cache hits.
            blocks, num_cached = ([], 0) if req.pooling else self.kv.get_computed_blocks(req)
            num_new = req.num_tokens - num_cached
            if num_new > budget:
                if not self.chunked_prefill:
                    break
                num_new = budget
            lookahead = self._lookahead(num_cached + num_new)
            if not self.kv.allocate_slots(req, num_new + lookahead, blocks, num_cached):
                break
            self.waiting.popleft()
            req.num_computed_tokens = num_cached
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = num_cached
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled.append((req, num_new))
            budget -= num_new
        return budget

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.num_runner_blocks = -1  # the runner drops it (preempted_request_ids)
        req.spec_token_ids = []
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _forget_in_runner(self, req: Request) -> None:
        if req.num_runner_blocks >= 0:
            self._finished_ids.append(req.request_id)
            req.num_runner_blocks = -1

    def update(
        self, out: SchedulerOutput, sampled_token_ids: Sequence[Sequence[int]]
    ) -> list[tuple[Request, Sequence[int]]]:
        """Append the step's sampled tokens (no longer pending), finish requests that stop.

        ``sampled_token_ids[i]`` are the tokens request ``out.request_ids[i]`` sampled: none,
        or its accepted draft tokens plus one. Rejected drafts roll ``num_computed_tokens``
        back: their K/V was computed from wrong inputs and is overwritten by the next step.
        Returns each request that got tokens and the tokens it kept (cut at a stop)."""
        requests = self._in_flight.pop(out.step_id, ())
        spec = out.scheduled_spec_token_ids
        updated = []
        live = self.requests
        for req, tokens in zip(requests, sampled_token_ids):
            if not tokens or req.is_finished or req.request_id not in live:
                continue  # no token, or finished meanwhile (abort, stop one step earlier)
            req.num_pending_tokens -= 1
            if spec:
                num_rejected = len(spec.get(req.request_id, ())) - (len(tokens) - 1)
                if num_rejected < 0:
                    raise ValueError(f"{req.request_id}: more tokens than drafts + 1")
                req.num_computed_tokens -= num_rejected
            if len(tokens) == 1:  # the usual step: one token
                token = tokens[0]
                req.output_token_ids.append(token)
                status = self._check_stop(req, token)
                if status is not None:
                    self.finish_requests([req.request_id], status)
                updated.append((req, tokens))
            else:
                updated.append((req, self._append(req, tokens)))
        return updated

    def finish_pooled(self, request_ids: Iterable[str]) -> list[Request]:
        """End pooling requests whose vector a step returned (those still live)."""
        return self.finish_requests(request_ids, RequestStatus.FINISHED_STOPPED)

    def _append(self, req: Request, tokens: Sequence[int]) -> Sequence[int]:
        """Append tokens up to the first that stops the request; returns those appended."""
        for k, token in enumerate(tokens):
            req.output_token_ids.append(token)
            status = self._check_stop(req, token)
            if status is not None:
                self.finish_requests([req.request_id], status)
                return tokens[: k + 1]
        return tokens

    def _check_stop(self, req: Request, token: int) -> RequestStatus | None:
        params = req.sampling_params
        if req.num_output_tokens >= params.min_tokens:
            if token in req.eos_token_ids and not params.ignore_eos:
                req.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token in params.stop_token_ids:
                req.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if self._length_reached(req, req.num_output_tokens, req.num_tokens):
            return RequestStatus.FINISHED_LENGTH
        return None


def _new_request_data(req: Request) -> NewRequestData:
    """Everything the runner needs about a request it does not hold (the lists are copies,
    except the prompt, which nobody changes)."""
    return NewRequestData(
        request_id=req.request_id,
        prompt_token_ids=req.prompt_token_ids,
        output_token_ids=list(req.output_token_ids),
        sampling_params=req.sampling_params,
        seed=req.seed,
        eos_token_ids=req.eos_token_ids,
        block_ids=list(req.block_ids),
        num_computed_tokens=req.num_computed_tokens,
        structured=req.structured,
    )
