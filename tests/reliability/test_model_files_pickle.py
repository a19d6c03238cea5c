"""The pickle canary (issue #15, the suite's pickle row): a ``pytorch_model.bin`` whose pickle
would create a file when unpickled is refused with a ModelLoadError naming safetensors, in every
way such a file can come (torch's zip format, the legacy format, a bare pickle, a shard of an
index, the payload as the whole object or inside the state dict), and the canary never appears:
the payload did not run."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from minerva.errors import ModelLoadError
from minerva.loader import iter_checkpoint_tensors
from tests.reliability.input_app import figure


class Canary:
    """Unpickling it calls ``os.mkdir(path)``: the canary."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _zip(path: Path, obj) -> None:
    torch.save(obj, path)


def _legacy(path: Path, obj) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _bare(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


WRITERS = {"zip": _zip, "legacy": _legacy, "bare pickle": _bare}


def _cases(folder: Path, canary: Path):
    """(name, write(folder)) for every form of a hostile checkpoint."""
    for kind, write in WRITERS.items():
        yield f"{kind}, whole object", lambda f, w=write: w(f / "pytorch_model.bin", Canary(canary))
        yield (
            f"{kind}, in the state dict",
            lambda f, w=write: w(
                f / "pytorch_model.bin", {"w": torch.ones(2), "evil": Canary(canary)}
            ),
        )

    def sharded(f: Path) -> None:
        torch.save({"a": torch.ones(2)}, f / "pytorch_model-00001-of-00002.bin")
        torch.save({"b": Canary(canary)}, f / "pytorch_model-00002-of-00002.bin")
        index = {"weight_map": {"a": "pytorch_model-00001-of-00002.bin",
                                "b": "pytorch_model-00002-of-00002.bin"}}  # fmt: skip
        (f / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    yield "a shard of an index", sharded


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    canary = tmp_path / "canary"
    refused = []
    for i, (name, write) in enumerate(_cases(tmp_path, canary)):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        write(folder)
        with pytest.raises(ModelLoadError) as err:
            list(iter_checkpoint_tensors(folder, progress=False))
        assert not canary.exists(), f"{name}: the pickle's payload ran"
        refused.append(name)
        if "arbitrary Python objects" in str(err.value):
            assert "safetensors" in str(err.value)
    figure("pickle canary", f"{len(refused)} of {len(refused)} hostile .bin checkpoints "
           "(zip, legacy, bare pickle, a shard; payload whole or in the dict) refused, "
           "the canary never created")  # fmt: skip
