"""Fast, bounded-memory file hashing and the scan cache that lets an unchanged file go unread.

This module owns:

1. :func:`hash_fd`: SHA-256 of an open file, read with ``readinto`` into one reused buffer (4 MiB
   by default), so memory stays flat however large the file is. hashlib releases the GIL while it
   digests a buffer this size, so several threads hash several files truly in parallel.
2. :class:`ScanCache`: what an earlier scan learnt about a file (its format, digest, header facts
   or error), keyed by ``(st_dev, st_ino, size, mtime_ns, ctime_ns)``. Any change to the file's
   content moves its mtime or ctime, so a hit means the file need not be opened at all. The cache
   is one compact JSON document written with :func:`agent.fsutil.atomic_write`; a missing,
   unreadable or corrupt cache is ignored (and rebuilt by the next save), never fatal.
3. :func:`lower_priority`: idle I/O class and a higher nice value for daemon mode.

The cache is only an accelerator: it is trusted as much as the state directory that holds it
(root-owned, mode 0700), and its entries are type-checked on load so a damaged file cannot put
nonsense into a snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

#: Read size for hashing. Large enough that per-call overhead vanishes and hashlib drops the GIL.
CHUNK_SIZE = 4 * 1024 * 1024

CACHE_VERSION = 1

CacheKey = tuple[int, int, int, int, int]


class ChangedWhileHashingError(Exception):
    """The file's size or mtime moved between the start and the end of hashing."""


def cache_key(st: os.stat_result) -> CacheKey:
    """The identity-and-version of a file: changes whenever its content may have changed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hash_fd(
    fd: int,
    *,
    buffer: bytearray | None = None,
    on_bytes: Callable[[int], None] | None = None,
    before: os.stat_result | None = None,
) -> tuple[str, int]:
    """SHA-256 (lowercase hex) and length of everything readable from ``fd`` from offset 0.

    Raises :class:`ChangedWhileHashingError` when the size or mtime reported by ``fstat`` after
    the read differs from ``before`` (default: an ``fstat`` taken now), or when the bytes read
    differ from that size. Pass ``before`` when other reads of the file (its header) came first.
    """
    buf = buffer if buffer is not None else bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    if before is None:
        before = os.fstat(fd)
    digest = hashlib.sha256()
    total = 0
    os.lseek(fd, 0, os.SEEK_SET)
    with contextlib.suppress(OSError):  # advice is only a hint; not every filesystem takes it
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    with open(fd, "rb", buffering=0, closefd=False) as raw:
        while True:
            n = raw.readinto(view)
            if not n:
                break
            digest.update(view[:n])
            total += n
            if on_bytes is not None:
                on_bytes(n)
    after = os.fstat(fd)
    if (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or total != after.st_size
    ):
        raise ChangedWhileHashingError(
            f"size/mtime changed while hashing (size {before.st_size} -> {after.st_size}, "
            f"read {total} bytes, mtime_ns {before.st_mtime_ns} -> {after.st_mtime_ns})"
        )
    return digest.hexdigest(), total


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What one scan concluded about one file version.

    ``format`` is None for a file that is not a weight file (so it is not opened again either).
    ``header`` is the HeaderFacts as a plain JSON dict; ``error`` is ``(code, detail)``.
    """

    format: str | None
    sha256: str | None = None
    header: dict[str, Any] | None = None
    error: tuple[str, str] | None = None


def _entry_from_json(row: Any) -> tuple[CacheKey, CacheEntry] | None:
    """One cache row, or None if it is not exactly the shape :meth:`ScanCache.save` writes."""
    if not isinstance(row, list) or len(row) != 9:
        return None
    key, (fmt, digest, header, error) = row[:5], row[5:]
    if not all(type(k) is int for k in key):
        return None
    if fmt is not None and not isinstance(fmt, str):
        return None
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        return None
    if header is not None and not _header_ok(header):
        return None
    if error is not None:
        if not (
            isinstance(error, list) and len(error) == 2 and all(isinstance(e, str) for e in error)
        ):
            return None
        error = (error[0], error[1])
    return (key[0], key[1], key[2], key[3], key[4]), CacheEntry(fmt, digest, header, error)


def _header_ok(header: Any) -> bool:
    if not isinstance(header, dict) or set(header) - {
        "tensor_count",
        "parameter_count",
        "dtypes",
        "metadata",
    }:
        return False
    for name in ("tensor_count", "parameter_count"):
        value = header.get(name)
        if value is not None and type(value) is not int:
            return False
    dtypes = header.get("dtypes", [])
    metadata = header.get("metadata", {})
    return (
        isinstance(dtypes, list)
        and all(isinstance(d, str) for d in dtypes)
        and isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    )


class ScanCache:
    """Digest-and-facts cache keyed by :func:`cache_key`.

    ``load`` never raises for a bad file; ``save`` writes only the entries looked up or stored
    since load (so deleted files drop out) and only when something changed.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._old: dict[CacheKey, CacheEntry] = {}
        self._new: dict[CacheKey, CacheEntry] = {}
        self._dirty = False
        self.load_problem: str | None = None

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.load_problem = f"cache unreadable ({exc.strerror}); rebuilding"
            log.warning("scan cache %s: %s", self.path, self.load_problem)
            return
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            self.load_problem = "cache is not valid JSON; rebuilding"
            log.warning("scan cache %s: %s", self.path, self.load_problem)
            return
        if not (
            isinstance(doc, dict)
            and doc.get("v") == CACHE_VERSION
            and isinstance(doc.get("e"), list)
        ):
            self.load_problem = "cache has an unknown layout; rebuilding"
            log.warning("scan cache %s: %s", self.path, self.load_problem)
            return
        bad = 0
        for row in doc["e"]:
            parsed = _entry_from_json(row)
            if parsed is None:
                bad += 1
                continue
            self._old[parsed[0]] = parsed[1]
        if bad:
            self.load_problem = f"{bad} damaged cache entries dropped"
            self._dirty = True

    def get(self, key: CacheKey) -> CacheEntry | None:
        entry = self._new.get(key)
        if entry is not None:
            return entry
        entry = self._old.get(key)
        if entry is not None:
            self._new[key] = entry
        return entry

    def put(self, key: CacheKey, entry: CacheEntry) -> None:
        if self._new.get(key) != entry:
            self._new[key] = entry
            self._dirty = True

    def __len__(self) -> int:
        return len(self._new)

    def save(self) -> None:
        """Write this scan's entries atomically; a write failure is logged, not raised."""
        if self.path is None:
            return
        if not self._dirty and len(self._new) == len(self._old):
            return
        rows = [
            [*key, e.format, e.sha256, e.header, list(e.error) if e.error else None]
            for key, e in self._new.items()
        ]
        data = json.dumps({"v": CACHE_VERSION, "e": rows}, separators=(",", ":")).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            log.warning("could not write scan cache %s: %s", self.path, exc)
            return
        self._old = dict(self._new)
        self._dirty = False


def lower_priority() -> list[str]:
    """Idle I/O scheduling class and nice +10 for this process (daemon mode).

    Threads started afterwards inherit both. Returns what could not be done (empty on success);
    failing to lower priority is never fatal.
    """
    problems: list[str] = []
    try:
        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
    except (OSError, psutil.Error, AttributeError, ValueError) as exc:
        problems.append(f"ionice idle: {exc}")
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < 10:
            os.nice(10 - os.getpriority(os.PRIO_PROCESS, 0))
    except OSError as exc:
        problems.append(f"nice: {exc}")
    for problem in problems:
        log.info("could not lower priority: %s", problem)
    return problems
