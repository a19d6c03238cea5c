"""Path traversal through model names (issue #15, the suite's traversal row): with
``--models-dir``, a model name is looked up among the directory's entries, never joined onto a
path, and a new name (copy, create) is letters, digits, '.', '-', '_' and a tag. Names that try
to leave the directory get a 4xx in the route's API shape on every route that takes one, nothing
is loaded, and no file inside or outside the directory is created, changed or deleted.

(Pulling or creating FROM a local path is a feature: it copies or links a model folder in.)
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.reliability.input_app import api_shaped, figure
from tests.unit.test_server_models_dir import serve

NAMES = [
    "..", ".", "../outside", "../outside:latest", "a/../../outside", "/etc/passwd", "~/outside",
    "a/..", "a:../../outside", "..\\outside", "%2e%2e%2foutside", "a\x00b", "a:latest/../b",
    "outside/..", " a", "a\n", "",
]  # fmt: skip


def _requests(name: str) -> list[tuple[str, str, dict]]:
    msgs = [{"role": "user", "content": "hi"}]
    return [
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/generate", {"model": name, "prompt": "hi", "stream": False}),
        ("POST", "/api/chat", {"model": name, "messages": msgs, "stream": False}),
        ("POST", "/api/copy", {"source": name, "destination": "copied"}),
        ("POST", "/api/copy", {"source": "a", "destination": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/create", {"model": name, "from": "a"}),
        ("POST", "/v1/chat/completions", {"model": name, "messages": msgs}),
        ("POST", "/v1/completions", {"model": name, "prompt": "hi"}),
        ("POST", "/v1/embeddings", {"model": name, "input": "hi"}),
    ]


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed) with its size and modification time."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = Path(folder, entry)
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_model_names_cannot_leave_the_models_dir(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text('{"model_type": "llama"}')
    (outside / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "outside.gguf").write_bytes(b"GGUF")

    async def run(transport, registry, loader):
        before = _snapshot(tmp_path)
        answers = []
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            for name in NAMES:
                for method, path, body in _requests(name):
                    r = await c.request(method, path, json=body)
                    answers.append((name, path, r))
            gets = [await c.get(f"/v1/models/{p}") for p in ("..%2F..%2Foutside", "../outside")]
        return before, _snapshot(tmp_path), answers, gets, list(loader.loads)

    before, after, answers, gets, loads = serve(models, run)
    wrong = [(n, p, r.status_code, r.text[:120]) for n, p, r in answers
             if not (400 <= r.status_code < 500 and api_shaped(p, r))]  # fmt: skip
    assert wrong == [], wrong
    assert all(g.status_code == 404 for g in gets)
    assert loads == []  # no name reached the loader
    # a, b: the directory's own models; nothing else appeared, changed or went away
    assert after == before
    figure("traversal", f"{len(answers) + len(gets)} requests naming {len(NAMES)} escaping "
           f"models on 11 routes: all 4xx in the API's shape, 0 loads, 0 files created, "
           "changed or deleted inside or outside the models directory")  # fmt: skip
