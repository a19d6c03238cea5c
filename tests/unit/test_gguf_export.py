"""GGUF export: what transformers' own GGUF reader loads from our file equals the source model."""

from __future__ import annotations

import pytest
import torch

from minerva.demo import demo_model_path
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.loader.gguf_export import float_plan, gguf_tensor_name, write_gguf
from minerva.loader.gguf_names import permute_rows
from minerva.loader.hf_config import load_model_config
from minerva.quant.gguf_types import GGMLType

pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers needs it to read GGUF
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory):
    folder = demo_model_path()
    config = load_model_config(folder)
    tensors = iter_checkpoint_tensors(folder, torch.device("cpu"), torch.float32, progress=False)
    out = tmp_path_factory.mktemp("gguf") / "demo-f32.gguf"
    write_gguf(
        config, tensors, out, float_plan(GGMLType.F32), tokenizer_dir=folder, file_type="f32"
    )
    return folder, out


def test_transformers_reads_the_same_weights_and_logits(demo_gguf):
    folder, path = demo_gguf
    auto = transformers.AutoModelForCausalLM
    ref = auto.from_pretrained(folder, dtype=torch.float32)
    ours = auto.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    a, b = ref.state_dict(), ours.state_dict()
    assert set(a) <= set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ids = torch.tensor([[1, 50, 300, 7, 99, 1000, 4000]])
    assert torch.equal(ref(ids).logits, ours(ids).logits)


def test_transformers_reads_the_same_tokenizer(demo_gguf):
    folder, path = demo_gguf
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    ours = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "SQLite is a database that  stores\n\ndata — in files. 123 don't"
    assert ref.encode(text) == ours.encode(text)


def test_names_and_permutation():
    assert gguf_tensor_name("model.layers.3.self_attn.k_proj.bias") == "blk.3.attn_k.bias"
    assert gguf_tensor_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    assert gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    # Two heads of head_dim 4: rows [a0 a1 b0 b1] become [a0 b0 a1 b1] within each head.
    w = torch.arange(8).reshape(8, 1)
    assert permute_rows(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
