"""Large-buffer hashing, the scan cache's persistence rules, and priority lowering."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.hashing import (
    CacheEntry,
    ChangedWhileHashingError,
    ScanCache,
    cache_key,
    hash_fd,
)

HEADER = {"tensor_count": 1, "parameter_count": 4, "dtypes": ["F32"], "metadata": {"a": "b"}}


def test_hash_matches_hashlib_across_buffer_boundaries(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        digest, n = hash_fd(fd, buffer=bytearray(1024), on_bytes=seen.append)
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(data).hexdigest() and n == len(data)
    assert seen == [1024, 1024, 1024, 17]


def test_empty_file_hashes_to_the_empty_digest(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert hash_fd(fd)[0] == hashlib.sha256(b"").hexdigest()
    finally:
        os.close(fd)


def test_size_change_during_hash_raises(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        with open(path, "ab") as fh:
            fh.write(b"more")
        with pytest.raises(ChangedWhileHashingError, match="changed while hashing"):
            hash_fd(fd, before=before)
    finally:
        os.close(fd)


def test_cache_round_trips_and_drops_unseen_entries(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    cache = ScanCache(path)
    cache.load()
    cache.put((1, 2, 3, 4, 5), CacheEntry("safetensors", "a" * 64, HEADER, None))
    cache.put((1, 9, 3, 4, 5), CacheEntry(None))
    cache.put((1, 7, 3, 4, 5), CacheEntry("gguf", "b" * 64, None, ("truncated", "cut")))
    cache.save()
    again = ScanCache(path)
    again.load()
    assert again.load_problem is None
    assert again.get((1, 2, 3, 4, 5)) == CacheEntry("safetensors", "a" * 64, HEADER, None)
    assert again.get((1, 7, 3, 4, 5)) == CacheEntry("gguf", "b" * 64, None, ("truncated", "cut"))
    assert again.get((1, 2, 3, 4, 6)) is None  # a new ctime is a new version
    again.save()  # (1, 9, ...) was not seen in this scan: it is forgotten
    third = ScanCache(path)
    third.load()
    assert third.get((1, 9, 3, 4, 5)) is None and third.get((1, 2, 3, 4, 5)) is not None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 99, "e": []}',
        b'{"v": 1, "e": "x"}',
        b"[" * 100000,
    ],
)
def test_corrupt_cache_is_ignored(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(content)
    cache = ScanCache(path)
    cache.load()
    assert len(cache) == 0 and cache.load_problem is not None


def test_damaged_cache_rows_are_dropped_and_good_rows_kept(tmp_path: Path) -> None:
    good = [1, 2, 3, 4, 5, "gguf", "c" * 64, None, None]
    bad_rows = [
        [1, 2, 3, 4, "5", "gguf", "c" * 64, None, None],
        [1, 2, 3, 4, 6, "gguf", "short", None, None],
        [1, 2, 3, 4, 7, "gguf", None, {"tensor_count": "many"}, None],
        [1, 2, 3, 4, 8, "gguf", None, None, ["only-code"]],
        [1, 2, 3, 4, 9, "gguf", None, {"extra": 1}, None],
        "row",
    ]
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"v": 1, "e": [good, *bad_rows]}))
    cache = ScanCache(path)
    cache.load()
    assert cache.get((1, 2, 3, 4, 5)) == CacheEntry("gguf", "c" * 64)
    assert cache.load_problem == f"{len(bad_rows)} damaged cache entries dropped"


def test_cache_write_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = ScanCache(blocker / "cache.json")  # parent is a file: cannot be created
    cache.put((1, 2, 3, 4, 5), CacheEntry(None))
    cache.save()
    assert not (blocker / "cache.json").exists()


def test_cache_file_is_private(tmp_path: Path) -> None:
    cache = ScanCache(tmp_path / "state" / "cache.json")
    cache.put((1, 2, 3, 4, 5), CacheEntry(None))
    cache.save()
    assert (tmp_path / "state" / "cache.json").stat().st_mode & 0o777 == 0o600


def test_cache_key_is_device_inode_size_mtime_ctime(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    st = os.stat(path)
    assert cache_key(st) == (st.st_dev, st.st_ino, 3, st.st_mtime_ns, st.st_ctime_ns)


def test_low_priority_sets_idle_io_class_and_nice(tmp_path: Path) -> None:
    code = (
        "import os, psutil\n"
        "from agent.hashing import lower_priority\n"
        "print(lower_priority())\n"
        "print(int(psutil.Process().ionice().ioclass), os.getpriority(os.PRIO_PROCESS, 0))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.splitlines()
    assert out[0] == "[]"
    ioclass, nice = (int(x) for x in out[1].split())
    assert ioclass == 3 and nice >= 10  # IOPRIO_CLASS_IDLE
