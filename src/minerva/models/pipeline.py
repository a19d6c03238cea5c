"""Pipeline parallelism for a decoder model: each stage (rank) holds a contiguous run of the
layers. A step's hidden state and residual stream go from one stage to the next; the last stage
computes the logits and every stage receives them, so every rank samples the same ids (as under
tensor parallelism) and their runners stay in step. One step at a time: no micro-batches yet.

Every stage keeps the embedding, the final norm and the LM head (simple, and what a tied head
needs); only the layers are split.
"""

from __future__ import annotations

import re

import torch

from minerva.distributed import PipelineContext

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def stage_name(name: str, first: int, end: int) -> str | None:
    """A checkpoint name as this stage's model names it (layer i -> i - first), or None for a
    layer another stage holds."""
    match = _LAYER.match(name)
    if match is None:
        return name
    i = int(match.group(1))
    if not first <= i < end:
        return None
    return f"model.layers.{i - first}.{name[match.end() :]}"


def forward(
    model,
    pipeline: PipelineContext,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[torch.Tensor],
    meta,
    logits_indices: torch.Tensor,
    hidden_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This stage's part of the model's forward: (logits [len(logits_indices), vocab] float32,
    final-norm hidden states [len(hidden_indices), hidden] or None), the same on every stage."""
    num_tokens, hidden = input_ids.shape[0], model.config.hidden_size
    device = input_ids.device
    cos, sin = model.cos[positions].unsqueeze(1), model.sin[positions].unsqueeze(1)
    if pipeline.is_first:
        x, residual = model.model.embed_tokens(input_ids), None  # [num_tokens, hidden]
    else:  # the previous stage's output and residual stream
        state = torch.empty(2, num_tokens, hidden, dtype=model.dtype, device=device)
        x, residual = pipeline.recv_prev(state).unbind(0)
    x, residual = model._layers(x, cos, sin, kv_caches, meta, residual)
    num_logits = logits_indices.shape[0]
    num_hidden = 0 if hidden_indices is None else hidden_indices.shape[0]
    if not pipeline.is_last:
        pipeline.send_next(torch.stack([x, residual]))
        logits = torch.empty(num_logits, model.config.vocab_size, device=device)
        pooled = torch.empty(num_hidden, hidden, dtype=model.dtype, device=device)
    else:
        rows = (
            logits_indices
            if hidden_indices is None
            else torch.cat([logits_indices, hidden_indices])
        )
        x, _ = model.model.norm(x[rows], residual[rows])
        logits = model.compute_logits(x[:num_logits])
        pooled = x[num_logits:].contiguous()
    logits = pipeline.share_from_last(logits)
    if hidden_indices is None:
        return logits, None
    return logits, pipeline.share_from_last(pooled)
