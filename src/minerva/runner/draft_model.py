"""The draft model of speculative decoding: its engine config, the checks that it can draft for
the target (same tokenizer), and the memory it takes beside the target's."""

from __future__ import annotations

import dataclasses

import numpy as np

from minerva.config import EngineConfig
from minerva.errors import ConfigError, MinervaError
from minerva.loader import ModelSource
from minerva.runner import model_loading
from minerva.runner.cuda_graphs import CudaGraphRunner
from minerva.runner.input_batch import HostInputs
from minerva.runner.verify_graphs import VerifyGraphRunner


def uses_draft_model(config: EngineConfig) -> bool:
    spec = config.speculative
    return spec.num_speculative_tokens > 0 and spec.speculative_method == "draft"


def draft_engine_config(config: EngineConfig, max_model_len: int) -> EngineConfig:
    """The target's config with the draft as the model: same device, dtype, block size and
    length; its own tokenizer (checked against the target's), no quantization, no speculation."""
    model = dataclasses.replace(
        config.model,
        model=config.speculative.draft_model,
        tokenizer=None,
        quantization=None,
        max_model_len=max_model_len,
    )
    spec = dataclasses.replace(config.speculative, num_speculative_tokens=0)
    # whole, on rank 0's device, however the target is split
    device = dataclasses.replace(
        config.device, tensor_parallel_size=1, pipeline_parallel_size=1, devices=None
    )
    return dataclasses.replace(config, model=model, speculative=spec, device=device)


def check_draft_matches(target: ModelSource, draft: ModelSource) -> None:
    """The draft must speak the target's tokens: same vocabulary, same ids."""
    t_tok, d_tok = target.tokenizer, draft.tokenizer
    where = f"draft model {draft.path} and target {target.path}"
    if t_tok is not None and d_tok is not None:
        t_vocab, d_vocab = t_tok.backend.get_vocab(), d_tok.backend.get_vocab()
        if t_vocab != d_vocab:
            diff = len(set(t_vocab.items()) ^ set(d_vocab.items()))
            raise ConfigError(
                f"{where} have different tokenizers ({len(d_vocab)} vs {len(t_vocab)} tokens, "
                f"{diff} entries differ): use a draft trained with the target's tokenizer"
            )
    elif (t_tok is None) != (d_tok is None):
        raise ConfigError(f"{where}: only one of them has a tokenizer, so they cannot be compared")
    t_n, d_n = target.config.vocab_size, draft.config.vocab_size
    # The draft embeds every token the target emits; extra rows (padding) are never proposed.
    if d_n < t_n or d_n - t_n > 128:
        raise ConfigError(
            f"{where} have vocabularies of {d_n} and {t_n} rows: use a draft of the same family"
        )


def open_draft(
    config: EngineConfig, target: ModelSource, max_model_len: int
) -> tuple[EngineConfig, ModelSource]:
    """The draft's engine config and source, after checking that it exists and matches."""
    draft_config = draft_engine_config(config, max_model_len)
    try:
        source = model_loading.open_model_source(draft_config)
    except MinervaError as e:
        raise ConfigError(f"draft_model={config.speculative.draft_model}: {e}") from e
    check_draft_matches(target, source)
    if source.config.max_position_embeddings < max_model_len:
        raise ConfigError(
            f"the draft model {source.path} handles {source.config.max_position_embeddings} "
            f"positions, fewer than max_model_len={max_model_len}: lower max_model_len"
        )
    return draft_config, source


def draft_kv_bytes_per_block(source: ModelSource, block_size: int, itemsize: int) -> int:
    """K and V of every draft layer for one block (its cache shares the target's block ids)."""
    hf = source.config
    return 2 * hf.num_hidden_layers * block_size * hf.num_key_value_heads * hf.head_dim * itemsize


def _draft_inputs(ids, positions, slots, tables, seq_lens, starts, num_decodes) -> HostInputs:
    """A draft pass as a graph runner's HostInputs: logits after each row's last token, nothing
    pending on the device, no sampling state (the proposer takes the argmax itself)."""
    return HostInputs(
        input_ids=np.array(ids, dtype=np.int64),
        positions=np.array(positions, dtype=np.int64),
        slot_mapping=np.array(slots, dtype=np.int64),
        block_tables=np.array(tables, dtype=np.int32),
        seq_lens=np.array(seq_lens, dtype=np.int32),
        query_start_loc=np.array(starts, dtype=np.int32),
        logits_indices=np.array(starts[1:], dtype=np.int64) - 1,
        num_decodes=num_decodes,
        sampling_states=[],
        sampling_rows=[],
        pending_indices=[],
        pending_sources=[],
    )


def decode_graph_of(graphs: CudaGraphRunner | None):
    """The draft proposer's hook into the draft worker's decode graphs (None off CUDA)."""
    if graphs is None:
        return None

    def replay(ids, positions, slots, tables, seq_lens):
        n = len(ids)
        bucket = graphs.bucket_for(n)
        if bucket is None or len(tables[0]) > graphs.static["block_tables"].shape[1]:
            return None
        starts = list(range(n + 1))
        return graphs.run(_draft_inputs(ids, positions, slots, tables, seq_lens, starts, n), bucket)

    return replay


def catch_up_graph_of(graphs: VerifyGraphRunner | None):
    """The draft proposer's hook into the draft's catch-up graphs (rows of up to
    draft_proposer.CATCH_UP_TOKENS tokens, padded like a verify step's): (ids, positions,
    slots, tables, seq_lens, query starts) -> the logits after each row's last token, or None
    where the step does not fit a graph (it runs eagerly). None off CUDA."""
    if graphs is None:
        return None

    def replay(ids, positions, slots, tables, seq_lens, starts):
        n = len(seq_lens)
        bucket = next((b for b in graphs.buckets if b >= n), None)
        if bucket is None or int(np.diff(starts).max()) > graphs.q:
            return None
        if len(tables[0]) > graphs.static["block_tables"].shape[1]:
            return None
        host = _draft_inputs(ids, positions, slots, tables, seq_lens, starts, 0)
        return graphs.run(host, bucket)

    return replay
