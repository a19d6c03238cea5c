"""Ollama's model management over the models directory: pull (from a local path: there is no
registry to download from), copy, create and delete.

A copy is a symlink to the source's entry; a created model with parameters is a folder of
hard links to the base's files plus its own generation_config.json (the sampling defaults the
engine reads); a pull copies the files in. Delete unloads the model (after its requests) and
removes its entry: a symlink only, never what it points to.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from minerva.server.api_errors import APIError
from minerva.server.background import in_daemon_thread
from minerva.server.model_dir import LocalModel, canonical_name, check_name, describe, entry_name
from minerva.server.model_registry import ModelRegistry
from minerva.server.modelfile import Recipe

NO_REGISTRY = (
    "this server has no model registry to download from: download the model's files yourself "
    "(e.g. `huggingface-cli download ORG/NAME --local-dir {dir}/NAME`, or put a .gguf file in "
    '{dir}), or pull from a local path: {{"model": "/path/to/model"}}'
)


class ModelStore:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.root = registry.models_dir

    async def pull(self, name: str) -> list[str]:
        """Statuses of pulling ``name``: a model the directory has, or a local path whose model
        is copied in under its own name."""
        if canonical_name(name) in self.registry.models():
            return [f"{canonical_name(name)} is already available", "success"]
        source = Path(name).expanduser()
        model = describe(source) if _looks_like_path(name) and source.exists() else None
        if model is None:
            raise APIError(404, NO_REGISTRY.format(dir=self.root), param="model", code="not_found")
        target = self._free_entry(model.name, source)
        await in_daemon_thread(lambda: _copy(source, target), name="minerva-pull")
        return [f"copying {source} to {target}", f"{model.name} is available", "success"]

    def copy(self, source: str, destination: str) -> None:
        model = self.registry.find(source)
        target = self._free_entry(check_name(destination), model.entry)
        os.symlink(model.entry.resolve(), target, target_is_directory=model.entry.is_dir())

    async def delete(self, name: str) -> None:
        model = self.registry.find(name)
        await self.registry.unload(model.name, reason="deleted")
        entry = model.entry
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        else:
            shutil.rmtree(entry)

    def create(self, name: str, recipe: Recipe) -> list[str]:
        name = check_name(name)
        base = self._base(recipe.base)
        if not recipe.parameters:
            target = self._free_entry(name, base.entry)
            os.symlink(base.entry.resolve(), target, target_is_directory=base.entry.is_dir())
        elif base.format == "gguf":
            raise APIError(
                400,
                f"parameters on a GGUF model ({base.name}) are not supported: set them per "
                "request in 'options'",
                code="unsupported",
            )
        else:
            target = self._free_entry(name, base.entry)
            _folder_with_defaults(base.path, target, recipe.parameters)
        return [f"using {base.path}", f"writing {target}", "success"]

    # -- internals ------------------------------------------------------------------------
    def _base(self, text: str) -> LocalModel:
        """FROM: a local path, else a model of the directory."""
        path = Path(text).expanduser()
        if _looks_like_path(text) and path.exists():
            model = describe(path)
            if model is None:
                raise APIError(400, f"FROM {text}: no model there (an HF folder or a .gguf file)")
            return model
        return self.registry.find(text)

    def _free_entry(self, name: str, like: Path) -> Path:
        """Where a new model called ``name`` goes (a file's suffix kept), or 400 if taken."""
        if name in self.registry.models():
            raise APIError(
                400, f"a model named {name} exists already: delete it first or pick another name",
                param="model", code="model_exists",
            )  # fmt: skip
        suffix = ".gguf" if like.is_file() else ""
        target = self.root / (entry_name(name) + suffix)
        if target.exists() or target.is_symlink():
            raise APIError(400, f"{target} exists already: remove it or pick another name")
        return target


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or os.sep in text


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copy2(source, target)


def _folder_with_defaults(base: Path, target: Path, parameters: dict) -> None:
    """``target``: hard links to ``base``'s files (copies across file systems; the loader
    refuses symlinks out of a model folder), and its generation_config.json with
    ``parameters`` over the base's."""
    target.mkdir()
    generation = {}
    for f in base.resolve().iterdir():
        if f.name == "generation_config.json":
            generation = json.loads(f.read_text())
        elif f.is_dir():
            shutil.copytree(f, target / f.name)
        else:
            try:
                os.link(f, target / f.name)
            except OSError:  # another file system, or no hard links there
                shutil.copy2(f, target / f.name)
    generation.update(parameters)
    if "temperature" in parameters:
        generation["do_sample"] = parameters["temperature"] > 0
    (target / "generation_config.json").write_text(json.dumps(generation, indent=2))
