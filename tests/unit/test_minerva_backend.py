"""Minerva's engine as a Backend: ModelInfo from the checkpoint's own facts, the same tokens and
scores as the sync engine through the protocol (BlockingBackend), stats, the step observer,
and the tokenizer calls."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from safetensors.numpy import load_file

from minerva.backends import load_backend
from minerva.backends.base import Backend, StepInfo
from minerva.backends.blocking import BlockingBackend
from minerva.backends.minerva import MinervaBackend
from minerva.config import EngineConfig
from minerva.engine.llm_engine import LLMEngine
from minerva.errors import ConfigError, RequestError
from minerva.loader import open_model
from minerva.sampling_params import SamplingParams
from minerva.tokenizer import Tokenizer
from tests.e2e.tiny_server_model import MAX_LEN, build_server_model

PROMPT = [1, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def bin_dir(model_dir, tmp_path_factory):
    """The same weights as a PyTorch .bin checkpoint, and no tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bin")
    shutil.copy(model_dir / "config.json", folder / "config.json")
    tensors = {
        k: torch.from_numpy(v) for k, v in load_file(model_dir / "model.safetensors").items()
    }
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder


def config(folder, **kwargs) -> EngineConfig:
    return EngineConfig.from_kwargs(
        model=str(folder), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1,
        **{"max_num_seqs": 2, **kwargs},
    )  # fmt: skip


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def test_model_info_comes_from_the_checkpoint(model_dir, bin_dir):
    tensors = load_file(model_dir / "model.safetensors")
    num_params = sum(t.size for t in tensors.values())
    backend = load_backend("minerva", config(model_dir, max_model_len=512))
    assert isinstance(backend, Backend)
    assert backend.model_info(digest=False).digest == ""  # cheap: not hashed yet
    info = backend.model_info()
    assert (info.format, info.quantization, info.dtype) == ("safetensors", "FLOAT32", "float32")
    assert info.parameter_count == num_params and info.weight_bytes == 4 * num_params
    files = [model_dir / "config.json", model_dir / "model.safetensors"]  # in the source's order
    assert (
        info.digest
        == "sha256:" + hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    )
    assert info.digest == open_model(model_dir).digest() and backend.model_info() is info
    assert backend.model_info(digest=False) is info  # known now: no reason to drop it
    assert (info.context_length, info.vocab_size) == (512, tensors["lm_head.weight"].shape[0])
    assert (backend.max_model_len, backend.vocab_size) == (512, info.vocab_size)
    assert (info.architecture, info.family, info.device) == ("LlamaForCausalLM", "llama", "cpu")
    assert (info.hidden_size, info.num_layers, info.num_attention_heads, info.num_kv_heads) == (
        64, 2, 4, 2,
    )  # fmt: skip
    assert info.source == str(model_dir) and info.name == model_dir.name
    assert info.modified_at == (model_dir / "config.json").stat().st_mtime
    from_bin = load_backend("minerva", config(bin_dir)).model_info()
    assert from_bin.format == "pytorch" and from_bin.context_length == MAX_LEN
    assert from_bin.parameter_count == num_params and from_bin.digest != info.digest
    assert from_bin.quantization == "FLOAT32" and from_bin.name == bin_dir.name
    dummy = load_backend("minerva", config(model_dir, load_format="dummy")).model_info()
    config_digest = hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()
    assert dummy.format == "dummy" and dummy.digest == "sha256:" + config_digest


def test_an_unknown_backend_is_a_config_error(model_dir):
    with pytest.raises(ConfigError, match="unknown backend 'vllm'.*minerva, llamacpp"):
        load_backend("vllm", config(model_dir))


class Steps:
    def __init__(self) -> None:
        self.steps: list[StepInfo] = []
        self.num_outputs = 0

    def on_step(self, info, outputs) -> None:
        if info is not None:
            self.steps.append(info)
        self.num_outputs += len(outputs)


def test_requests_through_the_protocol_match_the_sync_engine(model_dir):
    ref = LLMEngine(config(model_dir), progress=False)
    ref.add_request(PROMPT, greedy(10), "ref")
    ref.add_request(PROMPT[:3], greedy(6), "ref2")
    finals = {}
    while ref.has_unfinished_requests():
        finals.update({o.request_id: o for o in ref.step() if o.finished})
    expected_scores = ref.score(PROMPT)

    backend = MinervaBackend(LLMEngine(config(model_dir), progress=False))
    observer = Steps()
    backend.set_observer(observer)
    runner = BlockingBackend(backend)
    try:
        streamed = list(runner.stream(PROMPT, greedy(10)))
        batch = runner.generate([PROMPT, PROMPT[:3]], [greedy(10), greedy(6)])
        scores = runner.score(PROMPT)
        stats = backend.stats()
    finally:
        runner.close()
    deltas = [t for out in streamed for t in out.outputs[0].delta_token_ids]
    assert deltas == finals["ref"].token_ids and streamed[-1].finish_reason == "length"
    assert [o.token_ids for o in batch] == [finals["ref"].token_ids, finals["ref2"].token_ids]
    assert scores == pytest.approx(expected_scores, abs=1e-5) and len(scores) == len(PROMPT) - 1
    assert observer.steps[0].num_prefill_tokens == len(PROMPT)
    # stream=False: the batch reported once per request, the stream once per step.
    assert observer.num_outputs == len(streamed) + 2
    assert (stats.num_running, stats.num_waiting, stats.num_requests_in_flight) == (0, 0, 0)
    assert stats.kv_cache_usage == 0 and stats.num_kv_blocks == 256
    assert stats.device_memory_used > 0 and stats.device_memory_total >= stats.device_memory_used
    assert not backend.is_running


def test_tokenizer_calls_match_the_models_tokenizer(model_dir, bin_dir):
    backend = load_backend("minerva", config(model_dir))
    tok = Tokenizer.from_folder(model_dir)
    messages = [{"role": "user", "content": "Hello there"}]
    assert backend.has_tokenizer and backend.chat_template == tok.chat_template
    assert backend.encode("Hello there") == tok.encode("Hello there")
    assert backend.apply_chat_template(messages) == tok.encode_chat(messages)
    assert backend.decode([40, 50]) == tok.decode([40, 50])
    assert tok.eos_token_id in backend.eos_token_ids
    assert backend.default_sampling_params(max_tokens=3).max_tokens == 3
    bare = load_backend("minerva", config(bin_dir))
    assert not bare.has_tokenizer and bare.chat_template is None
    with pytest.raises(RequestError, match="no tokenizer"):
        bare.encode("hi")
    with pytest.raises(RequestError, match="no tokenizer"):
        bare.apply_chat_template(messages)
