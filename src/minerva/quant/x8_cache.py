"""A file cache of GGUF weights rewritten into the CPU's x8 layout, mapped by later loads.

Repacking writes every weight byte into new memory, and first-touching new memory dominated a
page-cache-warm load (benchmarks/results/x8_repack_alloc.json). So the repacked groups are kept
in a file under $MINERVA_CACHE_DIR/weights/, and a later load of the same GGUF file maps it
(page cache: shared between processes, reclaimable, never swap) and repacks nothing. The first
load repacks into memory as without the cache, and a background thread at the lowest CPU
priority writes the file: filling a file's page cache cost several times more system time than
faulting in anonymous memory on the measured VM, through a shared map or pwrite alike
(benchmarks/results/x8_cache_write.json), so it stays off the load's path. A float folder
quantized in situ is cached the same way, keyed also by the quantization (x8_cache_insitu.py:
a hit skips the quantization too).

A file holds each group's bytes at a page-aligned offset, then a JSON index (the key: the GGUF
files' identity and the format and layout versions; the groups: name, type, rows, columns, bytes,
offset), then a footer (magic, format version, index offset and length). It is written under a
temp name, fsynced and renamed in a background thread, so a crash never publishes a partial
file. A file that does not match is deleted and rebuilt; an OS error (no space, no fallocate)
leaves the load on anonymous memory as without the cache. Both are logged, never raised.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from minerva.ops import cpu_quant_x8, native
from minerva.quant.x8_cache_dir import evict, remove_stale_temps

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"MNVRX8WC"
FOOTER = struct.Struct("<8sIQQ")  # magic, format version, index offset, index length
SUFFIX = ".x8w"
TEMP_PREFIX = ".tmp-"
ALIGN = 4096
MIN_FREE_BYTES = 1 << 30
"""Free disk space the cache always leaves: a cache must never be what fills the disk."""

_writers: list[threading.Thread] = []


def default_directory() -> Path:
    """$MINERVA_CACHE_DIR/weights, else ~/.cache/minerva/weights."""
    return native.cache_root() / "weights"


def wait_for_writes(timeout: float | None = None) -> None:
    """Block until every cache file this process is writing is published (or given up)."""
    for thread in list(_writers):
        thread.join(timeout)


@dataclass(frozen=True)
class PackedGroup:
    """One tensor a linear method writes at load: the model's parameter name, its GGML type
    and shape, and its bytes (rows * row_bytes, as in the GGUF file)."""

    name: str
    ggml_type: int
    rows: int
    cols: int
    nbytes: int


class WeightCache:
    """The cache for one model: its files (GGUF, or a float folder's weights and config: their
    identity is the key), the directory and the size cap (least recently used files are
    evicted to stay under it). `insitu`: what an in-situ quantization of a float folder also
    depends on (quantization, dtype, quantizer version), part of the key; None for GGUF."""

    def __init__(
        self,
        sources: Sequence[Path],
        max_bytes: int,
        directory: Path | None = None,
        insitu: dict | None = None,
    ) -> None:
        self.sources = [Path(p) for p in sources]
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory is not None else default_directory()
        self.insitu = insitu

    def open(self, groups: Sequence[PackedGroup], create: bool = True) -> WeightStore | None:
        """A store of mapped tensors for `groups`: filled (a hit) or, if `create`, to be
        written (a miss); None when nothing is cached (no groups, an OS error: logged once)."""
        if not groups:
            return None
        try:
            key = _key(self.sources, self.insitu)
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.directory, TEMP_PREFIX, SUFFIX)
        except OSError as e:
            logger.warning("weight cache off for this load: %s", e)
            return None
        name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
        path = self.directory / f"{name}{SUFFIX}"
        placed, data_end = _place(groups)
        index = json.dumps({"key": key, "groups": placed}, separators=(",", ":")).encode()
        store = _open_existing(path, groups, data_end, index)
        if store is None and create:
            store = _create(path, groups, data_end, index, self.max_bytes)
        return store


class WeightStore:
    """The x8 groups of one load: mapped from the cache file (a hit), or collected as the
    methods repack them into memory, to be written to a new file (a miss)."""

    def __init__(self, groups, offsets, mm: mmap.mmap | None = None, writer=None) -> None:
        self._groups = {g.name: (g, off) for g, off in zip(groups, offsets, strict=True)}
        self._mm, self._writer = mm, writer
        self.filled = mm is not None
        """True: the mapped tensors hold the x8 bytes (a hit); False: the methods repack."""
        self._done: dict[str, torch.Tensor] = {}  # a miss: the repacked tensors, by name
        self._spoiled = False

    def _shape(self, name: str, shape: tuple[int, int]) -> tuple | None:
        entry = self._groups.get(name)
        if entry is None or shape != (entry[0].rows, entry[0].nbytes // entry[0].rows):
            self._spoiled = True  # cannot happen with the methods' own plan; never published
            return None
        return entry

    def tensor(self, name: str, shape: tuple[int, int]) -> torch.Tensor | None:
        """A hit: the mapped uint8 [rows, row_bytes] tensor of group `name`, or None."""
        entry = self._shape(name, shape) if self._mm is not None else None
        if entry is None:
            return None
        group, offset = entry
        flat = torch.frombuffer(self._mm, dtype=torch.uint8, count=group.nbytes, offset=offset)
        return flat.view(shape)

    def put(self, name: str, data: torch.Tensor) -> None:
        """A miss: group `name` repacked (uint8 [rows, row_bytes], kept by the model)."""
        if self._writer is not None and self._shape(name, tuple(data.shape)) is not None:
            self._done[name] = data

    def slots(self, prefix: str) -> LayerSlots:
        return LayerSlots(self, prefix)

    def publish(self) -> None:
        """A miss, every group repacked: the file is written, fsynced and renamed into place
        by a background thread at the lowest CPU priority (the engine runs meanwhile)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._spoiled or self._done.keys() != self._groups.keys():
            logger.info("weight cache: not every planned group was repacked; not published")
            writer.remove()
            return
        parts = [(self._groups[name][1], data) for name, data in self._done.items()]
        self._done = {}
        # not a daemon (loading may run in a daemon thread): the interpreter waits for it
        thread = threading.Thread(
            target=writer.commit, args=(parts,), name="minerva-weight-cache", daemon=False
        )
        _writers.append(thread)
        thread.start()

    def abandon(self) -> None:
        """Loading failed: the temp file goes, nothing is published."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.remove()


class LayerSlots:
    """One linear layer's view of a WeightStore: its groups by the layer's own names."""

    def __init__(self, store: WeightStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    @property
    def filled(self) -> bool:
        return self.store.filled

    def _full(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, shape: tuple[int, int]) -> torch.Tensor | None:
        """A hit: the mapped tensor of this layer's group `name` (uint8 `shape`), or None."""
        return self.store.tensor(self._full(name), shape)

    def put(self, name: str, data: torch.Tensor) -> None:
        """A miss: this layer's group `name`, repacked, for the cache file."""
        self.store.put(self._full(name), data)


def process_layers(
    layers: Sequence[tuple[str, nn.Module]],
    cache: WeightCache | None,
    store: WeightStore | None = None,
) -> None:
    """Every linear layer's process_after_loading (`layers`: (prefix, layer) pairs), their
    packed groups in `cache`'s file where it can hold them. `store`: a hit opened before
    loading (quant/x8_cache_insitu.py), which holds every packed group."""
    planned = {}
    if cache is not None or store is not None:
        planned = {p: found for p, m in layers if (found := m.method.packed_groups(m, p))}
    if store is None and cache is not None:
        store = cache.open([g for found in planned.values() for g in found])
    try:
        for prefix, module in layers:
            if store is None or prefix not in planned:  # a method without packed groups
                module.method.process_after_loading(module)
            else:
                module.method.process_after_loading(module, store.slots(prefix))
    except BaseException:
        if store is not None:
            store.abandon()
        raise
    if store is not None:
        store.publish()


class _Writer:
    """A temp cache file of the final size, its space reserved: written, fsynced, then
    published by rename, so a crash never leaves a partial file under the final name."""

    def __init__(self, fd: int, temp: Path, path: Path, data_end: int, index: bytes) -> None:
        self.fd, self.temp, self.path = fd, temp, path
        self.data_end, self.index = data_end, index

    def commit(self, parts: list[tuple[int, torch.Tensor]]) -> None:
        _lowest_priority()
        try:
            for offset, data in parts:
                _pwrite_all(self.fd, data.numpy(), offset)
            footer = FOOTER.pack(MAGIC, FORMAT_VERSION, self.data_end, len(self.index))
            _pwrite_all(self.fd, self.index + footer, self.data_end)
            os.fsync(self.fd)
            os.replace(self.temp, self.path)
            logger.info("cached the repacked weights in %s", self.path)
        except OSError as e:
            logger.warning("weight cache file not written (%s)", e)
            self.temp.unlink(missing_ok=True)
        finally:
            os.close(self.fd)

    def remove(self) -> None:
        os.close(self.fd)
        self.temp.unlink(missing_ok=True)


def _lowest_priority() -> None:
    """This thread only (Linux: nice is per thread) yields its core to the engine's threads."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _key(sources: Sequence[Path], insitu: dict | None = None) -> dict:
    """What the cached bytes depend on: every source file's identity, the two versions and,
    for an in-situ quantization, what it depends on (GGUF keys keep their old form)."""
    files = []
    for path in sources:
        real = os.path.realpath(path)
        st = os.stat(real)
        files.append([real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev])
    key = {"format": FORMAT_VERSION, "layout": cpu_quant_x8.LAYOUT_VERSION, "files": files}
    if insitu is not None:
        key["insitu"] = insitu
    return key


def _place(groups: Sequence[PackedGroup]) -> tuple[list, int]:
    """Index records [name, type, rows, cols, nbytes, offset], each offset page-aligned, and
    where the data ends."""
    records, offset = [], 0
    for g in groups:
        records.append([g.name, int(g.ggml_type), g.rows, g.cols, g.nbytes, offset])
        offset = -(-(offset + g.nbytes) // ALIGN) * ALIGN
    return records, offset


def _offsets(records: list) -> list[int]:
    return [r[5] for r in records]


def _open_existing(path: Path, groups, data_end: int, index: bytes) -> WeightStore | None:
    """The published file at `path` mapped privately, if it is whole and holds exactly these
    groups under this key; a file that is not is deleted (a rebuild follows)."""
    try:
        with path.open("rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        _discard(path, f"cannot be mapped ({e})")
        return None
    problem = _problem(mm, data_end, index)
    if problem is not None:
        mm.close()
        _discard(path, problem)
        return None
    try:
        os.utime(path)  # its mtime orders the least-recently-used eviction
    except OSError:
        pass
    records = json.loads(index)["groups"]
    return WeightStore(groups, _offsets(records), mm=mm)


def _problem(mm: mmap.mmap, data_end: int, index: bytes) -> str | None:
    """Why the mapped file is not the expected one, or None. The index is compared byte for
    byte with the one these groups and this key make, so the footer and index are all we read."""
    size = len(mm)
    if size < FOOTER.size:
        return "is truncated"
    magic, version, index_offset, index_len = FOOTER.unpack(mm[size - FOOTER.size :])
    if magic != MAGIC:
        return "has no valid footer"
    if version != FORMAT_VERSION:
        return f"has format version {version}, not {FORMAT_VERSION}"
    if index_offset + index_len + FOOTER.size != size:
        return "has sizes that do not match its length"
    if index_offset != data_end or mm[index_offset : index_offset + index_len] != index:
        return "holds other weights (another file, layout or model)"
    return None


def _discard(path: Path, why: str) -> None:
    logger.info("weight cache file %s %s: rebuilding it", path, why)
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _create(path: Path, groups, data_end: int, index: bytes, max_bytes: int):
    """A new temp file of the final size, its space reserved, for the groups the methods
    repack into memory. None (logged) where that cannot be done safely."""
    total = data_end + len(index) + FOOTER.size
    if total > max_bytes:
        logger.info(
            "weight cache: the repacked weights (%d MiB) exceed weight_cache_size (%d MiB); "
            "not cached",
            total >> 20,
            max_bytes >> 20,
        )
        return None
    directory = path.parent
    evict(directory, SUFFIX, total, max_bytes, keep=path, skip_prefix=TEMP_PREFIX)
    temp = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
    fd = None
    try:
        if shutil.disk_usage(directory).free < total + MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, "too little free disk space", str(directory))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        # reserved up front, so a full disk is found now (a later failed write, only logged,
        # would waste the writing); the file is written with pwrite, never through a map
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, total)
    except OSError as e:
        if fd is not None:
            os.close(fd)
            temp.unlink(missing_ok=True)
        logger.warning("weight cache off for this load (%s)", e)
        return None
    records = json.loads(index)["groups"]
    writer = _Writer(fd, temp, path, data_end, index)
    return WeightStore(groups, _offsets(records), writer=writer)
