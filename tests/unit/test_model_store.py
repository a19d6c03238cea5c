"""Ollama's pull / copy / create / delete over a models directory, through the official client
(and the Modelfile body older clients send); fake backends, real files."""

from __future__ import annotations

import json
import os

import httpx
import ollama
import pytest

from tests.unit.test_model_registry import MB, make_dir
from tests.unit.test_server_models_dir import serve


def _client(transport) -> ollama.AsyncClient:
    return ollama.AsyncClient(host="http://localhost", transport=transport)


async def _names(client) -> list[str]:
    return sorted(m.model for m in (await client.list()).models)


def test_copy_is_a_symlink_and_delete_removes_only_the_entry(tmp_path):
    async def check(transport, registry, loader):
        client = _client(transport)
        await client.copy("a", "a-copy:v1")
        listed = await _names(client)
        await client.chat("a-copy:v1", messages=[{"role": "user", "content": "hi"}])
        await client.delete("a-copy:v1")  # loaded: unloaded first, then removed
        with pytest.raises(ollama.ResponseError) as taken:
            await client.copy("a", "b")
        with pytest.raises(ollama.ResponseError) as missing:
            await client.delete("zzz")
        return listed, await _names(client), registry.counters.unloads, taken, missing

    listed, after, unloads, taken, missing = serve(tmp_path, check)
    assert listed == ["a-copy:v1", "a:latest", "b:latest"]
    assert after == ["a:latest", "b:latest"] and unloads == {"deleted": 1}
    assert (tmp_path / "a" / "model.safetensors").stat().st_size == 10 * MB  # the source stays
    assert not os.path.lexists(tmp_path / "a-copy:v1")
    assert taken.value.status_code == 400 and "exists already" in taken.value.error
    assert missing.value.status_code == 404


def test_pull_copies_a_local_path_in_and_says_what_to_do_for_a_name(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    outside = make_dir(tmp_path / "elsewhere", {"c": 3 * MB})
    models = tmp_path / "models"
    models.mkdir()

    async def check(transport, registry, loader):
        client = _client(transport)
        pulled = await client.pull(str(outside / "c"))
        again = await client.pull("c")
        with pytest.raises(ollama.ResponseError) as remote:
            await client.pull("llama3.2")
        return pulled, again, await _names(client), remote

    pulled, again, names, remote = serve(models, check)
    assert pulled.status == "success" and again.status == "success"
    assert "c:latest" in names and not (models / "c").is_symlink()  # a real copy
    assert (models / "c" / "model.safetensors").stat().st_size == 3 * MB
    assert remote.value.status_code == 404
    assert "no model registry" in remote.value.error and "huggingface-cli" in remote.value.error


def test_create_with_parameters_writes_the_generation_defaults(tmp_path):
    async def check(transport, registry, loader):
        client = _client(transport)
        await client.create("a-cold", from_="a", parameters={"temperature": 0, "top_k": 5})
        http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        modelfile = f"# comment\nFROM {tmp_path / 'b'}\nPARAMETER repeat_penalty 1.1\n"
        made = await http.post("/api/create", json={"model": "b-pen", "modelfile": modelfile})
        plain = await http.post("/api/create", json={"model": "b-same", "from": "b"})
        system = await http.post(
            "/api/create", json={"model": "x", "modelfile": "FROM a\nSYSTEM be brief"}
        )
        body = {"model": "y", "from": "a", "parameters": {"mirostat": 1}}
        unknown = await http.post("/api/create", json=body)
        return made, plain, system, unknown, await _names(client)

    made, plain, system, unknown, names = serve(tmp_path, check)
    assert made.status_code == 200 and plain.status_code == 200
    assert names == ["a-cold:latest", "a:latest", "b-pen:latest", "b-same:latest", "b:latest"]
    cold = json.loads((tmp_path / "a-cold" / "generation_config.json").read_text())
    assert cold == {"temperature": 0, "top_k": 5, "do_sample": False}
    weights = tmp_path / "a-cold" / "model.safetensors"  # the same file, not a link out
    assert not weights.is_symlink()
    assert weights.stat().st_ino == (tmp_path / "a" / "model.safetensors").stat().st_ino
    pen = json.loads((tmp_path / "b-pen" / "generation_config.json").read_text())
    assert pen == {"repetition_penalty": 1.1}
    assert (tmp_path / "b-same").is_symlink()
    assert system.status_code == 400 and "SYSTEM" in system.json()["error"]
    assert unknown.status_code == 400 and "mirostat" in unknown.json()["error"]
