"""Continuous batching on a token budget. No torch.

One rule: each step, requests catch `num_computed_tokens` up towards `num_tokens` (plus the
tokens still pending on the device). Running requests go first (decodes and unfinished prefill
chunks), then waiting ones in arrival order. When KV blocks run out, the newest running request
is preempted and later recomputed. `schedule` advances `num_computed_tokens` (and marks the
token a caught-up request will sample as pending); `update` appends the sampled tokens.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from minerva.cache import KVCacheManager
from minerva.request import Request, RequestStatus, SchedulerOutput


class Scheduler:
    def __init__(
        self,
        kv_cache_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.kv = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

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

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            pending = req.num_pending_tokens
            num_new = min(req.num_tokens + pending - req.num_computed_tokens, budget)
            if num_new <= 0 or (pending and self._pending_is_last(req)):
                i += 1
                continue
            while not self.kv.allocate_slots(req, num_new):
                victim = self.running.pop()  # newest first
                self._preempt(victim)
                preempted.append(victim.request_id)
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
        out = SchedulerOutput(preempted_request_ids=preempted)
        now = time.monotonic()
        requests, counts, starts = out.requests, out.num_scheduled_tokens, out.num_computed_tokens
        for req, n in scheduled:
            start = req.num_computed_tokens
            requests.append(req)
            counts.append(n)
            starts.append(start)
            if start + n <= len(req.prompt_token_ids):
                out.num_prefill_tokens += n
            else:
                out.num_decode_tokens += n
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            req.num_computed_tokens = start + n
            if start + n == req.num_tokens + req.num_pending_tokens:
                req.num_pending_tokens += 1  # caught up: this step samples its next token
        return out

    def _pending_is_last(self, req: Request) -> bool:
        """A pending token that will end the request by length needs no step of its own."""
        pending = req.num_pending_tokens
        return bool(pending) and self._length_reached(
            req, req.num_output_tokens + pending, req.num_tokens + pending
        )

    def _length_reached(self, req: Request, num_output_tokens: int, num_tokens: int) -> bool:
        return num_output_tokens >= req.max_tokens or num_tokens >= self.max_model_len

    def _admit_waiting(self, scheduled: list[tuple[Request, int]], budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if req.num_pending_tokens:
                break  # preempted while a token was in flight: resume once it has arrived
            blocks, num_cached = self.kv.get_computed_blocks(req)
            num_new = req.num_tokens - num_cached
            if num_new > budget:
                if not self.chunked_prefill:
                    break
                num_new = budget
            if not self.kv.allocate_slots(req, num_new, blocks, num_cached):
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
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, out: SchedulerOutput, sampled_token_ids: list[int | None]) -> list[Request]:
        """Append the step's sampled tokens (no longer pending), finish requests that stop.

        Returns the requests that got a new token this step (finished ones included)."""
        updated = []
        for req, token in zip(out.requests, sampled_token_ids):
            if token is None or req.is_finished or req.request_id not in self.requests:
                continue  # no token, or finished meanwhile (abort, stop one step earlier)
            req.num_pending_tokens -= 1
            req.output_token_ids.append(token)
            updated.append(req)
            status = self._check_stop(req, token)
            if status is not None:
                self.finish_requests([req.request_id], status)
        return updated

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
