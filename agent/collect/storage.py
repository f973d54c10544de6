"""Model-weight storage: where each weight root lives, whether it is encrypted, and its files.

This collector owns, per weight root:

1. **Mount**: mount point, device and filesystem from ``/proc/self/mountinfo`` (longest prefix
   of the root's real path; the last of several mounts on one point wins, as the kernel's does).
2. **Encryption at rest**, decided from what the kernel exposes, never guessed:

   - device-mapper: the block device's ``dm/uuid`` in sysfs; ``CRYPT-LUKS2-``/``CRYPT-LUKS1-``/
     ``CRYPT-PLAIN-`` (and other ``CRYPT-`` kinds except VERITY and INTEGRITY) are dm-crypt.
     Other dm targets (LVM, multipath) and md RAID are followed through ``slaves/`` down to the
     devices that hold the data: encrypted only if every one of them is.
   - fscrypt: ``FS_IOC_GETFLAGS`` on the root directory has ``FS_ENCRYPT_FL`` (0x800).
   - a plain disk or partition with neither: ``unencrypted`` (self-encrypting drives cannot be
     seen from here; ``determined_by`` says so).
   - anything else (tmpfs, overlay, network and FUSE filesystems, loop devices, a device sysfs
     does not show): ``unknown`` with the reason.

3. **Weight files**: every regular file under the root whose bytes say it is a weight file
   (:mod:`agent.collect.weights`), with its stat facts, SHA-256 and header facts; a file named
   like a weight file (``.safetensors``, ``.gguf``, ``.pt``, ``.bin``, ...) whose bytes are not
   that format is one too, hashed, with the error ``unrecognized_content``. Files are
   hashed in parallel by a thread pool; :class:`agent.hashing.ScanCache` lets an unchanged file go
   unopened on the next scan.
4. **Unidentified files**: every other regular file is counted with its size, and listed with
   path, size, mtime and SHA-256 from ``list_unidentified_from`` bytes (default 1 MiB), so that
   nothing under a root is invisible: an encrypted blob or a weight file with bytes prepended
   shows as "N unidentified files, X bytes", with digests that can be registered.

Walking rules (each is a decision, tested):

- Symlinks are never followed, to directories or to files. A symlink whose target lies inside a
  scanned root is skipped silently (the target is found where it lives; Hugging Face caches link
  ``snapshots/`` to ``blobs/`` this way). A symlink to a weight file or a directory *outside* every
  root is reported as a collector error, because the bytes it points at are not attested.
  Symlink loops and dangling links are therefore harmless.
- Other filesystems mounted below a root are not entered (their encryption may differ); each is
  reported as ``nested_mount_not_scanned`` so the operator can list it as a root of its own.
- A file that cannot be opened is a :class:`~contract.WeightFile` with ``error`` when its
  name says it is a weight file, and a collector error otherwise (its format cannot be known).
- Names that are not valid UTF-8 or contain control characters carry ``path_b64`` (the raw bytes);
  ``path`` shows undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import gc
import os
import pwd
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

from pydantic import TypeAdapter

from agent.collect import weights
from agent.hashing import (
    CHUNK_SIZE,
    CacheKey,
    ChangedWhileHashingError,
    ScanCache,
    cache_key,
    hash_fd,
    lower_priority,
)
from contract import (
    CollectorError,
    Encryption,
    StorageRoot,
    UnidentifiedFile,
    WeightFile,
    WeightFormat,
    format_timestamp,
)

COLLECTOR = "storage"
#: Unidentified files of at least this many bytes are listed with their digests (the rest are
#: only counted); ``list_unidentified_from`` in the agent's config.
LIST_UNIDENTIFIED_FROM = 1024 * 1024
#: Collector errors kept per root for individual files and directories; the rest are counted.
MAX_ERRORS_PER_ROOT = 50
#: ``_IOR('f', 1, long)`` in the asm-generic ioctl encoding (x86-64, arm64, riscv64).
FS_IOC_GETFLAGS = 0x80086601
FS_ENCRYPT_FL = 0x800

_MISS: Any = object()
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"}
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre"}
_NAME_FORMATS: dict[bytes, WeightFormat] = {
    b".safetensors": "safetensors",
    b".gguf": "gguf",
    b".pt": "pytorch-zip",
    b".pth": "pytorch-zip",
    b".bin": "pytorch-zip",
    b".ckpt": "pytorch-zip",
    b".onnx": "onnx",
}


# --------------------------------------------------------------------------- mounts


@dataclass(frozen=True, slots=True)
class Mount:
    mount_point: str
    major: int
    minor: int
    fstype: str
    source: str
    super_options: str


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field_:
        return field_
    raw = field_.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        octal = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(octal) == 3 and octal.isdigit():
            out.append(int(octal, 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def read_mountinfo(proc_root: Path) -> list[Mount]:
    """Parse ``proc_root/self/mountinfo``; raises OSError if it cannot be read."""
    mounts = []
    text = (proc_root / "self" / "mountinfo").read_bytes().decode("utf-8", "surrogateescape")
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)
            major, minor = (int(x) for x in parts[2].split(":"))
            mounts.append(
                Mount(
                    mount_point=_unescape(parts[4]),
                    major=major,
                    minor=minor,
                    fstype=parts[sep + 1],
                    source=_unescape(parts[sep + 2]),
                    super_options=parts[sep + 3] if len(parts) > sep + 3 else "",
                )
            )
        except (ValueError, IndexError):
            continue  # a line we do not understand describes some other mount
    return mounts


def find_mount(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (absolute, resolved): longest mount point prefix, last wins."""
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mount_point
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = mount
    return best


# --------------------------------------------------------------------------- encryption


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _block_dir(sys_root: Path, mount: Mount) -> Path | None:
    """The sysfs directory of the block device behind ``mount``, if sysfs shows one."""
    class_block = sys_root / "class" / "block"
    if mount.major != 0:
        majmin = f"{mount.major}:{mount.minor}"
        link = sys_root / "dev" / "block" / majmin
        if link.exists():
            return link.resolve()
        try:
            for candidate in sorted(class_block.iterdir()):
                if _read_text(candidate / "dev") == majmin:
                    return candidate
        except OSError:
            return None
        return None
    # Filesystems with anonymous device numbers (btrfs) name their device in the source field.
    if not mount.source.startswith("/dev/"):
        return None
    name = os.path.basename(mount.source)
    if (class_block / name).exists():
        return class_block / name
    try:
        for candidate in sorted(class_block.iterdir()):
            if _read_text(candidate / "dm" / "name") == name:
                return candidate
    except OSError:
        return None
    return None


def _combine(name: str, parts: list[Encryption], how: str) -> Encryption:
    if not parts:
        return Encryption(
            status="unknown", reason=f"{name} is {how} but sysfs lists no underlying device"
        )
    if all(p.status == "encrypted" for p in parts):
        methods = sorted({p.method or "?" for p in parts})
        return Encryption(
            status="encrypted",
            method=methods[0] if len(methods) == 1 else "+".join(methods),
            determined_by=f"{name} ({how}) -> " + "; ".join(p.determined_by or "" for p in parts),
        )
    plain = [p for p in parts if p.status == "unencrypted"]
    if plain:
        return Encryption(
            status="unencrypted",
            determined_by=f"{name} ({how}) -> " + "; ".join(p.determined_by or "" for p in plain),
        )
    return Encryption(
        status="unknown",
        reason=f"{name} ({how}) -> " + "; ".join(p.reason or "" for p in parts),
    )


def block_encryption(device_dir: Path, sys_root: Path, _depth: int = 0) -> Encryption:
    """Encryption of a block device, following device-mapper and md stacks through ``slaves/``."""
    name = device_dir.name
    if _depth > 8:
        return Encryption(status="unknown", reason=f"device stack deeper than 8 at {name}")
    slaves_dir = device_dir / "slaves"
    try:
        slaves = sorted(p.name for p in slaves_dir.iterdir())
    except OSError:
        slaves = []
    below = [
        block_encryption(sys_root / "class" / "block" / s, sys_root, _depth + 1) for s in slaves
    ]
    uuid = _read_text(device_dir / "dm" / "uuid")
    if uuid is not None:
        kind = uuid.split("-", 2)[1] if uuid.startswith("CRYPT-") and uuid.count("-") >= 1 else ""
        if uuid.startswith("CRYPT-") and kind not in ("VERITY", "INTEGRITY", ""):
            method = {"LUKS2": "dm-crypt/LUKS2", "LUKS1": "dm-crypt/LUKS1"}.get(kind, "dm-crypt")
            return Encryption(
                status="encrypted",
                method=method,
                determined_by=f"sysfs {name}/dm/uuid = {uuid[:48]}",
            )
        target = uuid.split("-", 1)[0] or "device-mapper"
        return _combine(name, below, f"dm {target}")
    if (device_dir / "md").exists():
        return _combine(name, below, "md RAID")
    backing = _read_text(device_dir / "loop" / "backing_file")
    if backing is not None or name.startswith("loop"):
        return Encryption(
            status="unknown",
            reason=f"{name} is a loop device backed by {backing or 'an unknown file'}",
        )
    if not device_dir.exists():
        return Encryption(status="unknown", reason=f"sysfs has no block device {name}")
    if slaves:
        return _combine(name, below, "stacked device")
    return Encryption(
        status="unencrypted",
        determined_by=(
            f"sysfs {name}: plain block device, no dm-crypt layer and no fscrypt "
            "(drive self-encryption is not visible here)"
        ),
    )


def fscrypt_flag(path: str) -> bool | None:
    """Whether ``path`` (a directory) has FS_ENCRYPT_FL; None if the flags cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        return bool(int.from_bytes(buf[:4], sys.byteorder) & FS_ENCRYPT_FL)
    except OSError:  # ENOTTY/EOPNOTSUPP: this filesystem has no such flags
        return None
    finally:
        os.close(fd)


def describe_encryption(
    path: str, mount: Mount | None, sys_root: Path, fscrypt: bool | None
) -> Encryption:
    """Encryption at rest of ``path``, given its mount and its fscrypt flag."""
    if mount is None:
        return Encryption(status="unknown", reason=f"no mount in mountinfo holds {path}")
    fs = mount.fstype
    if fscrypt:
        return Encryption(
            status="encrypted",
            method="fscrypt",
            determined_by=f"FS_IOC_GETFLAGS on {path}: FS_ENCRYPT_FL set",
        )
    if fs in _MEMORY_FS:
        return Encryption(
            status="unknown",
            reason=f"{fs} is memory-backed: nothing at rest, but pages may reach unchecked swap",
        )
    if fs == "overlay":
        upper = [o for o in mount.super_options.split(",") if o.startswith("upperdir=")]
        where = upper[0] if upper else "layers on other mounts"
        return Encryption(
            status="unknown", reason=f"overlay filesystem ({where[:200]}); layers not inspected"
        )
    if fs in _NETWORK_FS or fs.startswith("fuse"):
        return Encryption(
            status="unknown",
            reason=f"{fs} keeps data on another machine; its encryption is not visible here",
        )
    device_dir = _block_dir(sys_root, mount)
    if device_dir is None:
        return Encryption(
            status="unknown",
            reason=f"no block device in sysfs for {mount.source} ({mount.major}:{mount.minor})",
        )
    return block_encryption(device_dir, sys_root)


# --------------------------------------------------------------------------- files


@dataclass(slots=True)
class _Candidate:
    """A file the cache did not know: it is opened, identified and hashed."""

    raw: bytes
    st: os.stat_result
    root_index: int
    entry: WeightFile | None = None
    found: Examined | None = None
    future: Future[Examined | None] | None = None


@dataclass(slots=True)
class _RootScan:
    root: str
    real: bytes | None
    errors: list[CollectorError] = field(default_factory=list)
    dropped_errors: int = 0
    unidentified_count: int = 0
    unidentified_bytes: int = 0
    #: (raw path, fields of an UnidentifiedFile) of the listed ones, in any order.
    unidentified: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def unidentified_file(
        self,
        raw: bytes,
        size: int,
        mtime_ns: int,
        list_from: int,
        sha256: str | None,
        error: tuple[str, str] | None = None,
    ) -> None:
        self.unidentified_count += 1
        self.unidentified_bytes += size
        if size >= list_from:
            path, path_b64 = show_path(raw)
            self.unidentified.append(
                (
                    raw,
                    {
                        "path": path,
                        "path_b64": path_b64,
                        "size": size,
                        "mtime": _mtime(mtime_ns),
                        "sha256": sha256,
                        "error": {"code": error[0], "detail": error[1]} if error else None,
                    },
                )
            )

    def error(self, code: str, detail: str) -> None:
        if len(self.errors) < MAX_ERRORS_PER_ROOT:
            self.errors.append(CollectorError(collector=COLLECTOR, code=code, detail=detail))
        else:
            self.dropped_errors += 1


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def show_path(raw: bytes) -> tuple[str, str | None]:
    """(display path, base64 of the raw bytes or None) for a file name as the kernel has it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), base64.b64encode(raw).decode("ascii")
    if _CONTROL.search(raw):
        return text, base64.b64encode(raw).decode("ascii")
    return text, None


def _open_file(raw: bytes) -> int:
    return os.open(raw, _OPEN_FLAGS)


_local = threading.local()


def _buffer() -> bytearray:
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = bytearray(CHUNK_SIZE)
        _local.buf = buf
    return buf


class Examined(NamedTuple):
    """What opening one file showed. ``format`` None: not a weight file (or not determinable,
    when ``error`` says why). ``header`` is HeaderFacts as a dict; ``error`` is (code, detail).
    """

    format: WeightFormat | None
    sha256: str | None = None
    header: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    #: ``fstat`` of the file as opened: the version the digest belongs to.
    st: os.stat_result | None = None


def examine(
    raw: bytes,
    on_bytes: Callable[[int], None] | None = None,
    list_from: int = LIST_UNIDENTIFIED_FROM,
) -> Examined | None:
    """Open, identify, parse and hash one file. None: it is not a regular file.

    A file named like a weight file whose bytes are no weight format is hashed and described
    with format (from its name) and an ``unrecognized_content`` error. Any other unidentified
    file is ``Examined(None)``, with its digest when it has at least ``list_from`` bytes.
    OSError from opening propagates (the caller decides how to report it); every other failure
    is an entry with ``error``.
    """
    fd = _open_file(raw)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        try:
            found = weights.inspect(fd, before.st_size, os.path.basename(raw))
        except OSError as exc:
            fmt = _format_by_name(raw)
            if fmt is None:
                raise
            detail = f"reading the header: {exc.strerror}"
            return Examined(fmt, error=("read_error", detail), st=before)
        if found is None:
            named = _format_by_name(raw)
            if named is None and before.st_size < list_from:
                return Examined(None, st=before)
            try:
                digest, _ = hash_fd(fd, buffer=_buffer(), on_bytes=on_bytes, before=before)
            except ChangedWhileHashingError as exc:
                return Examined(named, None, None, ("changed_while_hashing", str(exc)), before)
            except OSError as exc:
                return Examined(named, None, None, ("read_error", str(exc.strerror)), before)
            if named is None:
                return Examined(None, digest, st=before)
            detail = f"named like a {named} file, but its first bytes are not that format"
            return Examined(named, digest, None, ("unrecognized_content", detail), before)
        header = found.header.model_dump() if found.header is not None else None
        error = (found.error.code, found.error.detail) if found.error is not None else None
        try:
            digest, _ = hash_fd(fd, buffer=_buffer(), on_bytes=on_bytes, before=before)
        except ChangedWhileHashingError as exc:
            changed = ("changed_while_hashing", str(exc))
            return Examined(found.format, None, header, changed, before)
        except OSError as exc:
            return Examined(found.format, None, header, ("read_error", str(exc.strerror)), before)
        return Examined(found.format, digest, header, error, before)
    finally:
        os.close(fd)


def _format_by_name(raw: bytes) -> WeightFormat | None:
    _, ext = os.path.splitext(raw.lower())
    return _NAME_FORMATS.get(ext)


@functools.lru_cache(maxsize=1024)
def _owner(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def _mtime_seconds(seconds: int) -> str:
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):  # beyond what RFC 3339 can say: clamp
        return "9999-12-31T23:59:59" if seconds > 0 else "0001-01-01T00:00:00"
    if moment.year < 1000:  # strftime would not zero-pad the year
        return "0001-01-01T00:00:00"
    return format_timestamp(moment)[:-8]


def _mtime(ns: int) -> str:
    """``format_timestamp`` of a nanosecond mtime; files written in the same second share work."""
    return f"{_mtime_seconds(ns // 1_000_000_000)}.{(ns // 1000) % 1_000_000:06d}Z"


def _weight_file(raw: bytes, st: os.stat_result, entry: Examined) -> dict[str, Any]:
    """The fields of one :class:`WeightFile` (validated in bulk by :data:`_WEIGHT_FILES`)."""
    path, path_b64 = show_path(raw)
    error = entry.error
    return {
        "path": path,
        "path_b64": path_b64,
        "size": st.st_size,
        "mtime": _mtime(st.st_mtime_ns),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _owner(st.st_uid),
        "sha256": entry.sha256,
        "format": entry.format,
        "header": entry.header,
        "error": {"code": error[0], "detail": error[1]} if error else None,
    }


_WEIGHT_FILES = TypeAdapter(list[WeightFile])
_UNIDENTIFIED = TypeAdapter(list[UnidentifiedFile])


def _inside(target: bytes, roots: list[bytes]) -> bool:
    return any(target == r or target.startswith(r.rstrip(b"/") + b"/") for r in roots)


def _walk(scan: _RootScan, real_roots: list[bytes]) -> list[tuple[bytes, CacheKey, int]]:
    """The regular files under one root (rules: the module docstring), each with its cache key
    and owner's uid. Only these are kept from the ``lstat``: a rescan holds 10,000 of them."""
    assert scan.real is not None
    top = os.lstat(scan.real)
    if stat.S_ISREG(top.st_mode):
        return [(scan.real, cache_key(top), top.st_uid)]
    out: list[tuple[bytes, CacheKey, int]] = []
    stack = [scan.real]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            scan.error("dir_unreadable", f"{show_path(directory)[0]}: {exc.strerror}")
            continue
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):  # the common case first
                    st = entry.stat(follow_symlinks=False)
                    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    out.append((entry.path, key, st.st_uid))
                elif entry.is_symlink():
                    _symlink(entry.path, scan, real_roots)
                elif entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev != top.st_dev:
                        scan.error(
                            "nested_mount_not_scanned",
                            f"{show_path(entry.path)[0]} is another filesystem; "
                            "list it as a weight root of its own",
                        )
                    else:
                        stack.append(entry.path)
            except OSError as exc:  # vanished between readdir and stat
                scan.error("stat_failed", f"{show_path(entry.path)[0]}: {exc.strerror}")
    return out


def _symlink(raw: bytes, scan: _RootScan, real_roots: list[bytes]) -> None:
    try:
        target = os.path.realpath(raw)
        st = os.stat(target)
    except OSError:
        return  # dangling or a loop: nothing to attest behind it
    if _inside(target, real_roots):
        return
    shown = f"{show_path(raw)[0]} -> {show_path(target)[0]}"
    if stat.S_ISDIR(st.st_mode):
        scan.error("symlink_outside_roots", f"{shown}: directory outside the roots not followed")
    elif stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                prefix = os.pread(fd, weights.PREFIX_LEN, 0)
            finally:
                os.close(fd)
        except OSError:
            prefix = b""
        if weights.sniff(prefix, os.path.basename(target)) or _format_by_name(target):
            scan.error("symlink_outside_roots", f"{shown}: weight file outside the roots")


def _progress_bar(total: int) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("hashing weights"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("hash", total=total)
    bar.start()
    return (lambda n: bar.advance(task, n)), bar.stop


def _fill(
    misses: list[_Candidate],
    workers: int,
    on_bytes: Callable[[int], None] | None,
    list_from: int,
) -> None:
    """Examine every file the cache did not know, in parallel."""
    if not misses:
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veu-hash") as pool:
        for cand in misses:
            cand.future = pool.submit(examine, cand.raw, on_bytes, list_from)
        for cand in misses:
            assert cand.future is not None
            try:
                cand.found = cand.future.result()
            except OSError as exc:
                cand.found = Examined(None, error=("unreadable", str(exc.strerror)))
            except Exception as exc:  # a parser bug on one file must not lose the whole scan
                detail = f"{type(exc).__name__}: {exc}"[:300]
                cand.found = Examined(None, error=("internal_error", detail))


def _labelled(raw: bytes, cached: WeightFile, owner: str | None) -> WeightFile:
    """The cached entry, re-labelled if the same file version now has another name or owner."""
    path, path_b64 = show_path(raw)
    if cached.path != path or cached.path_b64 != path_b64 or cached.owner != owner:
        return cached.model_copy(update={"path": path, "path_b64": path_b64, "owner": owner})
    return cached


_TRANSIENT = {"changed_while_hashing", "read_error", "unreadable", "internal_error"}


class _GcPause:
    """Pause the cyclic GC while a scan builds many small acyclic objects (cache rows, evidence
    entries): its generation sweeps otherwise cost as much as the work itself. With one pause
    around the whole scan, short-lived objects are freed by reference counting before any sweep
    sees them, and only the evidence returned is swept once, afterwards. The pause is lifted
    while files are hashed (:meth:`resumed`), so it is bounded by the file count, not the bytes.
    """

    def __enter__(self) -> _GcPause:
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._was_enabled:
            gc.enable()

    @contextlib.contextmanager
    def resumed(self) -> Iterator[None]:
        if self._was_enabled:
            gc.enable()
        try:
            yield
        finally:
            gc.disable()


def _look_up(
    index: int,
    scan: _RootScan,
    files: list[tuple[bytes, CacheKey, int]],
    cache: ScanCache,
    list_from: int,
) -> tuple[list[WeightFile | _Candidate], list[_Candidate]]:
    """One root's files in order: cached entries as they are, a candidate for every miss.

    Runs once per file on every scan, so the cheap case of :func:`_labelled` is written out."""
    slots: list[WeightFile | _Candidate] = []
    misses: list[_Candidate] = []
    lookup = cache.lookup
    owners: dict[int, str | None] = {}
    for raw, key, uid in files:
        cached = lookup(key, _MISS)
        if type(cached) is WeightFile:  # the common case first
            owner = owners.get(uid, _MISS)
            if owner is _MISS:
                owner = owners[uid] = _owner(uid)
            # A cached path without path_b64 is the strict UTF-8 decoding of the name it was
            # made from, so comparing its encoding with the name is show_path's test, cheaper.
            if cached.path_b64 is None and cached.owner == owner and cached.path.encode() == raw:
                slots.append(cached)
            else:
                slots.append(_labelled(raw, cached, owner))
            continue
        if cached is not _MISS:  # not a weight file: None, or the digest of a listed one
            size = key[2]
            if size < list_from:
                scan.unidentified_count += 1
                scan.unidentified_bytes += size
                continue
            if cached is not None:
                scan.unidentified_file(raw, size, key[3], list_from, cached)
                continue
            # large enough to be listed, but cached without its digest: examined again
        try:
            st = os.lstat(raw)  # the walk kept only the key
        except OSError as exc:  # vanished since
            scan.error("stat_failed", f"{show_path(raw)[0]}: {exc.strerror}")
            continue
        cand = _Candidate(raw, st, index)
        slots.append(cand)
        misses.append(cand)
    return slots, misses


def _assemble(
    misses: list[_Candidate], scans: list[_RootScan], cache: ScanCache, list_from: int
) -> None:
    """Evidence entries of the files just examined (``entry``), validated in one bulk call and
    remembered in the cache (unless their error is transient)."""
    fresh: list[dict[str, Any]] = []
    fresh_cands: list[_Candidate] = []
    for cand in misses:
        found = cand.found
        if found is None:
            continue
        if found.st is not None:  # describe (and cache) the version that was actually read
            cand.st = found.st
        if found.format is None:
            scan = scans[cand.root_index]
            st = cand.st
            if found.error is None:
                cache.put(cache_key(st), found.sha256)
                scan.unidentified_file(
                    cand.raw, st.st_size, st.st_mtime_ns, list_from, found.sha256
                )
                continue
            fmt = _format_by_name(cand.raw)
            if fmt is None:
                if found.error[0] != "changed_while_hashing":  # a growing log is no failure
                    scan.error("file_unreadable", f"{show_path(cand.raw)[0]}: {found.error[1]}")
                scan.unidentified_file(
                    cand.raw, st.st_size, st.st_mtime_ns, list_from, None, found.error
                )
                continue
            found = found._replace(format=fmt)
        fresh.append(_weight_file(cand.raw, cand.st, found))
        fresh_cands.append(cand)
    for cand, weight_file in zip(fresh_cands, _WEIGHT_FILES.validate_python(fresh), strict=True):
        cand.entry = weight_file
        if weight_file.error is None or weight_file.error.code not in _TRANSIENT:
            cache.put(cache_key(cand.st), weight_file)


def _entries(slots: list[WeightFile | _Candidate]) -> list[WeightFile]:
    out: list[WeightFile] = []
    for slot in slots:
        if isinstance(slot, _Candidate):
            if slot.entry is not None:
                out.append(slot.entry)
        else:
            out.append(slot)
    return out


def scan_weight_roots(
    roots: list[Path],
    *,
    cache_path: Path | None,
    workers: int | None = None,
    progress: bool = False,
    low_priority: bool = False,
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    list_unidentified_from: int = LIST_UNIDENTIFIED_FROM,
) -> tuple[list[StorageRoot], list[CollectorError]]:
    """Describe each weight root, every weight file under it, and count (and, from
    ``list_unidentified_from`` bytes, list) every other regular file under it.

    A root that does not exist or cannot be read gives a collector error and no entry; the other
    roots are still scanned. Individual bad files never stop the scan.
    """
    if low_priority:
        lower_priority()
    with _GcPause() as pause:  # lifted only while hashing; see _GcPause
        return _scan(
            roots, cache_path, workers, progress, proc_root, sys_root, pause, list_unidentified_from
        )


def _scan(
    roots: list[Path],
    cache_path: Path | None,
    workers: int | None,
    progress: bool,
    proc_root: Path,
    sys_root: Path,
    pause: _GcPause,
    list_from: int,
) -> tuple[list[StorageRoot], list[CollectorError]]:
    errors: list[CollectorError] = []
    cache = ScanCache(cache_path)
    cache.load()  # a damaged cache is logged and rebuilt; the evidence is complete either way
    try:
        mounts = read_mountinfo(proc_root)
    except OSError as exc:
        mounts = []
        errors.append(
            CollectorError(
                collector=COLLECTOR,
                code="mountinfo_unreadable",
                detail=f"{proc_root}/self/mountinfo: {exc.strerror}",
            )
        )

    scans: list[_RootScan] = []
    for root in roots:
        try:
            real: bytes | None = os.path.realpath(os.fsencode(root), strict=True)
        except OSError as exc:
            real = None
            code = "root_not_found" if isinstance(exc, FileNotFoundError) else "root_unreadable"
            errors.append(
                CollectorError(collector=COLLECTOR, code=code, detail=f"{root}: {exc.strerror}")
            )
        scans.append(_RootScan(str(root), real))
    real_roots = [s.real for s in scans if s.real is not None]

    by_root: dict[int, list[WeightFile]] = {}
    slots: dict[int, list[WeightFile | _Candidate]] = {}
    misses: list[_Candidate] = []
    for index, scan in enumerate(scans):
        if scan.real is None:
            continue
        try:
            walked = _walk(scan, real_roots)
        except OSError as exc:
            scan.error("root_unreadable", f"{scan.root}: {exc.strerror}")
            continue
        walked.sort()  # evidence lists files in byte order of their paths (unique per root)
        root_slots, root_misses = _look_up(index, scan, walked, cache, list_from)
        del walked
        if root_misses:
            slots[index] = root_slots
            misses.extend(root_misses)
        else:  # every file was cached: the slots are the entries
            by_root[index] = cast(list[WeightFile], root_slots)

    pending = sum(cand.st.st_size for cand in misses)
    advance: Callable[[int], None] | None = None
    stop: Callable[[], None] = _noop
    if progress and pending and sys.stderr.isatty():
        advance, stop = _progress_bar(pending)
    try:
        if misses:
            with pause.resumed():
                _fill(misses, max(1, workers or min(8, os.cpu_count() or 1)), advance, list_from)
    finally:
        stop()

    _assemble(misses, scans, cache, list_from)
    by_root.update((index, _entries(root_slots)) for index, root_slots in slots.items())
    del slots, misses
    cache.save()

    results: list[StorageRoot] = []
    for index, scan in enumerate(scans):
        if scan.real is None:
            continue
        real_text = os.fsdecode(scan.real)
        mount = find_mount(real_text, mounts) if mounts else None
        fscrypt = fscrypt_flag(real_text) if os.path.isdir(scan.real) else None
        files = by_root.get(index, [])
        scan.unidentified.sort(key=lambda item: item[0])
        results.append(
            StorageRoot(
                root=scan.root,
                mount_point=mount.mount_point if mount else None,
                device=mount.source if mount and mount.source.startswith("/dev/") else None,
                filesystem=mount.fstype if mount else None,
                encryption=(
                    describe_encryption(real_text, mount, sys_root, fscrypt)
                    if mounts
                    else Encryption(status="unknown", reason="mountinfo could not be read")
                ),
                file_count=len(files),
                total_bytes=sum(f.size for f in files),
                files=files,
                unidentified_count=scan.unidentified_count,
                unidentified_bytes=scan.unidentified_bytes,
                unidentified_listed_from=list_from,
                unidentified=_UNIDENTIFIED.validate_python([f for _, f in scan.unidentified]),
            )
        )
        errors.extend(scan.errors)
        if scan.dropped_errors:
            errors.append(
                CollectorError(
                    collector=COLLECTOR,
                    code="more_errors",
                    detail=f"{scan.dropped_errors} more errors under {scan.root} not listed",
                )
            )
    return results, errors


def _noop() -> None:
    return None
