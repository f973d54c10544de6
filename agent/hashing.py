"""Fast, bounded-memory file hashing and the scan cache that lets an unchanged file go unread.

This module owns:

1. :func:`hash_fd`: SHA-256 of an open file, read with ``readinto`` into one reused buffer (4 MiB
   by default), so memory stays flat however large the file is. hashlib releases the GIL while it
   digests a buffer this size, so several threads hash several files truly in parallel.
2. :class:`ScanCache`: what an earlier scan learnt about a file (its evidence entry, or that it
   is not a weight file), keyed by ``(st_dev, st_ino, size, mtime_ns, ctime_ns)``. Any change to
   the file's content moves its mtime or ctime, so a hit means the file need not be opened at
   all. The cache is one compact JSON document written with :func:`agent.fsutil.atomic_write`;
   a missing, unreadable or corrupt cache is ignored (and rebuilt by the next save), never fatal.
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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import psutil
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from agent.evidence import WeightFile
from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

#: Read size for hashing. Large enough that per-call overhead vanishes and hashlib drops the GIL.
CHUNK_SIZE = 4 * 1024 * 1024

CACHE_VERSION: Literal[2] = 2

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


_Row = tuple[int, int, int, int, int, WeightFile | None]


@with_config(ConfigDict(extra="forbid"))
class _CacheDoc(TypedDict):
    v: Literal[2]
    e: list[_Row]


# Strict: a cache row is exactly what save() wrote or it is dropped; nothing is coerced. The
# whole document is parsed and validated in one pass by pydantic-core, which is what keeps a
# 10,000-file rescan close to the cost of the directory walk itself.
_DOC = TypeAdapter(_CacheDoc)
_ROW = TypeAdapter(_Row)


class ScanCache:
    """What earlier scans concluded about each file version, keyed by :func:`cache_key`.

    The value is the file's evidence entry (:class:`~agent.evidence.WeightFile`), or None for
    "not a weight file", so neither kind is opened again while unchanged. ``load`` never raises
    for a bad file; ``save`` writes only the entries looked up or stored since load (so deleted
    files drop out) and only when something changed.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._old: dict[CacheKey, WeightFile | None] = {}
        self._new: dict[CacheKey, WeightFile | None] = {}
        self._dirty = False
        self.load_problem: str | None = None

    def _problem(self, text: str) -> None:
        self.load_problem = text
        log.warning("scan cache %s: %s", self.path, text)

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(f"cache unreadable ({exc.strerror}); rebuilding")
            return
        try:
            doc = _DOC.validate_json(data, strict=True)
        except ValidationError:
            self._load_rows(data)
            return
        self._old = {(r[0], r[1], r[2], r[3], r[4]): r[5] for r in doc["e"]}

    def _load_rows(self, data: bytes) -> None:
        """Slow path for a cache that failed validation: keep every row that is still good."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            doc = None
        if not (
            isinstance(doc, dict)
            and doc.get("v") == CACHE_VERSION
            and isinstance(doc.get("e"), list)
        ):
            self._problem(f"not a version-{CACHE_VERSION} cache file; rebuilding")
            return
        bad = 0
        for raw_row in doc["e"]:
            try:
                row = _ROW.validate_json(json.dumps(raw_row), strict=True)
            except (ValidationError, ValueError, TypeError):
                bad += 1
                continue
            self._old[(row[0], row[1], row[2], row[3], row[4])] = row[5]
        self._problem(f"{bad} damaged cache entries dropped")
        self._dirty = True

    def get(self, key: CacheKey) -> tuple[bool, WeightFile | None]:
        """(hit, value): on a hit, value is the cached entry or None for a non-weight file."""
        if key in self._new:
            return True, self._new[key]
        if key in self._old:
            value = self._new[key] = self._old[key]
            return True, value
        return False, None

    def put(self, key: CacheKey, value: WeightFile | None) -> None:
        if key not in self._new or self._new[key] != value:
            self._new[key] = value
            self._dirty = True

    def __len__(self) -> int:
        return len(self._new)

    def save(self) -> None:
        """Write this scan's entries atomically; a write failure is logged, not raised."""
        if self.path is None:
            return
        if not self._dirty and len(self._new) == len(self._old):
            return
        doc: _CacheDoc = {"v": CACHE_VERSION, "e": [(*k, v) for k, v in self._new.items()]}
        data = _DOC.dump_json(doc)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            log.warning("could not write scan cache %s: %s", self.path, exc)
            return
        self._old = dict(self._new)
        self._dirty = False


def lower_priority() -> list[str]:
    """Idle I/O scheduling class and nice +10 for the calling thread (daemon mode).

    On Linux both are per thread: they are set on the calling thread (by its native id) and
    inherited by the threads it starts afterwards, such as the hashing pool. Returns what could
    not be done (empty on success); failing to lower priority is never fatal.
    """
    problems: list[str] = []
    tid = threading.get_native_id()
    try:
        psutil.Process(tid).ionice(psutil.IOPRIO_CLASS_IDLE)
    except (OSError, psutil.Error, AttributeError, ValueError) as exc:
        problems.append(f"ionice idle: {exc}")
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < 10:
            os.setpriority(os.PRIO_PROCESS, tid, 10)
    except OSError as exc:
        problems.append(f"nice: {exc}")
    for problem in problems:
        log.info("could not lower priority: %s", problem)
    return problems
