"""Model folders that try to make the loader read what it should not: a FIFO (or device) named
like a weight file is refused without opening it (an open would block forever), and an index
naming shards outside the folder (``../``, absolute paths, symlinks out) is refused. The Hugging
Face cache layout (snapshot files linking into the repository's blobs/) still loads."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from safetensors import safe_open

from minerva.errors import ModelLoadError
from minerva.loader import open_model
from tests.e2e.tiny_server_model import build_server_model
from tests.reliability.input_app import figure

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


def _names(model_dir: Path) -> list[str]:
    with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
        return list(f.keys())


def _folder(model_dir: Path, tmp_path: Path, weights: bool = True) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, folder / name)
    if weights:
        shutil.copy(model_dir / "model.safetensors", folder / "model.safetensors")
    return folder


def _with_index(model_dir: Path, folder: Path, shard: object) -> Path:
    index = {"weight_map": dict.fromkeys(_names(model_dir), shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def _load_files(folder: Path) -> list[Path]:
    """What the engine reads before building: config, then the checkpoint's files."""
    return open_model(folder).files


def _refused_without_hanging(folder: Path, fifo: Path | None = None) -> str:
    """The loader's answer; a hang guard (not a speed check) unblocks a stuck FIFO open."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["files"] = _load_files(folder)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive() and fifo is not None:
        with open(fifo, "wb"):  # let the blocked open return so the thread ends
            pass
        return "hung"
    error = result.get("error")
    if isinstance(error, ModelLoadError):
        return str(error)
    return f"not refused: {result}"


def test_hostile_weight_files_are_refused(model_dir, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(model_dir / "model.safetensors", outside)
    cases: dict[str, tuple[Path, Path | None, str]] = {}

    fifo_dir = _folder(model_dir, tmp_path / "fifo", weights=False)
    os.mkfifo(fifo_dir / "model.safetensors")
    cases["FIFO model.safetensors"] = (fifo_dir, fifo_dir / "model.safetensors", "regular file")
    shard_fifo = _with_index(
        model_dir, _folder(model_dir, tmp_path / "fifo2", False), "s.safetensors"
    )
    os.mkfifo(shard_fifo / "s.safetensors")
    cases["FIFO shard in the index"] = (shard_fifo, shard_fifo / "s.safetensors", "regular file")
    dev = _folder(model_dir, tmp_path / "dev", weights=False)
    (dev / "model.safetensors").symlink_to("/dev/zero")
    cases["model.safetensors -> /dev/zero"] = (dev, None, "regular file")
    for name, shard in {
        "index ../": "../outside.safetensors",
        "index absolute": str(outside),
        "index sub/../..": "sub/../../outside.safetensors",
        "index windows drive": "C:\\outside.safetensors",
    }.items():
        folder = _with_index(model_dir, _folder(model_dir, tmp_path / name.replace(" ", "_"),
                                                False), shard)  # fmt: skip
        cases[name] = (folder, None, "outside the model folder")
    link = _with_index(model_dir, _folder(model_dir, tmp_path / "link", False), "s.safetensors")
    (link / "s.safetensors").symlink_to(outside)
    cases["shard symlink out"] = (link, None, "outside the model folder")
    single_link = _folder(model_dir, tmp_path / "single_link", weights=False)
    (single_link / "model.safetensors").symlink_to(outside)
    cases["model.safetensors symlink out"] = (single_link, None, "outside the model folder")
    cases["index names a number"] = (
        _with_index(model_dir, _folder(model_dir, tmp_path / "num", False), 5),
        None,
        "not a file",
    )

    answers = {name: _refused_without_hanging(folder, fifo) for name, (folder, fifo, _) in
               cases.items()}  # fmt: skip
    wrong = {n: a for n, a in answers.items() if cases[n][2] not in a}
    figure("hostile model files", f"{len(cases) - len(wrong)} of {len(cases)} refused with a "
           "ModelLoadError, none hung (FIFOs, /dev/zero, ../, absolute, symlinks out)")  # fmt: skip
    assert not wrong


def test_the_hugging_face_cache_layout_still_loads(model_dir, tmp_path):
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in model_dir.iterdir():
        blob = repo / "blobs" / f"sha-{path.name}"
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(Path("../../blobs") / blob.name)
    files = _load_files(snapshot)
    assert snapshot / "model.safetensors" in files
    weights = dict(open_model(snapshot).iter_weights(progress=False))
    assert set(weights) == set(_names(model_dir))


def test_an_index_with_plain_shard_names_loads(model_dir, tmp_path):
    folder = _with_index(model_dir, _folder(model_dir, tmp_path), "model.safetensors")
    assert folder / "model.safetensors" in _load_files(folder)
