"""Worker: everything device-side for one model on one device, built from an EngineConfig.

    worker = Worker(config)                  # platform, model, weights, KV cache, graphs, warm-up
    step = worker.launch(scheduler_output)   # queue a step; returns at once
    worker.sample(step)                      # (after reading the step before: grammar masks)
    result = worker.wait(step)               # RunnerOutput (the step's one host sync)

The engine sees only that step contract and the facts below (tokenizer, max_model_len,
num_kv_blocks, ...). Tensor parallelism is N workers (rank, world_size), one per process, in
a process group set up by runner/parallel_worker.py: each holds 1/N of the model and runs every
step (rank 0 is the one the engine reads). A speculative draft is a second Worker over another
model config with the same block tables (num_kv_blocks given).
"""

from __future__ import annotations

import logging

import torch

from minerva.attention import AttentionBackend, select_attention_backend
from minerva.config import EngineConfig
from minerva.distributed import SINGLE, ParallelContext, parallel_layout
from minerva.errors import ConfigError
from minerva.loader import ModelSource
from minerva.models import build_model
from minerva.models.options import ModelOptions
from minerva.ops.kernels import KernelSet, select_kernels
from minerva.platform import (
    Platform,
    default_num_threads,
    resolve_dtype,
    resolve_platform,
    set_num_threads,
)
from minerva.request import Logprobs, RunnerOutput, SchedulerOutput
from minerva.runner import draft_model, model_loading, openmp_pools, parallel_checks
from minerva.runner.cuda_graphs import CudaGraphRunner
from minerva.runner.kv_cache import (
    KVCacheSpec,
    allocate_kv_caches,
    plan_num_blocks,
    resolve_kv_cache_dtype,
)
from minerva.runner.memory_profile import profile_activation_memory
from minerva.runner.model_runner import LaunchedStep, ModelRunner
from minerva.runner.prefill_graphs import PrefillGraphRunner
from minerva.runner.verify_graphs import VerifyGraphRunner
from minerva.spec import DraftModelProposer
from minerva.spec.draft_proposer import CATCH_UP_TOKENS
from minerva.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class Worker:
    """Builds and owns the platform, model, attention backend, kernels, KV cache and graphs."""

    def __init__(
        self,
        config: EngineConfig,
        rank: int = 0,
        world_size: int = 1,
        progress: bool = True,
        num_kv_blocks: int | None = None,
    ) -> None:
        """num_kv_blocks: size the KV cache to this many blocks instead of the memory budget
        (a second model sharing the first one's block tables)."""
        self.config, self.rank, self.world_size = config, rank, world_size
        self.group = ParallelContext(rank, world_size)  # every rank: start-up checks, KV plan
        self.tensor_parallel, self.pipeline = SINGLE, None
        if world_size > 1:
            d = config.device
            layout = parallel_layout(rank, d.tensor_parallel_size, d.pipeline_parallel_size)
            self.tensor_parallel, self.pipeline = layout
        self.platform: Platform = resolve_platform(parallel_checks.rank_device(config, rank))
        if self.group.is_parallel:
            parallel_checks.check_config(config)
        if self.platform.kind == "cpu":
            threads = config.device.num_threads
            if threads is None and world_size > 1:  # the ranks share the cores
                threads = max(1, default_num_threads() // world_size)
            set_num_threads(threads)
        elif self.platform.is_cuda and world_size > 1:
            torch.cuda.set_device(self.platform.device)  # NCCL's object collectives use it
        if self.platform.kind == "cpu" and openmp_pools.LOAD_IN_PASSING_THREAD:
            # OpenMP work of loading in a thread that exits, so that the thread that steps
            # the engine owns the process's only pool (openmp_pools.py says why)
            openmp_pools.in_passing_thread(lambda: self._build(progress, num_kv_blocks))
        else:
            self._build(progress, num_kv_blocks)

    def _build(self, progress: bool, num_kv_blocks: int | None) -> None:
        config = self.config
        self._open_model()
        if self.group.is_parallel:
            parallel_checks.check_same_model(self.group, config, self.model_config, self.dtype)
        self.draft_config = self.draft_source = None
        # the draft runs where the engine proposes: on rank 0 only, whole, on its device
        if draft_model.uses_draft_model(config) and self.rank == 0:
            self.draft_config, self.draft_source = draft_model.open_draft(
                config, self.source, self.max_model_len
            )
        self.attention, self.kernels = self._choose_kernels()
        self.options = ModelOptions(
            kernels=self.kernels,
            attention=self.attention,
            quant=model_loading.quant_config_for(
                self.source, config.model.quantization, self.kernels
            ),
            parallel=self.tensor_parallel,
            pipeline=self.pipeline,
        )
        spec = self._kv_cache_spec()
        model_loading.check_model_fits(
            self.model_config, self.dtype, spec, self.platform, config,
            self.max_model_len, self.options,
        )  # fmt: skip
        self.model = self._load_model(progress)
        self.weight_bytes = self.model.weight_bytes()
        self.activation_reserve = self._activation_reserve(spec)
        # every rank holds the same blocks: as many as the tightest one can
        self.num_kv_blocks = num_kv_blocks or self.group.all_reduce_min(
            self._plan_num_blocks(spec), self.platform.device
        )
        self.kv_caches = allocate_kv_caches(spec, self.num_kv_blocks, self.platform.device)
        self.kv_cache_bytes = self.num_kv_blocks * spec.bytes_per_block
        self._log_memory(spec)
        graphs = self._capture_graphs() if self.use_graphs else (None, None, None)
        self.runner = ModelRunner(
            self.model,
            self.kv_caches,
            config.cache.block_size,
            self.platform.device,
            graphs=graphs[0],
            prefill_graphs=graphs[1],
            verify_graphs=graphs[2],
        )
        if self.group.is_parallel:  # structured outputs: rank 0's grammar masks for all
            self.runner.masks.share = self.group.broadcast
        # a CPU has nothing to compile: two tokens take every code path (a prefill, a decode)
        warm_tokens = 2 if self.platform.device.type == "cpu" else 16
        self.runner.warm_up(min(warm_tokens, self.max_model_len - 1))
        self.draft_proposer: DraftModelProposer | None = None
        """The draft-model proposer (speculative_method=draft), sharing these block tables."""
        self.num_lookahead_tokens = 0
        """KV slots the scheduler keeps past each request's tokens for the draft's proposals."""
        if self.draft_config is not None:
            self._build_draft(progress)

    # -- the step contract --------------------------------------------------------------
    def launch(self, scheduled: SchedulerOutput) -> LaunchedStep:
        """Queue one step's forward and sampling on the device; returns before it finishes."""
        return self.runner.launch(scheduled)

    def sample(self, step: LaunchedStep) -> None:
        """Queue `step`'s sampling if it waited for the previous step's tokens to be read (its
        grammar masks need them); a no-op otherwise."""
        self.runner.sample(step)

    def wait(self, step: LaunchedStep) -> RunnerOutput:
        """Block until `step`'s sampled tokens reach the host."""
        return self.runner.wait(step)

    def execute(self, scheduled: SchedulerOutput) -> RunnerOutput:
        return self.runner.wait(self.runner.launch(scheduled))

    def score(self, token_ids: list[int], block_ids: list[int]) -> list[float]:
        """Log-probabilities of tokens 1..n-1 given their prefixes, computed in one prefill
        on the KV blocks `block_ids` (allocated by the caller)."""
        return self.runner.score(token_ids, block_ids)

    def prompt_logprobs(
        self, token_ids: list[int], block_ids: list[int], num_top: int
    ) -> list[Logprobs]:
        """score with ranks and the top `num_top` alternatives (ModelRunner.prompt_logprobs)."""
        return self.runner.prompt_logprobs(token_ids, block_ids, num_top)

    @property
    def use_graphs(self) -> bool:
        """CUDA graphs: on CUDA, with a graph-safe attention backend, unless enforce_eager;
        not yet with tensor parallelism (NCCL inside a graph is untested)."""
        return (
            self.platform.is_cuda
            and not self.group.is_parallel
            and self.attention.graph_safe
            and not self.config.device.enforce_eager
        )

    # -- construction, in order ----------------------------------------------------------
    def _open_model(self) -> None:
        """The model's source (config, tokenizer, generation defaults, eos ids, weights);
        the dtype and max_model_len it runs with."""
        config = self.config
        self.source: ModelSource = model_loading.open_model_source(config)
        hf = self.source.config
        self.model_config = hf
        self.tokenizer: Tokenizer | None = self.source.tokenizer
        self.generation_defaults = self.source.generation_defaults
        self.eos_token_ids = self.source.eos_token_ids
        checkpoint_dtype = getattr(hf, "torch_dtype", None)
        self.dtype = resolve_dtype(self.platform, config.model.dtype, checkpoint_dtype)
        self.max_model_len = model_loading.check_lengths(config, hf)

    def _choose_kernels(self) -> tuple[AttentionBackend, KernelSet]:
        """The attention backend, then the kernel set: the fused Triton kernels only with a
        graph-safe (Triton) backend, where the eager prefill is bound by the launch rate."""
        device, platform = self.config.device, self.platform
        pdl = device.fused_kernels and device.pdl and platform.supports_pdl
        attention = select_attention_backend(
            device.attention_backend,
            platform.kind,
            platform.num_sms,
            cpu_kernels=device.cpu_kernels,
            pdl=pdl,
        )
        fused = platform.is_cuda and attention.graph_safe and device.fused_kernels
        kernels = select_kernels(platform, fused=fused, cpu=device.cpu_kernels, pdl=pdl)
        return attention, kernels

    def _kv_cache_spec(self) -> KVCacheSpec:
        hf = self.model_config
        num_layers = hf.num_hidden_layers
        if self.pipeline is not None:  # this stage's layers
            first, end = self.pipeline.layer_range(num_layers)
            num_layers = end - first
        return KVCacheSpec(
            num_layers=num_layers,
            num_kv_heads=hf.num_key_value_heads // self.tensor_parallel.world_size,
            head_dim=hf.head_dim,
            block_size=self.config.cache.block_size,
            dtype=resolve_kv_cache_dtype(
                self.config.cache.kv_cache_dtype, self.dtype, self.platform, self.attention.name
            ),
        )

    def _load_model(self, progress: bool) -> torch.nn.Module:
        device, model_cfg = self.platform.device, self.config.model
        model = build_model(
            self.model_config, self.dtype, device, max_positions=self.max_model_len,
            options=self.options,
        )  # fmt: skip
        if model_cfg.load_format == "dummy":
            if self.source.quantization or model_cfg.quantization:
                raise ConfigError(
                    "load_format=dummy makes random float weights, not quantized ones: drop "
                    "quantization (or use a float model) or use load_format=auto"
                )
            model_loading.init_dummy_weights(model, seed=model_cfg.seed)
        elif self.source.quantization is None and model_cfg.quantization is not None:
            # the weight cache is keyed by the model's files: a rank's shard would clash
            cache = None
            if not self.group.is_parallel:
                cache = model_loading.weight_cache_for(self.source, self.config, device, self.dtype)
            model.load_weights(
                model_loading.quantizing_weights(
                    self.source, device, self.dtype, model_cfg.quantization, progress
                ),
                weight_cache=cache,
            )
        else:
            model.load_weights(
                self.source.iter_weights(device=device, dtype=self.dtype, progress=progress),
                weight_cache=model_loading.weight_cache_for(self.source, self.config, device),
            )
        return model

    def _activation_reserve(self, spec: KVCacheSpec) -> int:
        """Bytes one step's activations need: measured on CUDA, estimated elsewhere."""
        sched = self.config.scheduler
        if not self.platform.is_cuda:
            return model_loading.estimate_activation_bytes(
                self.model_config, self.config, self.dtype
            )
        return profile_activation_memory(
            self.model,
            spec,
            self.platform,
            max_num_batched_tokens=sched.max_num_batched_tokens,
            max_num_seqs=sched.max_num_seqs,
            max_model_len=self.max_model_len,
            include_graphs=not self.config.device.enforce_eager,
        )

    def _build_draft(self, progress: bool) -> None:
        """The draft model: a second Worker on the same device with a cache of as many blocks
        (the block tables are the target's), and the proposer that drives it."""
        self.draft_worker = Worker(
            self.draft_config, progress=progress, num_kv_blocks=self.num_kv_blocks
        )
        draft = self.draft_worker
        catch_up = None
        if draft.runner.graphs is not None:  # CUDA graphs on: the catch-up passes too
            catch_up = VerifyGraphRunner(
                draft.model, draft.kv_caches, self.config.cache.block_size,
                CATCH_UP_TOKENS, self.config.scheduler.max_num_seqs,
                self.max_model_len, self.platform.device, pool=draft.runner.graphs.pool,
            )  # fmt: skip
            catch_up.capture()
        self.draft_catch_up = catch_up
        self.draft_proposer = DraftModelProposer(
            draft.model,
            draft.kv_caches,
            self.config.cache.block_size,
            self.platform.device,
            self.model_config.vocab_size,
            decode_graph=draft_model.decode_graph_of(draft.runner.graphs),
            catch_up_graph=draft_model.catch_up_graph_of(catch_up),
        )
        self.num_lookahead_tokens = self.config.speculative.num_speculative_tokens

    def _draft_memory(self, spec: KVCacheSpec) -> tuple[int, int]:
        """(draft weight bytes, draft KV bytes per block) the target's plan leaves room for."""
        if self.draft_source is None:
            return 0, 0
        itemsize = spec.dtype.itemsize
        kv = draft_model.draft_kv_bytes_per_block(self.draft_source, spec.block_size, itemsize)
        weights = model_loading.weight_bytes_of(self.draft_source, self.dtype)
        return weights, kv

    def _plan_num_blocks(self, spec: KVCacheSpec) -> int:
        cache = self.config.cache
        draft_weights, draft_kv = self._draft_memory(spec)
        return plan_num_blocks(
            spec,
            self.platform,
            max_model_len=self.max_model_len,
            max_num_seqs=self.config.scheduler.max_num_seqs,
            num_kv_blocks=cache.num_kv_blocks,
            kv_cache_memory=cache.kv_cache_memory,
            memory_fraction=cache.memory_fraction,
            activation_reserve=self.activation_reserve + draft_weights,
            extra_bytes_per_block=draft_kv,
            memory_limit=cache.memory_limit,
            engine_bytes=self.weight_bytes,
            kv_cache_tokens=cache.kv_cache_tokens,
        )

    def _log_memory(self, spec: KVCacheSpec) -> None:
        logger.info(
            "weights %.2f GiB, KV cache %d blocks = %d tokens (%.2f GiB), "
            "activations reserve %.2f GiB",
            self.weight_bytes / 2**30,
            self.num_kv_blocks,
            (self.num_kv_blocks - 1) * spec.block_size,
            self.kv_cache_bytes / 2**30,
            self.activation_reserve / 2**30,
        )

    def _capture_graphs(
        self,
    ) -> tuple[CudaGraphRunner, PrefillGraphRunner, VerifyGraphRunner | None]:
        """Decode graphs per batch-size bucket, then one-sequence prefill graphs, then (when
        speculating) verify graphs of K + 1 tokens per row, one pool."""
        device, sched = self.platform.device, self.config.scheduler
        common = (self.model, self.kv_caches, self.config.cache.block_size)
        graphs = CudaGraphRunner(
            *common, sched.max_num_seqs, self.max_model_len, device, self.attention
        )
        graphs.capture()
        prefill = PrefillGraphRunner(
            *common, sched.max_num_batched_tokens, self.max_model_len, device, pool=graphs.pool
        )
        prefill.capture()
        verify = None
        k = self.config.speculative.num_speculative_tokens
        if k > 0:
            verify = VerifyGraphRunner(
                *common, k + 1, sched.max_num_seqs, self.max_model_len, device, pool=graphs.pool
            )
            verify.capture()
        return graphs, prefill, verify
