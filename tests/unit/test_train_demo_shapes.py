"""scripts/train_demo_model.py's shapes and training options: `demo` is the bundled model's
shape, `target` its bigger sibling (same vocabulary, context and special tokens); a folder saved
in shards loads in Minerva with transformers' tokens; the time budget and the best-weights keeper."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.demo import demo_model_path
from tests.tiny_models import hf_greedy

pytest.importorskip("transformers")
_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("train_demo", _ROOT / "scripts/train_demo_model.py")
train_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_demo)

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)
SAME = ("vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id",
        "pad_token_id", "tie_word_embeddings", "rope_parameters", "rms_norm_eps", "model_type")  # fmt: skip


def config_of(shape: dict) -> dict:
    with torch.device("meta"):
        model = train_demo.build_model(4096, shape)
    return model.config.to_dict() | {"num_parameters": sum(p.numel() for p in model.parameters())}


def test_demo_shape_is_the_bundled_models() -> None:
    bundled = json.loads((demo_model_path() / "config.json").read_text())
    built = config_of(train_demo.SHAPES["demo"])
    for key in [*train_demo.MODEL_SHAPE, *SAME]:
        assert built[key] == bundled[key], key
    assert train_demo.SHAPES["demo"] is train_demo.MODEL_SHAPE


def test_target_is_a_bigger_sibling_that_fits_the_gpu_return() -> None:
    demo, target = config_of(train_demo.MODEL_SHAPE), config_of(train_demo.TARGET_SHAPE)
    for key in SAME:
        assert target[key] == demo[key], key
    assert target["num_parameters"] == 20_456_832
    assert 3 < target["num_parameters"] / demo["num_parameters"] < 4
    assert target["num_parameters"] * 2 < 45e6  # bf16 bytes: 3 shards of at most 15 MiB
    heads, head_dim = target["num_attention_heads"], target["head_dim"]
    assert heads * head_dim == target["hidden_size"] and heads % target["num_key_value_heads"] == 0


def save(tmp_path: Path, monkeypatch, max_shard: int | None) -> Path:
    if max_shard is not None:
        monkeypatch.setattr(train_demo, "MAX_SHARD_BYTES", max_shard)
    torch.manual_seed(0)
    model = train_demo.build_model(4096, TINY)
    out = tmp_path / "out"
    out.mkdir()
    train_demo.save_folder(model, demo_model_path(), out)  # the demo folder has the tokenizer
    return out


def test_small_model_saves_one_file(tmp_path, monkeypatch) -> None:
    out = save(tmp_path, monkeypatch, None)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()


def test_sharded_folder_loads_in_minerva_with_transformers_tokens(tmp_path, monkeypatch) -> None:
    from transformers import LlamaForCausalLM

    out = save(tmp_path, monkeypatch, 300_000)
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 2 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for name in ("config.json", "generation_config.json", *train_demo.TOKENIZER_FILES):
        assert (out / name).is_file(), name
    prompt = [1, 704, 263, 1250, 18]
    hf = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    expected, _ = hf_greedy(hf, prompt, 12)
    llm = LLM(model=str(out), device="cpu", dtype="float32", progress=False)
    got = llm.generate([prompt], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert list(got[0].outputs[0].token_ids) == expected


def test_steps_within_budget() -> None:
    # 60 s spent by step 40 at 0.1 s a step: 95% of the 240 s left holds 2280 more steps.
    assert train_demo.steps_within_budget(3000, 300, 60, 0.1, 40) == 2320
    assert train_demo.steps_within_budget(2000, 300, 60, 0.1, 40) == 2000  # never more
    assert train_demo.steps_within_budget(3000, 50, 60, 0.1, 40) == 41  # never fewer than done+1


def test_step_budget_times_the_probe_steps(monkeypatch) -> None:
    clock = iter([100.0, 103.0])  # step FIRST at t=100, step LAST 30 steps later at t=103
    monkeypatch.setattr(train_demo.time, "time", lambda: next(clock))
    budget = train_demo.StepBudget(60.0, torch.device("cpu"))
    start = 90.0
    assert budget.at_step(5, 1000, start) == 1000
    assert budget.at_step(budget.FIRST, 1000, start) == 1000
    # 13 s spent, 0.1 s a step: 40 + int(47 * 0.95 / 0.1) = 486.
    assert budget.at_step(budget.LAST, 1000, start) == 486


def test_best_weights_restores_the_lowest_validation_loss() -> None:
    model = torch.nn.Linear(3, 2)
    keeper = train_demo.BestWeights(model)
    keeper.offer(100, 2.0)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    keeper.offer(200, 2.5)  # worse: not kept
    assert keeper.restore() == 100
    assert torch.equal(model.weight, best)


def test_train_target_shape_end_to_end(tmp_path, monkeypatch) -> None:
    """cmd_train with --shape target (shrunk), --keep-best, --time-budget on tiny data."""
    monkeypatch.setitem(train_demo.SHAPES, "target", TINY)
    monkeypatch.setattr(train_demo, "MAX_SHARD_BYTES", 300_000)
    data = tmp_path / "data"
    data.mkdir()
    for name in train_demo.TOKENIZER_FILES:
        (data / name).write_bytes((demo_model_path() / name).read_bytes())
    (data / "heldout.txt").write_text((demo_model_path() / "heldout.txt").read_text()[:3000])
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        rng.integers(3, 4096, 4 * train_demo.CONTEXT, dtype=np.uint16).tofile(data / f"{split}.bin")
    args = argparse.Namespace(
        data=str(data), out=str(tmp_path / "out"), steps=3, batch_size=1, lr=3e-3, warmup=0.03,
        weight_decay=0.1, eval_every=1, val_batches=1, log_every=1, device="cpu",
        compile=False, shape="target", keep_best=True, time_budget=600.0,
    )  # fmt: skip
    train_demo.cmd_train(args)
    log = json.loads((tmp_path / "out/train_log.json").read_text())
    assert log["shape"] == "target" and log["steps"] == 3
    assert log["num_parameters"] == config_of(TINY)["num_parameters"]
    best = int(np.argmin(log["history"]["val_loss"]))
    assert log["kept_step"] == best + 1
    assert (tmp_path / "out/model.safetensors.index.json").is_file()
