"""ModelRunner: SchedulerOutput -> tensors -> forward -> sample on device -> RunnerOutput.

The only host sync of a step is reading the sampled ids (and logprobs, when asked) once.
"""

from __future__ import annotations

import torch
from torch import nn

from minerva.request import Logprobs, Request, RunnerOutput, SchedulerOutput
from minerva.runner.cuda_graphs import CudaGraphRunner
from minerva.runner.input_batch import HostInputs, build_host_inputs, to_device
from minerva.sampler import Sampler, SamplingMetadata
from minerva.sampling_params import SamplingParams


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        device: torch.device,
        graphs: CudaGraphRunner | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.graphs = graphs
        self.sampler = Sampler()
        self.captured_logits: list[torch.Tensor] | None = None  # tests: keep each step's logits

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        host = build_host_inputs(out, self.block_size)
        if (
            self.graphs is not None
            and host.is_pure_decode
            and self.graphs.bucket_for(host.num_seqs)
        ):
            logits = self.graphs.run(host)
        else:
            inputs = to_device(host, self.device)
            logits = self.model(
                inputs.input_ids,
                inputs.positions,
                self.kv_caches,
                inputs.meta,
                inputs.logits_indices,
            )  # [num_sampling, vocab]
        if self.captured_logits is not None:
            self.captured_logits.append(logits.detach().cpu().clone())
        sampled: list[int | None] = [None] * len(out.requests)
        logprobs: list[Logprobs | None] = [None] * len(out.requests)
        if host.sampling_requests:
            self._sample(logits, host, sampled, logprobs)
        return RunnerOutput(
            request_ids=[r.request_id for r in out.requests],
            sampled_token_ids=sampled,
            logprobs=logprobs,
        )

    def warm_up(self, num_tokens: int = 16) -> None:
        """One prefill and one decode step on the reserved null block, so the first real request
        does not pay for first-call initialisation (kernels, allocator, thread pools)."""
        params = SamplingParams(max_tokens=2, temperature=1.0, top_p=0.9, seed=0)
        req = Request("warm-up", [0] * num_tokens, params)
        req.block_ids = [0] * -(-(num_tokens + 1) // self.block_size)  # block 0 holds no real data
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

    def _sample(
        self,
        logits: torch.Tensor,
        inputs: HostInputs,
        sampled: list[int | None],
        logprobs: list[Logprobs | None],
    ) -> None:
        reqs = inputs.sampling_requests
        meta = SamplingMetadata.build(
            params=[r.sampling_params for r in reqs],
            seeds=[r.seed for r in reqs],
            token_indices=[r.num_output_tokens for r in reqs],
            prompt_token_ids=[r.prompt_token_ids for r in reqs],
            output_token_ids=[r.output_token_ids for r in reqs],
            vocab_size=logits.shape[-1],
            device=self.device,
            eos_token_ids=[r.eos_token_ids for r in reqs],
        )
        result = self.sampler(logits, meta)
        token_ids = result.token_ids.tolist()  # the step's one host sync
        want = [r.sampling_params.logprobs for r in reqs]
        lp_rows = None
        if result.logprobs is not None:
            lp_rows = (
                result.logprobs.tolist(),
                result.logprob_token_ids.tolist(),
                result.ranks.tolist(),
            )
        for j, row in enumerate(inputs.sampling_rows):
            sampled[row] = token_ids[j]
            if lp_rows is not None and want[j] is not None:
                values, ids, ranks = lp_rows[0][j], lp_rows[1][j], lp_rows[2][j]
                k = want[j]
                logprobs[row] = Logprobs(
                    token_id=ids[0],
                    logprob=values[0],
                    rank=ranks,
                    top_token_ids=ids[1 : 1 + k],
                    top_logprobs=values[1 : 1 + k],
                )
