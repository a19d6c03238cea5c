"""ModelRunner: SchedulerOutput -> tensors -> forward -> sample on device -> RunnerOutput.

The only host sync of a step is reading the sampled ids (and logprobs, when asked) once, in
`wait`. `launch` queues a step and returns at once, so the engine can queue step N+1 before it
reads step N's tokens; tokens the host has not read yet go into the next step's inputs straight
from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minerva.platform import copy_to_device
from minerva.request import Logprobs, Request, RunnerOutput, SchedulerOutput
from minerva.runner.cuda_graphs import CudaGraphRunner
from minerva.runner.input_batch import HostInputs, build_host_inputs, to_device
from minerva.runner.prefill_graphs import PrefillGraphRunner
from minerva.sampler import Sampler, SamplingMetadata
from minerva.sampling_params import SamplingParams


@dataclass
class LaunchedStep:
    """A step whose GPU work is queued; `ModelRunner.wait` turns it into a RunnerOutput."""

    out: SchedulerOutput
    host: HostInputs
    token_ids: torch.Tensor | None = None  # [num_sampling] on the host (pinned on CUDA)
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # host copies
    done: torch.cuda.Event | None = None  # recorded after the copies to the host


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        device: torch.device,
        graphs: CudaGraphRunner | None = None,
        prefill_graphs: PrefillGraphRunner | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.graphs = graphs
        self.prefill_graphs = prefill_graphs
        self.sampler = Sampler()
        self.captured_logits: list[torch.Tensor] | None = None  # tests: keep each step's logits
        # The latest launch's sampled ids (on the device) and the requests they belong to:
        # the next step's inputs for tokens the host has not read yet.
        self._last_sampled: torch.Tensor | None = None
        self._last_requests: list[Request] = []
        self._arange: torch.Tensor | None = None

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Run one step and wait for its sampled tokens."""
        return self.wait(self.launch(out))

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput) -> LaunchedStep:
        """Queue one step's forward and sampling on the device; returns before it finishes."""
        host = build_host_inputs(out, self.block_size)
        pending = self._pending_inputs(host)
        decode_bucket = prefill_bucket = None
        if self.graphs is not None and host.is_pure_decode:
            decode_bucket = self.graphs.bucket_for(host.num_seqs)
        if decode_bucket is None and self.prefill_graphs is not None:
            prefill_bucket = self.prefill_graphs.bucket_for(host)
        if decode_bucket is not None:
            logits = self.graphs.run(host, decode_bucket, pending)
        elif prefill_bucket is not None:
            logits = self.prefill_graphs.run(host, prefill_bucket, pending)
            logits = logits if host.sampling_requests else logits[:0]  # as eager: sampling rows
        else:
            inputs = to_device(host, self.device)
            if pending is not None:
                inputs.input_ids.index_copy_(0, *pending)
            logits = self.model(
                inputs.input_ids,
                inputs.positions,
                self.kv_caches,
                inputs.meta,
                inputs.logits_indices,
            )  # [num_sampling, vocab]
        if self.captured_logits is not None:
            self.captured_logits.append(logits.detach().cpu().clone())
        step = LaunchedStep(out, host)
        if host.sampling_requests:
            self._sample(logits, step)
        return step

    def _pending_inputs(self, host: HostInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(input positions, their token ids on the device) for tokens still pending."""
        if not host.pending_requests:
            return None
        last, reqs = self._last_sampled, host.pending_requests
        n = len(reqs)
        if reqs == self._last_requests[:n] and host.pending_indices[-1] == n - 1:
            # The usual decode step: same requests, same order, one token each.
            if self._arange is None or len(self._arange) < n:
                self._arange = torch.arange(max(n, 256), device=self.device)
            return self._arange[:n], last[:n]
        rows = {id(r): j for j, r in enumerate(self._last_requests)}
        where = torch.tensor([host.pending_indices, [rows[id(r)] for r in reqs]])
        where = copy_to_device(where, self.device)
        return where[0], last[where[1]]

    def warm_up(self, num_tokens: int = 16) -> None:
        """One prefill and one decode step on the reserved null block, so the first real request
        does not pay for first-call initialisation (kernels, allocator, thread pools)."""
        params = SamplingParams(max_tokens=2, temperature=1.0, top_p=0.9, seed=0)
        req = Request("warm-up", [0] * num_tokens, params)
        req.block_ids = [0] * -(-(num_tokens + 1) // self.block_size)  # block 0 holds no real data
        req.num_pending_tokens = 1  # as the scheduler marks the token a step samples
        first = self.execute(SchedulerOutput(requests=[req], num_scheduled_tokens=[num_tokens]))
        req.num_computed_tokens = num_tokens
        req.output_token_ids.append(first.sampled_token_ids[0])
        self.execute(SchedulerOutput(requests=[req], num_scheduled_tokens=[1]))

    @torch.inference_mode()
    def score(self, request: Request) -> list[float]:
        """Log-probability of each token of `request` given the ones before it (one prefill;
        the request's blocks must be allocated). Returns num_tokens - 1 values."""
        n = request.num_tokens
        step = SchedulerOutput(requests=[request], num_scheduled_tokens=[n], num_prefill_tokens=n)
        inputs = to_device(build_host_inputs(step, self.block_size), self.device)
        every = torch.arange(n - 1, device=self.device)
        logits = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta, every)
        logprobs = torch.log_softmax(logits, dim=-1)  # [n - 1, vocab]
        return logprobs.gather(1, inputs.input_ids[1:].unsqueeze(1)).squeeze(1).tolist()

    def _sample(self, logits: torch.Tensor, step: LaunchedStep) -> None:
        reqs = step.host.sampling_requests
        meta = SamplingMetadata.build(
            params=[r.sampling_params for r in reqs],
            seeds=[r.seed for r in reqs],
            # The output index of the token sampled now: known tokens + pending before it.
            token_indices=[r.num_output_tokens + r.num_pending_tokens - 1 for r in reqs],
            prompt_token_ids=[r.prompt_token_ids for r in reqs],
            output_token_ids=[r.output_token_ids for r in reqs],
            vocab_size=logits.shape[-1],
            device=self.device,
            eos_token_ids=[r.eos_token_ids for r in reqs],
        )
        result = self.sampler(logits, meta)
        self._last_sampled, self._last_requests = result.token_ids, reqs
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

    def wait(self, step: LaunchedStep) -> RunnerOutput:
        """Block until `step`'s sampled ids reach the host (the step's one sync)."""
        out = step.out
        sampled: list[int | None] = [None] * len(out.requests)
        logprobs: list[Logprobs | None] = [None] * len(out.requests)
        if step.token_ids is not None:
            if step.done is not None:
                step.done.synchronize()
            token_ids = step.token_ids.tolist()
            reqs = step.host.sampling_requests
            lp_rows = [t.tolist() for t in step.logprobs] if step.logprobs else None
            for j, row in enumerate(step.host.sampling_rows):
                sampled[row] = token_ids[j]
                k = reqs[j].sampling_params.logprobs
                if lp_rows is not None and k is not None:
                    values, ids = lp_rows[0][j], lp_rows[1][j]
                    logprobs[row] = Logprobs(
                        token_id=ids[0],
                        logprob=values[0],
                        rank=lp_rows[2][j],
                        top_token_ids=ids[1 : 1 + k],
                        top_logprobs=values[1 : 1 + k],
                    )
        return RunnerOutput(
            request_ids=[r.request_id for r in out.requests],
            sampled_token_ids=sampled,
            logprobs=logprobs,
        )


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Start copying a device tensor to the host without waiting (pinned memory on CUDA)."""
    if t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)
