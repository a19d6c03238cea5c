"""Fetch llama.cpp's vocabulary test vectors for tests/unit/test_gguf_vocab.py.

llama.cpp ships ``models/ggml-vocab-*.gguf`` (tokenizer-only GGUF files) with ``.gguf.inp`` /
``.gguf.out`` pairs (texts and the token ids llama.cpp must produce). The llama-cpp-python
source distribution on PyPI vendors them; this script downloads that pinned sdist with pip,
checks its SHA-256 and extracts only those files (about 75 MB) into

    $MINERVA_LLAMA_VOCAB_DIR, or ~/.cache/minerva/llama-vocab/<version>

It prints that directory. A second run finds the files there and downloads nothing. Any
failure exits non-zero with the reason (CI runs this before pytest, so the tests never skip).

    python scripts/fetch_vocab_vectors.py
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MEMBER_PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/models/ggml-vocab-"
DONE_MARKER = ".complete"


def vocab_dir() -> Path:
    """Where the files go (the tests read the same place)."""
    env = os.environ.get("MINERVA_LLAMA_VOCAB_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "minerva" / "llama-vocab" / VERSION


def _download(into: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", "--dest", str(into), f"llama-cpp-python=={VERSION}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    sdist = into / SDIST
    if result.returncode != 0 or not sdist.is_file():
        sys.exit(f"pip download of llama-cpp-python=={VERSION} failed:\n{result.stderr}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{SDIST} has SHA-256 {digest}, expected {SHA256}: refusing to use it")
    return sdist


def _extract(sdist: Path, dest: Path) -> int:
    """Copy the ggml-vocab-* regular files out of the sdist, flat; returns how many."""
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.startswith(MEMBER_PREFIX)):
                continue
            name = Path(member.name).name
            if "/" in name or name.startswith("."):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            (dest / name).write_bytes(source.read())
            count += 1
    return count


def main() -> int:
    dest = vocab_dir()
    if (dest / DONE_MARKER).is_file():
        print(dest)
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        count = _extract(_download(Path(tmp)), dest)
    if count == 0:
        sys.exit(f"{SDIST} holds no {MEMBER_PREFIX}* files")
    (dest / DONE_MARKER).write_text(f"llama-cpp-python {VERSION}: {count} files\n")
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
