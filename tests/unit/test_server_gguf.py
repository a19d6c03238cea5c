"""The real server over a quantized model reports the truth: /api/tags, /api/show and /v1/models
give the format, the quantization level, the parameter count, the file's digest and mtime, and
the quantized weight bytes; for a GGUF file and for a float folder quantized while loading."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("gguf")

from minerva.backends.minerva import MinervaBackend  # noqa: E402
from minerva.config import EngineConfig  # noqa: E402
from minerva.demo import demo_model_path  # noqa: E402
from minerva.engine.llm_engine import LLMEngine  # noqa: E402
from minerva.loader.checkpoint import iter_checkpoint_tensors  # noqa: E402
from minerva.loader.gguf_export import write_gguf  # noqa: E402
from minerva.loader.hf_config import load_model_config  # noqa: E402
from minerva.quant.gguf_quantize import quantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType  # noqa: E402
from minerva.server.app import build_app  # noqa: E402
from minerva.server.config import ServerConfig  # noqa: E402

NAME = "demo"


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    demo = demo_model_path()
    path = tmp_path_factory.mktemp("gguf") / "demo-q8_0.gguf"
    tensors = iter_checkpoint_tensors(demo, "cpu", torch.float32, progress=False)
    plan = lambda name, shape: GGMLType.Q8_0  # noqa: E731
    config = load_model_config(demo)
    write_gguf(config, tensors, path, plan, quantize_tensor, tokenizer_dir=demo, file_type="q8_0")
    return path


def demo_parameter_count() -> int:
    return sum(t.numel() for t in load_file(demo_model_path() / "model.safetensors").values())


def serve(model: str, **kwargs):
    config = EngineConfig.from_kwargs(
        model=model, device="cpu", dtype="float32", num_kv_blocks=64, num_threads=1, **kwargs
    )
    backend = MinervaBackend(LLMEngine(config, progress=False))
    app = build_app(ServerConfig(served_model_name=NAME), load_backend=lambda: backend)

    async def ask(client):
        tags = await client.get("/api/tags")
        show = await client.post("/api/show", json={"model": NAME})
        models = await client.get("/v1/models")
        return tags.json()["models"][0], show.json(), models.json()["data"][0]

    async def run():
        import httpx

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost"
            ) as client:
                while (await client.get("/health")).status_code != 200:
                    await asyncio.sleep(0.02)
                return await ask(client)

    return (*asyncio.run(run()), backend)


def test_a_gguf_file_is_reported_as_it_is(q8_file):
    tag, show, card, backend = serve(str(q8_file))
    digest = "sha256:" + hashlib.sha256(q8_file.read_bytes()).hexdigest()
    details = {"format": "gguf", "quantization_level": "Q8_0"}
    assert tag["details"].items() >= details.items() and show["details"] == tag["details"]
    assert tag["digest"] == digest and card["digest"] == digest
    assert card["format"] == "gguf" and card["quantization"] == "Q8_0"
    assert show["model_info"]["general.parameter_count"] == demo_parameter_count()
    mtime = dt.datetime.fromtimestamp(q8_file.stat().st_mtime, dt.timezone.utc).isoformat()
    assert tag["modified_at"] == mtime
    # the blocks as loaded: Q8_0 is 34 bytes per 32 weights, well under float32
    assert tag["size"] == backend.model_info().weight_bytes < demo_parameter_count() * 4 / 2


def test_a_folder_quantized_while_loading_reports_its_quantization():
    tag, _, card, backend = serve(str(demo_model_path()), quantization="Q4K")
    assert tag["details"]["format"] == "safetensors"
    assert tag["details"]["quantization_level"] == "Q4_K" == card["quantization"]
    dense = demo_parameter_count() * 4
    assert tag["size"] == backend.model_info().weight_bytes < dense / 2
