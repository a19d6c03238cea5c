"""The Llama family: LlamaForCausalLM, MistralForCausalLM (sliding window), Qwen2ForCausalLM (qkv
bias), Qwen3ForCausalLM (an RMSNorm on each head's q and k before RoPE).

Parameter names follow Hugging Face, except that q/k/v and gate/up are fused into one matmul
each (`qkv_proj`, `gate_up_proj`); `load_weights` copies the checkpoint's pieces into place.
Under tensor parallelism (options.parallel) each rank holds 1/n of the heads, the MLP and the
vocabulary; attention and MLP blocks end in one all-reduce, the logits are gathered.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from minerva.attention import AttentionMetadata, cpu_backend
from minerva.errors import ModelLoadError
from minerva.models import llama_cpu_step, pipeline
from minerva.models.embedding import Embedding, VocabParallelEmbedding
from minerva.models.layers import GatedMLP, RMSNorm
from minerva.models.linear import (
    ColumnParallelLinear,
    Linear,
    QKVLinear,
    RowParallelLinear,
    count_weight_bytes,
)
from minerva.models.options import ModelOptions
from minerva.models.rope import fold_sin, rope_cos_sin
from minerva.ops.cpu_decode_step import DecodeStep
from minerva.quant import x8_cache, x8_cache_insitu
from minerva.quant.base import link_chain
from minerva.quant.gguf_dequant import dequantize_tensor
from minerva.quant.gguf_types import QuantizedTensor
from minerva.quant.x8_cache import WeightCache, WeightStore


def layer_sliding_windows(config) -> list[int | None]:
    """Per-layer attention window (None = full attention), from the loader's layer_types."""
    window = config.sliding_window
    return [window if t == "sliding_attention" else None for t in config.layer_types]


class Attention(nn.Module):
    def __init__(
        self,
        config,
        layer_idx: int,
        window: int | None,
        dtype: torch.dtype,
        options: ModelOptions,
        prefix: str,
    ) -> None:
        super().__init__()
        parallel = options.parallel
        # this rank's heads (all of them at world size 1); QKVLinear checks they divide
        self.num_heads = config.num_attention_heads // parallel.world_size
        self.num_kv_heads = config.num_key_value_heads // parallel.world_size
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.window = window
        self.layer_idx = layer_idx
        self.backend = options.attention
        self.rope = options.kernels.rope
        fused = options.kernels.fuse_rope_write_kv
        self.rope_write_kv = self.backend.rope_write_kv if fused else None  # one kernel, or None
        h = config.hidden_size
        self.qkv_proj = QKVLinear(
            h,
            self.head_dim,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.qkv_bias,
            options.linear_method(f"{prefix}.qkv_proj"),
            dtype,
            parallel=parallel,
        )
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim,
            h,
            config.o_proj_bias,
            options.linear_method(f"{prefix}.o_proj"),
            dtype,
            parallel=parallel,
        )
        # Qwen3: per-head RMSNorms of q and k (weights [head_dim], the same on every rank)
        self.q_norm = self.k_norm = None
        if getattr(config, "qk_norm", False):
            eps, kernels = config.rms_norm_eps, options.kernels
            self.q_norm = RMSNorm(self.head_dim, eps, dtype, kernels)
            self.k_norm = RMSNorm(self.head_dim, eps, dtype, kernels)
        # the sum of the ranks' partial outputs; None at world size 1 (nothing to add)
        self.all_reduce = parallel.all_reduce if parallel.is_parallel else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        qkv_proj, o_proj = self.qkv_proj, self.o_proj
        qkv = qkv_proj.method.apply(qkv_proj, x)
        out = self.attend(qkv, cos, sin, kv_cache, meta)
        out = o_proj.method.apply(o_proj, out)
        return out if self.all_reduce is None else self.all_reduce(out)

    def attend(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Projected qkv [T, q + 2 kv] -> RoPE, K/V into the cache, attention: [T, q_size]."""
        num_tokens = qkv.shape[0]
        heads, kv_heads = self.num_heads, self.num_kv_heads
        if self.q_norm is not None:
            qkv = self.norm_heads(qkv)
        if self.rope_write_kv is not None:  # one kernel for RoPE and the KV write
            q = self.rope_write_kv(qkv, cos, sin, kv_cache, meta.slot_mapping, heads, kv_heads)
        else:
            qkv = qkv.view(num_tokens, heads + 2 * kv_heads, self.head_dim)
            qk = self.rope(qkv[:, : heads + kv_heads], cos, sin)  # q and k at once
            q, k = qk[:, :heads], qk[:, heads:]
            self.backend.write_kv(kv_cache, k, qkv[:, heads + kv_heads :], meta.slot_mapping)
        out = self.backend.paged_attention(q, kv_cache, meta, self.scale, self.window)
        return out.view(num_tokens, self.q_size)

    def norm_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv [T, q + 2 kv] with each head of q and of k RMS-normed (q_norm / k_norm), v as is:
        a new tensor, laid out as qkv (the fused RoPE + KV-write kernel reads it unchanged)."""
        t, d = qkv.shape[0], self.head_dim
        heads, kv_heads = self.num_heads, self.num_kv_heads
        q, k, v = qkv.view(t, heads + 2 * kv_heads, d).split([heads, kv_heads, kv_heads], 1)
        # contiguous rows: what the C and Triton norm kernels take (else torch's, other sums)
        q = self.q_norm(q.reshape(t * heads, d).contiguous()).view(t, heads, d)
        k = self.k_norm(k.reshape(t * kv_heads, d).contiguous()).view(t, kv_heads, d)
        return torch.cat([q, k, v], 1).view(t, self.q_size + 2 * self.kv_size)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        config,
        layer_idx: int,
        window: int | None,
        dtype: torch.dtype,
        options: ModelOptions,
        prefix: str,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx, window, dtype, options, f"{prefix}.self_attn")
        mlp_bias, kernels = config.mlp_bias, options.kernels
        self.mlp = GatedMLP(
            config.hidden_size,
            config.intermediate_size,
            mlp_bias,
            dtype,
            kernels,
            options.quant,
            f"{prefix}.mlp",
            options.parallel,
        )
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype, kernels)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype, kernels)

    def forward(self, x, residual, cos, sin, kv_cache, meta):
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, kv_cache, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config, dtype: torch.dtype, options: ModelOptions) -> None:
        super().__init__()
        blocks = options.quant.embedding_type(config.vocab_size, config.hidden_size)
        self.embed_tokens: Embedding
        if options.parallel.is_parallel:
            self.embed_tokens = VocabParallelEmbedding(
                config.vocab_size, config.hidden_size, dtype, options.parallel, blocks
            )
        else:
            self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype, blocks)
        windows = layer_sliding_windows(config)
        # a pipeline stage builds its own run of the layers (local index i - first)
        first, end = 0, config.num_hidden_layers
        if options.pipeline is not None:
            first, end = options.pipeline.layer_range(config.num_hidden_layers)
        self.first_layer, self.end_layer = first, end
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, windows[i], dtype, options, f"model.layers.{i}")
            for i in range(first, end)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, options.kernels)


class LlamaForCausalLM(nn.Module):
    """One model class for Llama, Mistral, Qwen2 and Qwen3 checkpoints."""

    _stacked = {  # checkpoint piece -> (fused layer, shard id)
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self,
        config,
        dtype: torch.dtype,
        max_positions: int,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__()
        options = options or ModelOptions()
        self.config = config
        self.dtype = dtype
        self.max_positions = max_positions
        self.options = options
        self.model = LlamaModel(config, dtype, options)
        self.tie_word_embeddings = config.tie_word_embeddings
        self.lm_head = ColumnParallelLinear(
            config.hidden_size,
            config.vocab_size,
            False,
            options.linear_method("lm_head"),
            dtype,
            parallel=options.parallel,
            pad=True,
        )
        # logits of every rank's slice of the vocabulary, gathered (None at world size 1)
        self.gather_logits = options.parallel.all_gather if options.parallel.is_parallel else None
        self.tie_weights()
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None
        # Batch-1 steps with the glue folded into the GEMVs (the kernel set has them: CUDA).
        # Both fold whole blocks into one kernel, with no place for a rank's all-reduce.
        self.pipeline = options.pipeline
        single = not options.parallel.is_parallel and options.pipeline is None
        self.one_token = options.kernels.one_token and single
        self._chain_linked = False  # quant/base.link_chain, on the first batch-1 forward
        # Decode steps on the CPU as one C call (models/llama_cpu_step.py), built at first use.
        self.use_cpu_step = options.kernels.name == "cpu" and single
        self._cpu_step: DecodeStep | None | bool = False  # False: not built yet

    def tie_weights(self) -> None:
        """With tied embeddings the lm_head's weight is the embedding table (after to_empty too)
        where its method keeps a dense layout; a method with its own layout keeps its weight,
        which the loader fills from the embedding's tensor."""
        head, embed = self.lm_head.weight, self.model.embed_tokens.weight
        self.shares_embedding = (
            self.tie_word_embeddings
            and embed.dtype.is_floating_point
            and head.shape == embed.shape
            and head.dtype == embed.dtype
        )
        if self.shares_embedding:
            self.lm_head.weight = embed

    def weight_bytes(self) -> int:
        """Bytes of the weights as stored (linear layers as their methods count them)."""
        return count_weight_bytes(self)

    def init_rope(self, device: torch.device) -> None:
        """Build the cos/sin tables once, on the device, in the model dtype."""
        c = self.config
        cos, sin = rope_cos_sin(
            c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings, self.max_positions
        )
        self.cos = cos.to(device, self.dtype)
        self.sin = fold_sin(sin).to(device, self.dtype)
        self._cpu_step = False  # its plan points at the tables

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        """input_ids, positions [num_tokens] -> logits [len(logits_indices), vocab] in float32."""
        if self.pipeline is not None:
            args = (input_ids, positions, kv_caches, meta, logits_indices)
            return pipeline.forward(self, self.pipeline, *args)[0]
        x = None
        if self.use_cpu_step:  # the step reads the RoPE tables (and the embeddings) itself
            logits, x = self._cpu_decode(input_ids, positions, kv_caches, meta, logits_indices)
            if logits is not None:
                return logits
        if x is None:
            x = self.model.embed_tokens(input_ids)  # [num_tokens, hidden]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # [T, 1, D]
        if self.one_token and x.shape[0] == 1 and logits_indices.shape[0] == 1:
            return self._forward_one_token(x, cos, sin, kv_caches, meta)
        x, residual = self._layers(x, cos, sin, kv_caches, meta)
        # Only the rows that sample need the final norm and the vocab projection.
        x, _ = self.model.norm(x[logits_indices], residual[logits_indices])
        return self.compute_logits(x)

    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,
        hidden_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward, plus the final-norm hidden states of the `hidden_indices` tokens (pooling):
        (logits [len(logits_indices), vocab] float32, hidden [len(hidden_indices), hidden])."""
        if self.pipeline is not None:
            args = (input_ids, positions, kv_caches, meta, logits_indices, hidden_indices)
            return pipeline.forward(self, self.pipeline, *args)
        x = self.model.embed_tokens(input_ids)  # [num_tokens, hidden]
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        x, residual = self._layers(x, cos, sin, kv_caches, meta)
        rows = torch.cat([logits_indices, hidden_indices])
        x, _ = self.model.norm(x[rows], residual[rows])
        num_logits = logits_indices.shape[0]
        return self.compute_logits(x[:num_logits]), x[num_logits:]

    def _layers(
        self, x, cos, sin, kv_caches, meta, residual=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder layers: (output, residual stream), each [num_tokens, hidden];
        residual: the stream so far (a pipeline stage after the first), None at the start."""
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x, residual = layer(x, residual, cos, sin, kv_cache, meta)
        return x, residual

    def _forward_one_token(self, x, cos, sin, kv_caches, meta) -> torch.Tensor:
        """Batch-1 decode with the glue folded into the linear layers' fused hooks (quant/base.py):
        each layer that ends a block adds the residual stream in its epilogue, each one that
        starts a block applies the RMSNorm while loading its input, and the down projection
        computes silu(gate) * up while loading (the same roundings as the layered path)."""
        if not self._chain_linked:
            link_chain(
                [(la.input_layernorm, la.self_attn.o_proj, la.post_attention_layernorm,
                  la.mlp.gate_up_proj, la.mlp.down_proj) for la in self.model.layers],
                self.model.norm,
            )  # fmt: skip
            self._chain_linked = True
        h, partials = x, None  # the residual stream and its sum-of-squares partials
        for i, (layer, kv_cache) in enumerate(zip(self.model.layers, kv_caches)):
            attn, mlp = layer.self_attn, layer.mlp
            norm, qkv_proj = layer.input_layernorm, attn.qkv_proj
            if i == 0:
                qkv = qkv_proj.method.apply(qkv_proj, norm(x))
            else:
                qkv = qkv_proj.method.apply_norm_in(qkv_proj, h, partials, norm.weight, norm.eps)
            out = attn.attend(qkv, cos, sin, kv_cache, meta)
            o_proj = attn.o_proj
            h, partials = o_proj.method.apply_add_residual(o_proj, out, h)
            norm, gate_up = layer.post_attention_layernorm, mlp.gate_up_proj
            x = gate_up.method.apply_norm_in(gate_up, h, partials, norm.weight, norm.eps)
            down = mlp.down_proj  # its input is silu(gate) * up, computed while loading
            h, partials = down.method.apply_add_residual(down, x, h, gated=True)
        norm, head = self.model.norm, self.lm_head
        return head.method.apply_norm_in(head, h, partials, norm.weight, norm.eps).float()

    def _cpu_decode(
        self, input_ids, positions, kv_caches, meta, logits_indices
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A step of decode rows only (one token each, each sampled) through the CPU's
        whole-step kernel: (logits, None), or (None, the embeddings if it computed them) where
        it does not apply (the layered path runs, reusing them)."""
        n = input_ids.shape[0]
        if logits_indices.shape[0] != n:
            return None, None
        if meta.verify_rows:  # each query token a decode row: its row's table, its own length
            if meta.max_query_len > cpu_backend.SHORT_QUERY or not _in_order(logits_indices):
                return None, None
            meta = cpu_backend.per_token_rows(meta)
        elif meta.num_decodes != n or meta.num_seqs != n:
            return None, None
        if self._cpu_step is False:
            self._cpu_step = llama_cpu_step.build(self, kv_caches[0].dtype)
        if self._cpu_step is None:
            return None, None
        step, args = self._cpu_step, (meta.slot_mapping, meta.block_tables, meta.seq_lens)
        if step.embeds:
            return step.run(None, positions, kv_caches, *args, ids=input_ids), None
        x = self.model.embed_tokens(input_ids)  # [n, hidden]
        return step.run(x, positions, kv_caches, *args), x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, hidden] (already normed) -> logits [T, vocab] in float32."""
        head = self.lm_head
        logits = head.method.apply(head, hidden)
        if self.gather_logits is not None:  # [T, vocab / n] per rank, the padding cut off
            logits = self.gather_logits(logits, -1)[:, : self.config.vocab_size]
        return logits.float()

    @torch.no_grad()
    def load_weights(
        self, weights: Iterable[tuple[str, object]], weight_cache: WeightCache | None = None
    ) -> None:
        """Hand each checkpoint tensor to its parameter (a linear layer's weight_loader puts
        the pieces of q/k/v and gate/up in place); error on unknown, misshapen or missing ones.
        `weight_cache`: where the repacked weights are kept between loads (quant/x8_cache.py)."""
        params = dict(self.named_parameters())
        layers = _linear_layers_by_param(self, params)
        pending = {n: set(m.shard_ids) for n, m in layers.items() if len(m.shard_ids) > 1}
        loaded: set[str] = set()
        linears = [(p, m) for p, m in self.named_modules() if isinstance(m, Linear)]
        hit, taken = x8_cache_insitu.open_planned(linears, weight_cache, weights)
        for prefix, shard in taken:  # pieces mapped from the cache: loaded already
            target = f"{prefix}.weight"
            pending.get(target, set()).discard(shard)
            if not pending.get(target):
                loaded.add(target)
        head_of_its_own = self.tie_word_embeddings and not self.shares_embedding
        model = self.model
        for name, tensor in weights:
            if self.pipeline is not None:  # another stage's layer, or this one's local name
                name = pipeline.stage_name(name, model.first_layer, model.end_layer)
                if name is None:
                    continue
            if "rotary_emb" in name or (name == "lm_head.weight" and self.shares_embedding):
                continue
            target, shard = self._target(name)
            if target not in params:
                raise ModelLoadError(
                    f"checkpoint tensor {name!r} does not belong to this model architecture"
                )
            targets = [target]
            if head_of_its_own and target == "model.embed_tokens.weight":
                targets.append("lm_head.weight")  # tied, in the lm_head method's own layout
            for target in targets:
                owner = layers.get(target)
                if target == "model.embed_tokens.weight":
                    owner = self.model.embed_tokens
                _load_one(name, tensor, params[target], owner, shard)
                if shard is not None and target in pending:
                    pending[target].discard(shard)
                    if pending[target]:
                        continue
                loaded.add(target)
        missing = sorted(set(params) - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModelLoadError(f"checkpoint is missing {len(missing)} tensors: {shown}")
        self.process_weights_after_loading(weight_cache, hit)

    def process_weights_after_loading(
        self, weight_cache: WeightCache | None = None, hit: WeightStore | None = None
    ) -> None:
        """Let every linear method repack what it loaded (after load_weights or dummy init);
        with `weight_cache`, repacked groups are mapped from its file, or written to it;
        `hit`: that file, opened before loading (an in-situ quantization's)."""
        self._cpu_step = False  # the step's plan points at the weights: built again
        linears = [(p, m) for p, m in self.named_modules() if isinstance(m, Linear)]
        x8_cache.process_layers(linears, weight_cache, hit)

    def _target(self, name: str) -> tuple[str, str | int | None]:
        """Checkpoint name -> (parameter name, shard id of a fused layer or None)."""
        for piece, (fused, shard) in self._stacked.items():
            if f".{piece}." in name:
                return name.replace(piece, fused), shard
        return name, None


def _linear_layers_by_param(model: nn.Module, params: dict) -> dict[str, Linear]:
    """Parameter name -> the linear layer that owns it (for its weight_loader)."""
    owners = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Linear):
            for pname, _ in module.named_parameters(recurse=False):
                name = f"{prefix}.{pname}"
                if name in params:  # a tied lm_head's weight is listed as the embedding's
                    owners[name] = module
    return owners


def _load_one(name: str, tensor, param: nn.Parameter, owner: nn.Module | None, shard) -> None:
    """One checkpoint tensor into `param`: through its linear layer's weight_loader or the
    embedding's load, or copied."""
    try:
        if isinstance(owner, Embedding):
            owner.load(tensor)
        elif owner is not None:
            owner.weight_loader(param, tensor, shard)
        else:
            _copy_into(param, tensor)
    except ModelLoadError as e:
        raise ModelLoadError(f"checkpoint tensor {name!r} {e}") from None


def _copy_into(param: nn.Parameter, tensor) -> None:
    """A float tensor into a parameter that is not a linear layer's or the embedding's (norms);
    GGUF blocks are dequantized."""
    if isinstance(tensor, QuantizedTensor):
        tensor = dequantize_tensor(tensor)  # float32 [rows, cols]; copy_ casts to the dtype
    if not isinstance(tensor, torch.Tensor):
        raise ModelLoadError(
            f"is stored as {type(tensor).__name__}, but this parameter takes floats"
        )
    if tuple(param.shape) != tuple(tensor.shape):
        raise ModelLoadError(
            f"has shape {tuple(tensor.shape)}, but config.json implies {tuple(param.shape)}"
        )
    param.data.copy_(tensor)


def _in_order(logits_indices: torch.Tensor) -> bool:
    """Whether a step samples after every one of its tokens, in order (a verify step whose rows
    all verify or decode: the whole-step kernel's logits are then its logits rows)."""
    n = logits_indices.shape[0]
    return bool(n == 0 or (logits_indices[0] == 0 and logits_indices[-1] == n - 1))
