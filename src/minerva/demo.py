"""The demo model bundled with the package: what Minerva runs when no model is given.

A ~6 M parameter Llama with its own byte-level BPE tokenizer and chat template, trained by
``scripts/train_demo_model.py`` on permissively licensed documentation (see its README.md).
It lives in ``minerva/demo_model/`` as an ordinary Hugging Face folder and ships in the wheel.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from minerva.errors import ModelLoadError

DEMO_MODEL_PACKAGE_DIR = "demo_model"
DEMO_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
"""The files a loader needs; README.md, loss_curve.png and heldout.txt document the model."""


def demo_model_path() -> Path:
    """Folder of the bundled demo model inside the installed package.

    Raises ModelLoadError when the folder or one of its files is missing (e.g. a build that left
    out package data), naming the missing file and the fix.
    """
    root = resources.files("minerva").joinpath(DEMO_MODEL_PACKAGE_DIR)
    # Wheels and source trees install as plain folders; a zipped install has no real path.
    path = Path(str(root))
    if not path.is_dir():
        raise ModelLoadError(
            f"the bundled demo model folder {str(path)!r} is missing: this minerva install was "
            "built without its package data. Reinstall minerva (pip install --force-reinstall "
            "minerva-llm), or pass --model with a local Hugging Face folder"
        )
    missing = [name for name in DEMO_MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"the bundled demo model in {str(path)!r} lacks {', '.join(missing)}: reinstall "
            "minerva, rebuild the folder with scripts/train_demo_model.py, or pass --model "
            "with a local Hugging Face folder"
        )
    return path


DEMO_MODEL_NAME = "demo"
"""What ``--model`` accepts for the bundled model (a local file or folder of that name wins)."""


def resolve_model_arg(model: str | Path | None) -> Path:
    """``--model`` as a path: the bundled demo model for None or ``demo``, else the user's path."""
    if model is None or (str(model) == DEMO_MODEL_NAME and not Path(DEMO_MODEL_NAME).exists()):
        return demo_model_path()
    return Path(os.path.expanduser(str(model)))
