"""--models-dir with the real engine over a GGUF file and an HF folder side by side (the load
path ``minerva serve`` uses): both are listed with their format and quantization, both answer,
and /api/ps reports the engine's own memory figure and quantization."""

from __future__ import annotations

import asyncio

import httpx
import ollama
import pytest
import torch

pytest.importorskip("gguf")

from minerva.config import EngineConfig  # noqa: E402
from minerva.demo import demo_model_path  # noqa: E402
from minerva.loader.checkpoint import iter_checkpoint_tensors  # noqa: E402
from minerva.loader.gguf_export import write_gguf  # noqa: E402
from minerva.loader.hf_config import load_model_config  # noqa: E402
from minerva.quant.gguf_quantize import quantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType  # noqa: E402
from minerva.server.app import build_app  # noqa: E402
from minerva.server.config import ServerConfig  # noqa: E402
from minerva.server.model_loading import directory_app_options  # noqa: E402


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    demo = demo_model_path()
    root = tmp_path_factory.mktemp("models")
    tensors = iter_checkpoint_tensors(demo, "cpu", torch.float32, progress=False)
    plan = lambda name, shape: GGMLType.Q8_0  # noqa: E731
    write_gguf(load_model_config(demo), tensors, root / "demo-q8_0.gguf", plan, quantize_tensor,
               tokenizer_dir=demo, file_type="q8_0")  # fmt: skip
    (root / "demo").symlink_to(demo, target_is_directory=True)
    return root


def test_gguf_and_hf_models_side_by_side(models_dir):
    engine = EngineConfig.from_kwargs(
        device="cpu", dtype="float32", num_threads=1, num_kv_blocks=64, max_model_len=256
    )
    server = ServerConfig(models_dir=str(models_dir))
    app = build_app(server, **directory_app_options(engine, server), reap_interval=None)
    registry = app.state.minerva.registry

    async def main():
        async with app.router.lifespan_context(app):
            client = ollama.AsyncClient(host="http://localhost", transport=httpx.ASGITransport(app))
            listed = {m.model: m for m in (await client.list()).models}
            options = {"num_predict": 4, "temperature": 0}
            replies = [await client.generate(m, "Once upon", options=options) for m in listed]
            ps = {m.model: m for m in (await client.ps()).models}
            memory = {m.name: m.backend.stats().model_memory_bytes for m in registry.loaded()}
            return listed, replies, ps, memory

    listed, replies, ps, memory = asyncio.run(main())
    assert sorted(listed) == ["demo-q8_0:latest", "demo:latest"]
    gguf = listed["demo-q8_0:latest"]
    assert (gguf.details.format, gguf.details.quantization_level) == ("gguf", "Q8_0")
    assert gguf.size == (models_dir / "demo-q8_0.gguf").stat().st_size
    assert listed["demo:latest"].details.format == "safetensors"
    assert all(r.done and r.eval_count == 4 for r in replies)
    assert ps["demo-q8_0:latest"].details.quantization_level == "Q8_0"
    for name, m in ps.items():
        assert m.size == memory[name] > 0 and m.size_vram == 0  # the engine's figure, on CPU
