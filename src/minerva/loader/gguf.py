"""A GGUF file (llama.cpp's format, possibly split into ``-0000k-of-0000n.gguf`` shards) as a
ModelSource: the config from its metadata, weights under their HF names with llama.cpp's Q/K row
permutation undone; float tensors as torch tensors, quantized ones as QuantizedTensor."""

from __future__ import annotations

import logging
import mmap
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from minerva.errors import ModelLoadError
from minerva.loader.checkpoint import convert_tensor, progress_bar
from minerva.loader.config_checks import model_shape_problems, raise_if_problems
from minerva.loader.gguf_config import (
    gguf_architecture,
    gguf_chat_template,
    gguf_generation_defaults,
    gguf_model_config,
    gguf_quantization,
)
from minerva.loader.gguf_file import GGUFFile, GGUFTensorInfo, read_gguf
from minerva.loader.gguf_names import (
    PERMUTED_ARCHS,
    check_shapes,
    hf_tensor_name,
    permuted_heads,
    unpermute_rows,
)
from minerva.loader.source import ModelSource
from minerva.platform import parse_dtype
from minerva.quant.gguf_types import (
    BLOCK_GEOMETRY,
    FLOAT_TYPES,
    SUPPORTED_WEIGHT_TYPES,
    GGMLType,
    LazyQuantizedTensor,
    QuantizedTensor,
)
from minerva.tokenizer import Tokenizer
from minerva.tokenizer.gguf_eog import eog_token_ids
from minerva.tokenizer.gguf_vocab import tokenizer_from_gguf_metadata

logger = logging.getLogger(__name__)

_SPLIT_NAME = re.compile(r"(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf")
_TORCH_FLOATS = {
    GGMLType.F32: torch.float32,
    GGMLType.F16: torch.float16,
    GGMLType.BF16: torch.bfloat16,
}
_ROPE_FREQS = "rope_freqs.weight"


class GGUFSource(ModelSource):
    def __init__(self, path: Path, tokenizer_path: Path | None = None) -> None:
        self.shards = read_shards(path)
        self.metadata: dict[str, Any] = self.shards[0].metadata
        """The first shard's metadata (decoded values): the tokenizer is built from it."""
        self.tensors = _collect_tensors(self.shards)
        arch = gguf_architecture(self.metadata, path)
        embed = self.tensors.get("token_embd.weight")
        if not self.tensors:
            raise ModelLoadError(
                f"{path} holds no tensors (a vocabulary-only GGUF?): pass a GGUF with weights"
            )
        if embed is None or len(embed[1].shape) != 2:
            raise ModelLoadError(f"{path} has no 2-D token_embd.weight tensor; {_FIX}")
        config = gguf_model_config(
            self.metadata, self.tensors, embed[1].shape[0], path, self._rope_freqs()
        )
        raise_if_problems(model_shape_problems(config), path, "GGUF metadata")
        self.hf_names = {
            name: hf
            for name in self.tensors
            if (hf := hf_tensor_name(name, config.num_hidden_layers, path)) is not None
        }
        check_shapes(
            config, {hf: self.tensors[n][1].shape for n, hf in self.hf_names.items()}, path
        )
        super().__init__(
            path=path,
            format="gguf",
            config=config,
            generation=gguf_generation_defaults(self.metadata),
            tokenizer_path=tokenizer_path,
            quantization=gguf_quantization(
                self.metadata, {info.ggml_type for _, info in self.tensors.values()}
            ),
        )
        self._permuted = arch in PERMUTED_ARCHS

    @property
    def files(self) -> list[Path]:
        return [shard.path for shard in self.shards]

    @property
    def tensor_types(self) -> dict[str, int]:
        return {hf: int(self.tensors[name][1].ggml_type) for name, hf in self.hf_names.items()}

    def _own_tokenizer(self) -> Tokenizer | None:
        """The vocabulary in the file's ``tokenizer.ggml.*`` metadata, as llama.cpp reads it."""
        if self.metadata.get("tokenizer.ggml.model") is None:
            return None
        return tokenizer_from_gguf_metadata(self.metadata, name=str(self.path))

    @property
    def eos_token_ids(self) -> list[int]:
        """EOS / EOT / EOM ids, plus every token llama.cpp ends generation on (e.g. <|im_end|>)."""
        return list(dict.fromkeys(super().eos_token_ids + eog_token_ids(self.metadata)))

    def _own_chat_template(self) -> str | dict[str, str] | None:
        return gguf_chat_template(self.metadata)

    def iter_weights(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        progress: bool = True,
        names_filter: Callable[[str], bool] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        device = torch.device(device)
        dtype = parse_dtype(dtype)
        maps = {shard.path: _open_map(shard.path) for shard in self.shards}
        total = sum(self.tensors[name][1].nbytes for name in self.hf_names)
        with progress_bar(progress, total) as advance:
            for name, hf_name in self.hf_names.items():
                if names_filter is not None and not names_filter(hf_name):
                    continue
                shard, info = self.tensors[name]
                mm = maps[shard.path]
                raw = _raw_bytes(mm, info)  # [nbytes] uint8, a view of the file
                advance(info.nbytes)
                release = _releaser(mm, info.offset, info.nbytes)
                tensor = self._tensor(hf_name, info, raw, device, dtype, release)
                if isinstance(tensor, QuantizedTensor):
                    yield hf_name, tensor
                    continue
                yield hf_name, tensor
                # The consumer has copied the floats (into the model's dtype): drop the pages.
                # Unmodified pages of the private map are read again from the file if touched.
                release()

    def _tensor(
        self,
        hf_name: str,
        info: GGUFTensorInfo,
        raw: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype | None,
        release=None,
    ) -> torch.Tensor | QuantizedTensor:
        ggml_type = GGMLType(info.ggml_type)
        cfg = self.config
        # Shapes were checked at open: q/k rows are whole heads, so the un-permute reshapes.
        heads = (
            permuted_heads(hf_name, cfg.num_attention_heads, cfg.num_key_value_heads)
            if self._permuted
            else None
        )
        if ggml_type in FLOAT_TYPES:
            tensor = raw.view(_TORCH_FLOATS[ggml_type]).reshape(info.shape)
            tensor = convert_tensor(tensor, device, dtype)
            return unpermute_rows(tensor, heads) if heads is not None else tensor
        rows = raw.reshape(-1, _row_bytes(info))  # [rows, row_bytes]
        if heads is not None:  # a copy, made only if read (not on a weight cache hit)
            make = lambda: unpermute_rows(rows, heads).to(device)  # noqa: E731
            return LazyQuantizedTensor(make, info.nbytes, ggml_type, info.shape, release)
        return QuantizedTensor(rows.to(device), ggml_type, info.shape, release)

    def _rope_freqs(self) -> list[float] | None:
        """llama.cpp's Llama 3 RoPE factors tensor, read now: the config is derived from it."""
        entry = self.tensors.get(_ROPE_FREQS)
        if entry is None:
            return None
        shard, info = entry
        if info.ggml_type not in (GGMLType.F32, GGMLType.F16) or len(info.shape) != 1:
            raise ModelLoadError(f"{shard.path}: {_ROPE_FREQS} is not a 1-D float tensor; {_FIX}")
        raw = _raw_bytes(_open_map(shard.path), info)
        return raw.view(_TORCH_FLOATS[GGMLType(info.ggml_type)]).float().tolist()


_FIX = "the file is corrupt or not a llama.cpp conversion: re-download or convert it again"


def open_gguf(path: Path, tokenizer_path: Path | None = None) -> GGUFSource:
    return GGUFSource(path, tokenizer_path)


def read_shards(path: Path) -> list[GGUFFile]:
    """The headers of ``path`` and, for a split model, of all its shards (first shard first)."""
    match = _SPLIT_NAME.fullmatch(path.name)
    if match is None:
        files = [read_gguf(path)]
        count = files[0].metadata.get("split.count", 1)
        if count != 1:
            raise ModelLoadError(
                f"{path} is one shard of a model split into {count} files, but its name does "
                "not end in -0000k-of-0000n.gguf; restore the original file names"
            )
        return files
    count = int(match["count"])
    paths = [
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
    missing = [p.name for p in paths if not p.is_file()]
    if count == 0 or missing:
        raise ModelLoadError(
            f"{path} is part of a model split into {count} files, but {', '.join(missing[:3]) or 'none'} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {path.parent}; download every shard"
        )
    shards = [read_gguf(p) for p in paths]
    for index, shard in enumerate(shards):
        if (
            shard.metadata.get("split.no", index) != index
            or shard.metadata.get("split.count", count) != count
        ):
            raise ModelLoadError(
                f"{shard.path} says it is shard {shard.metadata.get('split.no')} of "
                f"{shard.metadata.get('split.count')}, not {index} of {count}: the shards come "
                "from different downloads; download them again"
            )
    return shards


def _collect_tensors(shards: list[GGUFFile]) -> dict[str, tuple[GGUFFile, GGUFTensorInfo]]:
    """Every tensor of every shard, each once, all of a type Minerva can load."""
    tensors: dict[str, tuple[GGUFFile, GGUFTensorInfo]] = {}
    for shard in shards:
        for name, info in shard.tensors.items():
            if name in tensors:
                raise ModelLoadError(
                    f"tensor {name!r} is in both {tensors[name][0].path.name} and "
                    f"{shard.path.name}; the shards come from different downloads"
                )
            _check_type(shard.path, info)
            tensors[name] = (shard, info)
    expected = shards[0].metadata.get("split.tensors.count", len(tensors))
    if expected != len(tensors):
        raise ModelLoadError(
            f"{shards[0].path} declares {expected} tensors across its shards, but they hold "
            f"{len(tensors)}; download every shard again"
        )
    return tensors


def _check_type(path: Path, info: GGUFTensorInfo) -> None:
    try:
        supported = GGMLType(info.ggml_type) in SUPPORTED_WEIGHT_TYPES
    except ValueError:
        supported = False
    if not supported:
        names = ", ".join(sorted(t.name for t in SUPPORTED_WEIGHT_TYPES))
        raise ModelLoadError(
            f"{path}: tensor {info.name!r} is stored as {_type_name(info.ggml_type)}, which "
            f"Minerva cannot load; supported types: {names}. Use a GGUF quantized with one "
            "of them (e.g. Q4_K_M, Q5_K_M, Q6_K, Q8_0 or F16)"
        )


def _type_name(type_id: int) -> str:
    import gguf  # noqa: PLC0415 - optional dependency, used only for the name

    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown type {type_id}"


def _row_bytes(info: GGUFTensorInfo) -> int:
    block, block_bytes = BLOCK_GEOMETRY[GGMLType(info.ggml_type)]
    return info.shape[-1] // block * block_bytes


def _open_map(path: Path) -> mmap.mmap:
    """A copy-on-write map: torch can wrap it without a copy, and the file is never written."""
    with path.open("rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _releaser(mm: mmap.mmap, offset: int, nbytes: int):
    """Drop the mapped pages that lie wholly inside [offset, offset + nbytes) from this process
    (a method that copied the tensor calls it; the file reads them back if they are touched)."""
    page = mmap.PAGESIZE
    start, end = -(-offset // page) * page, (offset + nbytes) // page * page
    advice = getattr(mmap, "MADV_DONTNEED", None)

    def release() -> None:
        if advice is not None and end > start and not mm.closed:
            mm.madvise(advice, start, end - start)

    return release


def _raw_bytes(mm: mmap.mmap, info: GGUFTensorInfo) -> torch.Tensor:
    raw = torch.frombuffer(mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
    # A float view needs its start aligned to the element size; odd alignments get a copy.
    return raw if info.offset % 8 == 0 else raw.clone()
