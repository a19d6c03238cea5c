"""Housekeeping of the weight cache's directory (quant/x8_cache.py): least-recently-used
eviction under the size cap, and temp files that writers which died left behind. Files are
named `<prefix><pid>-<random><suffix>` while written; their mtime orders the eviction."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

STALE_TEMP_S = 24 * 3600
"""A temp file this old is stale even if its pid is alive again (pid reuse)."""


def evict(
    directory: Path, suffix: str, incoming: int, max_bytes: int, keep: Path, skip_prefix: str
) -> None:
    """Delete the least recently used cache files until they and `incoming` bytes fit
    `max_bytes` (a process mapping a deleted file keeps its pages until it unmaps them)."""
    entries = []
    for p in directory.glob(f"*{suffix}"):
        if p.name.startswith(skip_prefix) or p == keep:
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime_ns, st.st_size, p))
    total = incoming + sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= max_bytes:
            break
        try:
            p.unlink(missing_ok=True)
        except OSError:
            continue
        total -= size
        logger.info("weight cache: evicted %s (weight_cache_size)", p.name)


def remove_stale_temps(directory: Path, prefix: str, suffix: str) -> None:
    """Temp files of processes that died while writing (or of any age past STALE_TEMP_S)."""
    now = time.time()
    for p in directory.glob(f"{prefix}*{suffix}"):
        try:
            pid = int(p.name[len(prefix) :].split("-")[0])
            age = now - p.stat().st_mtime
        except (ValueError, OSError):
            continue
        if age > STALE_TEMP_S or not _alive(pid):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
