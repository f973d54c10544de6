"""Fast, bounded-memory file hashing and the scan cache that lets an unchanged file go unread.

This module owns:

1. :func:`hash_fd`: SHA-256 of an open file, read with ``readinto`` into one reused buffer (4 MiB
   by default), so memory stays flat however large the file is. hashlib releases the GIL while it
   digests a buffer this size, so several threads hash several files truly in parallel.
2. :class:`ScanCache`: what an earlier scan learnt about a file (its evidence entry, or that it
   is not a weight file), keyed by ``(st_dev, st_ino, size, mtime_ns, ctime_ns)``. Any change to
   the file's content moves its mtime or ctime, so a hit means the file need not be opened at
   all. The cache is one file written with :func:`contract.fsutil.atomic_write`: a header line with
   a SHA-256 of the rows, then the rows as compact JSON arrays. A missing cache, or one from
   another version, is rebuilt quietly; an unreadable or damaged one is rebuilt with a warning in
   the agent's log (:class:`CacheProblem`), never fatal, and never an evidence error: every file
   is then read and hashed again, so the snapshot is as complete as without a cache.
3. :func:`lower_priority`: idle I/O class and a higher nice value for daemon mode.

The cache is only an accelerator, and the hand-written parts of it exist for speed: a rescan of
10,000 unchanged files must cost little more than walking the directories. Rows are therefore
checked by checksum, not re-validated field by field (see :class:`ScanCache` for why that is
sound), and entries are built without pydantic's per-field machinery (:func:`_trusted`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import marshal
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil
from pydantic import BaseModel

from contract import FileError, HeaderFacts, WeightFile
from contract.fsutil import atomic_write

log = logging.getLogger(__name__)

#: Read size for hashing. Large enough that per-call overhead vanishes and hashlib drops the GIL.
CHUNK_SIZE = 4 * 1024 * 1024

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


# --------------------------------------------------------------------------- the scan cache

CACHE_VERSION = 4
#: First word of the cache file's header line.
CACHE_MAGIC = b"veu-scan-cache"

_Model = TypeVar("_Model", bound=BaseModel)
#: A cache row: empty for a file that is not a weight file, else the entry's fields in model
#: order, with the nested header and error as lists of their fields (:func:`_entry`, :func:`_row`).
_Row = list[Any]

_FIELDS_SET: dict[type[BaseModel], set[str]] = {
    cls: set(cls.model_fields) for cls in (WeightFile, HeaderFacts, FileError)
}
_MISS: Any = object()
#: Stands for None ("not a weight file") among looked-up entries in the cache's index.
_NOT_WEIGHT: Any = object()


def _shape() -> str:
    """What a row's layout depends on: a cache written for other models, or in another marshal
    format, is not read."""
    text = f"marshal {marshal.version} " + repr(
        [
            (cls.__name__, [(name, repr(f.annotation)) for name, f in cls.model_fields.items()])
            for cls in (WeightFile, HeaderFacts, FileError)
        ]
    )
    return hashlib.sha256(f"{CACHE_VERSION}|{text}".encode()).hexdigest()[:16]


#: Fingerprint of the evidence models, in the header line: a change to them (a new field)
#: makes older caches "outdated" instead of misread.
SHAPE = _shape()


# pydantic keeps a model's field values in ``__dict__`` and three slots of BaseModel; these are
# the slots' own setters (what ``object.__setattr__`` reaches, without its name lookup).
_set_dict = object.__setattr__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_new = object.__new__
_WEIGHT_FIELDS = _FIELDS_SET[WeightFile]
_HEADER_FIELDS = _FIELDS_SET[HeaderFacts]


def _trusted(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """An instance of ``cls`` whose field values are already known to be valid.

    What pydantic's ``model_construct`` does after its per-field alias and default loop, which
    alone costs ~4 us per object (40 ms for 10,000 entries). Used only for rows that carried the
    agent's own checksum; a test keeps the result equal to validated objects.
    """
    obj = _new(cls)
    _set_dict(obj, "__dict__", values)
    _set_fields_set(obj, _FIELDS_SET[cls])
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def _entry(row: _Row) -> WeightFile | str | None:
    """The evidence entry a row stores (None: not a weight file; a string: the SHA-256 of a file
    that is not one, kept because it is listed among the root's unidentified files).

    :func:`_trusted` written out, field by field, because this runs once per cached file and is
    most of a rescan's cost; the tests check it against the models' fields and against
    validated objects.
    """
    if not row:
        return None
    if len(row) == 1:  # an unidentified file's digest
        digest = row[0]
        if type(digest) is not str or len(digest) != 64:
            raise ValueError("an unidentified file's row holds its SHA-256")
        return digest
    path, path_b64, size, mtime, mode, uid, gid, owner, sha256, fmt, header, error = row
    if header is not None:
        tensor_count, parameter_count, dtypes, metadata = header
        header = _new(HeaderFacts)
        _set_dict(
            header,
            "__dict__",
            {
                "tensor_count": tensor_count,
                "parameter_count": parameter_count,
                "dtypes": dtypes,
                "metadata": metadata,
            },
        )
        _set_fields_set(header, _HEADER_FIELDS)
        _set_extra(header, None)
        _set_private(header, None)
    if error is not None:
        code, detail = error
        error = _trusted(FileError, {"code": code, "detail": detail})
    entry = _new(WeightFile)
    _set_dict(
        entry,
        "__dict__",
        {
            "path": path,
            "path_b64": path_b64,
            "size": size,
            "mtime": mtime,
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "owner": owner,
            "sha256": sha256,
            "format": fmt,
            "header": header,
            "error": error,
        },
    )
    _set_fields_set(entry, _WEIGHT_FIELDS)
    _set_extra(entry, None)
    _set_private(entry, None)
    return entry


def _row(value: WeightFile | str | None) -> _Row:
    """The row that :func:`_entry` reads back as ``value``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    header, error = value.header, value.error
    return [
        value.path,
        value.path_b64,
        value.size,
        value.mtime,
        value.mode,
        value.uid,
        value.gid,
        value.owner,
        value.sha256,
        value.format,
        None
        if header is None
        else [header.tensor_count, header.parameter_count, header.dtypes, header.metadata],
        None if error is None else [error.code, error.detail],
    ]


@dataclass(frozen=True, slots=True)
class CacheProblem:
    """Why the cache file on disk was not used. ``code`` is stable.

    ``cache_unreadable`` and ``cache_damaged`` (bad checksum, not parseable) are logged as
    warnings (``reported``): something other than the agent changed the state directory. They are
    not put in the snapshot's ``errors``, because nothing is missing from that snapshot (every
    file was hashed again), and an evidence error would make it "cannot attest".
    ``cache_outdated`` (written by another cache version or for other evidence models) is the
    normal first scan after an upgrade and is only logged at info level.
    """

    code: Literal["cache_unreadable", "cache_damaged", "cache_outdated"]
    detail: str

    @property
    def reported(self) -> bool:
        return self.code != "cache_outdated"


class ScanCache:
    """What earlier scans concluded about each file version, keyed by :func:`cache_key`.

    The value is the file's evidence entry (:class:`~contract.WeightFile`), None for
    "not a weight file", or the SHA-256 of a file that is not one but large enough to be listed
    (:class:`~contract.UnidentifiedFile`), so no kind is opened again while unchanged.
    ``load`` never raises for a bad file; ``save`` writes only the entries looked up or stored
    since load (so deleted files drop out) and only when something changed.

    File format (version 4): one text line ``veu-scan-cache 4 <shape> <sha256>``, then a dict
    from key (a tuple of five ints) to row (:func:`_row`) encoded with :mod:`marshal`.
    ``<shape>`` fingerprints the evidence models and the marshal format (:data:`SHAPE`);
    ``<sha256>`` is the digest of the bytes after the line.

    Why marshal: it holds only a dict, tuples, lists, ints, strings and None here, and reads them
    back, index included, in about half the time of ``json`` plus a loop to index the rows
    (10 ms against 18 for 10,000 rows, measured here), a tenth of a rescan. It is never given
    bytes whose checksum failed, and the rows' layout is ours (no objects, no code).

    Why rows are not re-validated: they are this agent's own output, validated when first made,
    and the checksum proves the bytes are the ones it wrote; validating 10,000 entries again
    with pydantic cost more than the whole directory walk. The checksum catches corruption and
    edits by hand; someone who can rewrite a file in the 0700 state directory and fix its
    checksum can also read the host's signing key there, so the cache is trusted exactly as far
    as that key.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        #: Key -> a row not looked up yet, or (once looked up or stored) the entry itself, or
        #: :data:`_NOT_WEIGHT`. Rows still here at save time are of files no longer seen.
        self._index: dict[CacheKey, Any] = {}
        self._unseen = 0  # rows in the index not looked up yet
        self._dirty = False
        self.problem: CacheProblem | None = None

    @property
    def load_problem(self) -> str | None:
        return self.problem.detail if self.problem is not None else None

    def _reject(self, code: Any, detail: str) -> None:
        self.problem = CacheProblem(code, detail)
        self._dirty = True  # replace the file even if this scan finds nothing to put in it
        if self.problem.reported:
            log.warning("scan cache %s: %s", self.path, detail)
        else:
            log.info("scan cache %s: %s", self.path, detail)

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._reject("cache_unreadable", f"cache unreadable ({exc.strerror}); rehashing all")
            return
        newline = data.find(b"\n", 0, 200)
        head = data[:newline].split(b" ") if newline >= 0 else []
        if len(head) != 4 or head[0] != CACHE_MAGIC:
            if data.startswith((b'{"v":', b'{"v": ')):  # versions 1 and 2: one JSON document
                self._reject("cache_outdated", "cache from an older agent; rebuilding")
            else:
                self._reject("cache_damaged", "cache has no valid header; rehashing all")
            return
        if head[1] != str(CACHE_VERSION).encode() or head[2] != SHAPE.encode():
            found = b"/".join((head[1][:8], head[2][:16])).decode(errors="replace")
            expected = f"{CACHE_VERSION}/{SHAPE}"
            self._reject("cache_outdated", f"cache {found} is not {expected}; rebuilding")
            return
        body = memoryview(data)[newline + 1 :]
        if hashlib.sha256(body).hexdigest().encode() != head[3]:
            self._reject("cache_damaged", "cache checksum does not match; rehashing all")
            return
        try:
            index = marshal.loads(body)  # noqa: S302 (checksum verified above; see class doc)
        except (ValueError, EOFError, TypeError):
            index = None
        if type(index) is not dict:
            self._reject("cache_damaged", "cache rows are not a dict of keyed rows; rehashing all")
            return
        self._index = index
        self._unseen = len(index)

    def lookup(self, key: CacheKey, default: Any = _MISS) -> Any:
        """The cached entry (None for a non-weight file), or ``default`` when not cached."""
        value = self._index.get(key, default)
        if type(value) is list:  # a row, read for the first time
            self._unseen -= 1
            try:
                entry = _entry(value)
            except (TypeError, ValueError):  # a malformed row that passed the checksum
                del self._index[key]
                self._dirty = True
                return default
            self._index[key] = _NOT_WEIGHT if entry is None else entry
            return entry
        return None if value is _NOT_WEIGHT else value

    def get(self, key: CacheKey) -> tuple[bool, WeightFile | str | None]:
        """(hit, value): on a hit, value is the cached entry or None for a non-weight file."""
        value = self.lookup(key)
        return (False, None) if value is _MISS else (True, value)

    def put(self, key: CacheKey, value: WeightFile | str | None) -> None:
        stored = _NOT_WEIGHT if value is None else value
        old = self._index.get(key)
        if type(old) is list:
            self._unseen -= 1
        elif old == stored:
            return
        self._index[key] = stored
        self._dirty = True

    def __len__(self) -> int:
        return sum(1 for v in self._index.values() if type(v) is not list)

    def save(self) -> None:
        """Write this scan's entries atomically; a write failure is logged, not raised."""
        if self.path is None:
            return
        if not self._dirty and not self._unseen:
            return  # nothing new, and every row read back was seen again
        body = marshal.dumps(
            {
                key: _row(None if value is _NOT_WEIGHT else value)
                for key, value in self._index.items()
                if type(value) is not list
            }
        )
        digest = hashlib.sha256(body).hexdigest()
        head = b"%s %d %s %s\n" % (CACHE_MAGIC, CACHE_VERSION, SHAPE.encode(), digest.encode())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, head + body, mode=0o600)
        except OSError as exc:
            log.warning("could not write scan cache %s: %s", self.path, exc)
            return
        self._index = {key: v for key, v in self._index.items() if type(v) is not list}
        self._unseen = 0
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
