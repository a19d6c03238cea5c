"""ModelRunner: SchedulerOutput -> tensors -> forward -> sample on device -> RunnerOutput.

The runner never reads the scheduler's Request objects: it keeps its own copy of each request
in a persistent `InputBatch`, built from the SchedulerOutput's new-request data and deltas,
and appends the tokens it samples to it. The only host sync of a step is reading the sampled ids (and logprobs, when asked) once, in
`wait`. `launch` queues a step and returns at once, so the engine can queue step N+1 before it
reads step N's tokens; tokens the host has not read yet go into the next step's inputs straight
from the device.

A grammar row's mask depends on the token before it, but only the sampling at the end of a step
needs the mask, not its forward. So when step N+1 has a grammar row whose previous token step N
has not handed to the host yet, `launch` queues only N+1's forward and keeps its logits; `wait`
of step N advances the matchers (and on CUDA starts N+1's masks on the mask thread), and
`sample` (the engine calls it once it has read N) queues N+1's sampling behind its forward.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from minerva.platform import copy_to_device
from minerva.request import (
    CachedRequestData,
    Logprobs,
    NewRequestData,
    RunnerOutput,
    SchedulerOutput,
)
from minerva.runner.cuda_graphs import CudaGraphRunner
from minerva.runner.input_batch import CachedRequestState, HostInputs, InputBatch, to_device
from minerva.runner.prefill_graphs import PrefillGraphRunner
from minerva.runner.token_masks import TokenMasks
from minerva.runner.verify_graphs import VerifyGraphRunner
from minerva.sampler import Sampler, SamplingMetadata
from minerva.sampling_params import SamplingParams
from minerva.spec.rejection_sampler import accept_drafts


@dataclass
class LaunchedStep:
    """A step whose GPU work is queued; `ModelRunner.wait` turns it into a RunnerOutput."""

    out: SchedulerOutput
    host: HostInputs
    token_ids: torch.Tensor | None = None  # [num_sampling] on the host (pinned on CUDA)
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # host copies
    done: torch.cuda.Event | None = None  # recorded after the copies to the host
    pooled: tuple[list[str], torch.Tensor] | None = None  # finished pooling ids, [n, hidden]
    masks: Future[np.ndarray | None] | None = None  # grammar masks being filled (TokenMasks)
    logits: torch.Tensor | None = None
    """Kept while its sampling waits for grammar masks that need the previous step's tokens
    (ModelRunner.sample queues it once that step has been read); None once it is queued."""
    after: LaunchedStep | None = None  # the step whose tokens a waiting sampling needs read
    read: bool = False  # `wait` has handed its tokens to the host

    @property
    def sampled(self) -> bool:
        """Whether its sampling is queued (False while it waits: `logits` kept)."""
        return self.logits is None


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        device: torch.device,
        graphs: CudaGraphRunner | None = None,
        prefill_graphs: PrefillGraphRunner | None = None,
        verify_graphs: VerifyGraphRunner | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.graphs = graphs
        self.prefill_graphs = prefill_graphs
        self.verify_graphs = verify_graphs
        self.sampler = Sampler()
        self.input_batch = InputBatch(block_size)
        self.captured_logits: list[torch.Tensor] | None = None  # tests: keep each step's logits
        # The latest launch's sampled ids (on the device): the next step's inputs for tokens
        # the host has not read yet (each request's `sample_index` says which one).
        self._last_sampled: torch.Tensor | None = None
        self._arange: torch.Tensor | None = None
        self._range: list[int] = []
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        self.masks = TokenMasks(device, vocab_size)  # grammar masks (runner/token_masks.py)
        self._latest: LaunchedStep | None = None  # the last step launched
        self._waiting: LaunchedStep | None = None  # a launched step whose sampling waits

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Run one step and wait for its sampled tokens."""
        return self.wait(self.launch(out))

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput) -> LaunchedStep:
        """Queue one step's forward and sampling on the device; returns before it finishes.
        Its sampling waits (`sample`) where a grammar row's previous token is still unread."""
        if self._waiting is not None:  # its sampled ids are this step's pending inputs
            self.sample(self._waiting)
        self.input_batch.update(out)
        host = self.input_batch.prepare(out)
        pending = self._pending_inputs(host)
        step = LaunchedStep(out, host)
        behind = self.input_batch.num_matchers and _matchers_behind(host)
        if self.input_batch.num_matchers and not behind:
            step.masks = self.masks.start(host)
        if host.pooling is None:
            logits = self._forward(host, pending)
        else:  # needs hidden states: the eager forward
            logits, step.pooled = self._forward_pooling(host, pending)
        if self.captured_logits is not None:
            self.captured_logits.append(logits.detach().cpu().clone())
        if host.sampling_states:
            if behind:  # the masks need the previous step's tokens: sample once it is read
                step.logits, step.after = logits, self._latest
                self._waiting = step
            else:
                self._sample(logits, step)
        self._latest = step
        return step

    @torch.inference_mode()
    def sample(self, step: LaunchedStep) -> None:
        """Queue the sampling of a step launched before its grammar rows' previous tokens were
        read (a no-op for any other step): its masks now follow the matchers `wait` advanced."""
        if step.sampled:
            return
        if step.after is not None and not step.after.read:
            raise RuntimeError("a step's grammar masks need the previous step read first")
        logits, step.logits, step.after = step.logits, None, None
        if self._waiting is step:
            self._waiting = None
        self._sample(logits, step)

    def _forward(self, host: HostInputs, pending) -> torch.Tensor:
        """Logits [num_sampling, vocab] of a step: a captured graph where one fits, else eager."""
        decode_bucket = prefill_bucket = verify_bucket = None
        if self.graphs is not None and host.is_pure_decode:
            decode_bucket = self.graphs.bucket_for(host.num_seqs)
        elif self.verify_graphs is not None and host.num_logits is not None:
            verify_bucket = self.verify_graphs.bucket_for(host)
        # A verify step needs several logits rows per sequence, which the one-row prefill graphs
        # do not give: it replays a verify graph or runs eagerly.
        if decode_bucket is None and self.prefill_graphs is not None and host.num_logits is None:
            prefill_bucket = self.prefill_graphs.bucket_for(host)
        if decode_bucket is not None:
            return self.graphs.run(host, decode_bucket, pending)
        if verify_bucket is not None:
            return self.verify_graphs.run(host, verify_bucket)
        if prefill_bucket is not None:
            logits = self.prefill_graphs.run(host, prefill_bucket, pending)
            return logits if host.sampling_states else logits[:0]  # as eager: sampling rows
        inputs = to_device(host, self.device)
        if pending is not None:
            inputs.input_ids.index_copy_(0, *pending)
        return self.model(
            inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta, inputs.logits_indices
        )  # [num_sampling, vocab]

    def _forward_pooling(
        self, host: HostInputs, pending
    ) -> tuple[torch.Tensor, tuple[list[str], torch.Tensor] | None]:
        """Logits of the sampling rows, and the pooling requests' hidden states summed into
        their accumulators; returns the ids and vectors [n, hidden] of those that finish
        (mean over the prompt, L2-normalised)."""
        rows = host.pooling
        inputs = to_device(host, self.device)
        if pending is not None:
            inputs.input_ids.index_copy_(0, *pending)
        hidden_indices = copy_to_device(torch.from_numpy(rows.token_indices), self.device)
        logits, hidden = self.model.forward_hidden(
            inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta,
            inputs.logits_indices, hidden_indices,
        )  # fmt: skip
        segments = torch.repeat_interleave(
            torch.arange(len(rows.counts), device=self.device),
            torch.tensor(rows.counts, device=self.device),
        )  # [num_pooling_tokens]: each token's request
        sums = torch.zeros(len(rows.counts), hidden.shape[-1], device=self.device)
        sums.index_add_(0, segments, hidden.float())  # [num_pooling, hidden]
        ids, vectors = [], []
        for j, (state, done) in enumerate(zip(rows.states, rows.finishes)):
            total = sums[j] if state.pooled_sum is None else state.pooled_sum + sums[j]
            state.pooled_sum = total
            if done:
                ids.append(state.request_id)
                vectors.append(total / len(state.prompt_token_ids))
        if not ids:
            return logits, None
        pooled = torch.nn.functional.normalize(torch.stack(vectors), dim=-1)
        return logits, (ids, _to_host(pooled))

    def _pending_inputs(self, host: HostInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(input positions, their token ids on the device) for tokens still pending."""
        if not host.pending_indices:
            return None
        slots, sources = host.pending_indices, host.pending_sources
        n = len(slots)
        if len(self._range) < n:
            self._range = list(range(max(n, 256)))
            self._arange = torch.arange(len(self._range), device=self.device)
        if slots == self._range[:n] and sources == slots:
            # The usual decode step: same requests, same order, one token each.
            return self._arange[:n], self._last_sampled[:n]
        where = copy_to_device(torch.tensor([slots, sources]), self.device)
        return where[0], self._last_sampled[where[1]]

    def warm_up(self, num_tokens: int = 16) -> None:
        """One prefill and one decode step on the reserved null block, so the first real request
        does not pay for first-call initialisation (kernels, allocator, thread pools)."""
        params = SamplingParams(max_tokens=2, temperature=1.0, top_p=0.9, seed=0)
        blocks = [0] * -(-(num_tokens + 1) // self.block_size)  # block 0 holds no real data
        new = NewRequestData("warm-up", [0] * num_tokens, [], params, 0, frozenset(), blocks, 0)
        self.execute(SchedulerOutput(["warm-up"], [num_tokens], new_requests=[new]))
        cached = CachedRequestData(["warm-up"], [num_tokens], [[]])
        self.execute(SchedulerOutput(["warm-up"], [1], cached_requests=cached))
        self.input_batch.remove("warm-up")

    @torch.inference_mode()
    def score(self, token_ids: list[int], block_ids: list[int]) -> list[float]:
        """Log-probability of each of `token_ids` given the ones before it (one prefill into
        the allocated `block_ids`; the runner keeps nothing). Returns len(token_ids) - 1 values."""
        logprobs, targets = self._prompt_log_softmax(token_ids, block_ids)
        return logprobs.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()

    @torch.inference_mode()
    def prompt_logprobs(
        self, token_ids: list[int], block_ids: list[int], num_top: int
    ) -> list[Logprobs]:
        """score, with each token's rank and the `num_top` most likely tokens at its place
        (OpenAI's echo with logprobs). Returns len(token_ids) - 1 entries."""
        logprobs, targets = self._prompt_log_softmax(token_ids, block_ids)  # [n - 1, vocab]
        chosen = logprobs.gather(1, targets.unsqueeze(1))  # [n - 1, 1]
        ranks = ((logprobs > chosen).sum(1) + 1).tolist()
        top_values, top_ids = logprobs.topk(num_top, dim=-1)  # [n - 1, num_top]
        return [
            Logprobs(token, value, rank, ids, values)
            for token, value, rank, ids, values in zip(
                targets.tolist(), chosen.squeeze(1).tolist(), ranks,
                top_ids.tolist(), top_values.tolist(),
            )
        ]  # fmt: skip

    def _prompt_log_softmax(
        self, token_ids: list[int], block_ids: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-softmax [n - 1, vocab] at each position but the last, the next ids [n - 1])."""
        n = len(token_ids)
        batch = InputBatch(self.block_size, 1, len(block_ids))  # apart from the running ones
        params = SamplingParams()
        batch.add(NewRequestData("score", token_ids, [], params, 0, frozenset(), block_ids, 0))
        inputs = to_device(batch.prepare(SchedulerOutput(["score"], [n])), self.device)
        every = torch.arange(n - 1, device=self.device)
        logits = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta, every)
        return torch.log_softmax(logits, dim=-1), inputs.input_ids[1:]

    def _sample(self, logits: torch.Tensor, step: LaunchedStep) -> None:
        states, rows = step.host.sampling_states, step.host.sampling_rows
        num_logits = step.host.num_logits
        if num_logits is None:
            for j, state in enumerate(states):
                state.sample_index = j
        else:  # its last logits row (a pending token is always a request's only one)
            for state, end in zip(states, itertools.accumulate(num_logits)):
                state.sample_index = end - 1
        if all(s.plain_greedy for s in states):  # the usual greedy batch: no per-row data
            meta = SamplingMetadata.plain_greedy_rows(
                logits.shape[0], logits.shape[-1], self.device
            )
        else:
            vocab = logits.shape[-1]
            if num_logits is None:
                meta = self._sampling_metadata(states, rows, step.out, vocab)
            else:
                meta = self._verify_metadata(step.host, step.out, vocab)
            meta.token_bitmask = self.masks.bitmask(step.host, vocab, step.masks)
        result = self.sampler(logits, meta)
        self._last_sampled = result.token_ids
        step.token_ids = _to_host(result.token_ids)
        if result.logprobs is not None:
            step.logprobs = (
                _to_host(result.logprobs),
                _to_host(result.logprob_token_ids),
                _to_host(result.ranks),
            )
        if self.device.type == "cuda":
            step.done = torch.cuda.Event()
            step.done.record()

    def _sampling_metadata(
        self, states: list[CachedRequestState], rows: list[int], out: SchedulerOutput, vocab: int
    ) -> SamplingMetadata:
        counts = out.num_scheduled_tokens
        return SamplingMetadata.build(
            params=[s.sampling_params for s in states],
            seeds=[s.seed for s in states],
            # The output index of the token sampled now: the position after the step's last.
            token_indices=[
                s.num_computed_tokens + counts[row] - len(s.prompt_token_ids)
                for s, row in zip(states, rows)
            ],
            prompt_token_ids=[s.prompt_token_ids for s in states],
            output_token_ids=[s.output_token_ids for s in states],
            vocab_size=vocab,
            device=self.device,
            eos_token_ids=[s.eos_token_ids for s in states],
        )

    def _verify_metadata(
        self, host: HostInputs, out: SchedulerOutput, vocab: int
    ) -> SamplingMetadata:
        """One sampling row per logits row: a request verifying k drafts gets k + 1, the j-th
        sampling output token index t + j as if the drafts before it were already output
        (penalties and min_tokens see them; the noise is the one plain decoding would use)."""
        counts = out.num_scheduled_tokens
        params, seeds, indices, prompts, outputs, eos = [], [], [], [], [], []
        for s, row, drafts in zip(host.sampling_states, host.sampling_rows, host.draft_token_ids):
            k = len(drafts)
            first = s.num_computed_tokens + counts[row] - k - len(s.prompt_token_ids)
            for j in range(k + 1):
                params.append(s.sampling_params)
                seeds.append(s.seed)
                indices.append(first + j)
                prompts.append(s.prompt_token_ids)
                with_drafts = s.sampling_params.has_penalties and j
                outputs.append(
                    s.output_token_ids + drafts[:j] if with_drafts else s.output_token_ids
                )
                eos.append(s.eos_token_ids)
        return SamplingMetadata.build(
            params=params,
            seeds=seeds,
            token_indices=indices,
            prompt_token_ids=prompts,
            output_token_ids=outputs,
            vocab_size=vocab,
            device=self.device,
            eos_token_ids=eos,
        )

    def wait(self, step: LaunchedStep) -> RunnerOutput:
        """Block until `step`'s sampled ids reach the host (the step's one sync); the runner's
        copy of each request that sampled gets its token."""
        if not step.sampled:
            self.sample(step)
        out = step.out
        num_seqs = len(out.request_ids)
        logprobs: list[list[Logprobs] | None] = [None] * num_seqs
        if step.token_ids is None:
            sampled: list[list[int]] = [[] for _ in range(num_seqs)]
        else:
            if step.done is not None:
                step.done.synchronize()
            token_ids = step.token_ids.tolist()
            if step.host.num_logits is not None:
                sampled = _accepted(step, token_ids, num_seqs, logprobs)
            else:
                sampled = self._read_tokens(step, token_ids, num_seqs, logprobs)
        result = RunnerOutput(
            request_ids=out.request_ids,
            sampled_token_ids=sampled,
            logprobs=logprobs,
        )
        if step.pooled is not None:
            if step.done is None and self.device.type == "cuda":
                torch.cuda.current_stream().synchronize()  # nothing sampled: no event recorded
            ids, vectors = step.pooled
            result.pooled = dict(zip(ids, vectors.tolist()))
        step.read = True
        waiting = self._waiting
        if waiting is not None and waiting.after is step:  # its matchers are up to date now
            waiting.masks = self.masks.start(waiting.host)
        return result

    @staticmethod
    def _read_tokens(
        step: LaunchedStep, token_ids: list[int], num_seqs: int, logprobs: list
    ) -> list[list[int]]:
        """One token per sampling row: the runner's copy of each request (and its grammar
        matcher) gets it; logprobs[row] its logprobs."""
        states, rows = step.host.sampling_states, step.host.sampling_rows
        for state, token in zip(states, token_ids):
            state.output_token_ids.append(token)
            if state.matcher is not None:
                state.matcher.accept(token)
        if len(rows) == num_seqs:  # every row sampled (rows are 0..num_seqs-1)
            sampled = [[token] for token in token_ids]
        else:
            sampled = [[] for _ in range(num_seqs)]
            for row, token in zip(rows, token_ids):
                sampled[row].append(token)
        if step.logprobs is not None:
            _read_logprobs(step, logprobs)
        return sampled


def _matchers_behind(host: HostInputs) -> bool:
    """Whether a grammar row of this step feeds a token the previous step sampled and the host
    has not read yet (its matcher has not seen it). A sampling row whose computed count reaches
    its known tokens computes a pending token, its only input this step."""
    return any(
        s.matcher is not None and s.num_computed_tokens >= s.num_tokens
        for s in host.sampling_states
    )


def _accepted(
    step: LaunchedStep, token_ids: list[int], num_seqs: int, logprobs: list[list[Logprobs] | None]
) -> list[list[int]]:
    """A verify step's tokens per row: each request's sampled tokens up to its first rejected
    draft (accept_drafts); the runner's copy of each request gets them, logprobs[row] theirs."""
    host = step.host
    sampled: list[list[int]] = [[] for _ in range(num_seqs)]
    read = step.logprobs is not None
    values = ids = ranks = None
    if read:
        values, ids, ranks = (t.tolist() for t in step.logprobs)
    first = 0
    for state, row, n, drafts in zip(
        host.sampling_states, host.sampling_rows, host.num_logits, host.draft_token_ids
    ):
        tokens = accept_drafts(token_ids[first : first + n], drafts)
        state.output_token_ids.extend(tokens)
        if state.matcher is not None:
            for token in tokens:
                state.matcher.accept(token)
        sampled[row] = tokens
        k = state.sampling_params.logprobs
        if read and k is not None:
            logprobs[row] = [
                _logprobs(values[j], ids[j], ranks[j], k) for j in range(first, first + len(tokens))
            ]
        first += n
    return sampled


def _logprobs(values: list[float], ids: list[int], rank: int, k: int) -> Logprobs:
    """One position's Logprobs from its row of the sampler's [n, 1 + k] outputs."""
    return Logprobs(
        token_id=ids[0],
        logprob=values[0],
        rank=rank,
        top_token_ids=ids[1 : 1 + k],
        top_logprobs=values[1 : 1 + k],
    )


def _read_logprobs(step: LaunchedStep, logprobs: list[list[Logprobs] | None]) -> None:
    """Fill logprobs[row] for each sampling row that asked for them."""
    values, ids, ranks = (t.tolist() for t in step.logprobs)
    for j, (state, row) in enumerate(zip(step.host.sampling_states, step.host.sampling_rows)):
        k = state.sampling_params.logprobs
        if k is not None:
            logprobs[row] = [_logprobs(values[j], ids[j], ranks[j], k)]


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Start copying a device tensor to the host without waiting (pinned memory on CUDA)."""
    if t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)
