"""Large-buffer hashing, the scan cache's persistence rules, and priority lowering."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.evidence import WeightFile
from agent.hashing import (
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


def weight_file(name: str, **changes: object) -> WeightFile:
    fields: dict[str, object] = {
        "path": f"/models/{name}",
        "size": 100,
        "mtime": "2026-01-01T00:00:00.000000Z",
        "mode": "0640",
        "uid": 0,
        "gid": 0,
        "owner": "root",
        "sha256": "a" * 64,
        "format": "safetensors",
        "header": HEADER,
    }
    fields.update(changes)
    return WeightFile.model_validate(fields)


def test_cache_round_trips_and_drops_unseen_entries(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    cache = ScanCache(path)
    cache.load()
    model = weight_file("model.safetensors")
    broken = weight_file("x.gguf", format="gguf", header=None, error={"code": "c", "detail": "d"})
    cache.put((1, 2, 3, 4, 5), model)
    cache.put((1, 9, 3, 4, 5), None)  # not a weight file
    cache.put((1, 7, 3, 4, 5), broken)
    cache.save()
    again = ScanCache(path)
    again.load()
    assert again.load_problem is None
    assert again.get((1, 2, 3, 4, 5)) == (True, model)
    assert again.get((1, 7, 3, 4, 5)) == (True, broken)
    assert again.get((1, 2, 3, 4, 6)) == (False, None)  # a new ctime is a new version
    again.save()  # (1, 9, ...) was not seen in this scan: it is forgotten
    third = ScanCache(path)
    third.load()
    assert third.get((1, 9, 3, 4, 5)) == (False, None)
    assert third.get((1, 2, 3, 4, 5)) == (True, model)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 1, "e": []}',
        b'{"v": 2, "e": "x"}',
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
    good = weight_file("ok.safetensors").model_dump(mode="json")
    bad_rows = [
        [1, 2, 3, 4, "5", good],  # key not an int
        [1, 2, 3, 4, 6, {**good, "sha256": 5}],
        [1, 2, 3, 4, 7, {**good, "format": "exe"}],
        [1, 2, 3, 4, 8, {**good, "header": {"tensor_count": "many"}}],
        [1, 2, 3, 4, 9, {**good, "extra": 1}],
        [1, 2, 3, 4, 10, {**good, "size": "100"}],  # strict: no coercion
        "row",
    ]
    path = tmp_path / "cache.json"
    path.write_text(
        json.dumps({"v": 2, "e": [[1, 2, 3, 4, 5, good], [1, 2, 3, 4, 11, None], *bad_rows]})
    )
    cache = ScanCache(path)
    cache.load()
    assert cache.get((1, 2, 3, 4, 5)) == (True, weight_file("ok.safetensors"))
    assert cache.get((1, 2, 3, 4, 11)) == (True, None)
    assert cache.load_problem == f"{len(bad_rows)} damaged cache entries dropped"


def test_cache_write_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = ScanCache(blocker / "cache.json")  # parent is a file: cannot be created
    cache.put((1, 2, 3, 4, 5), None)
    cache.save()
    assert not (blocker / "cache.json").exists()


def test_cache_file_is_private(tmp_path: Path) -> None:
    cache = ScanCache(tmp_path / "state" / "cache.json")
    cache.put((1, 2, 3, 4, 5), None)
    cache.save()
    assert (tmp_path / "state" / "cache.json").stat().st_mode & 0o777 == 0o600


def test_cache_key_is_device_inode_size_mtime_ctime(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    st = os.stat(path)
    assert cache_key(st) == (st.st_dev, st.st_ino, 3, st.st_mtime_ns, st.st_ctime_ns)


def test_low_priority_applies_to_the_calling_thread_and_the_threads_it_starts() -> None:
    code = (
        "import os, threading, psutil\n"
        "from agent.hashing import lower_priority\n"
        "def probe(out):\n"
        "    tid = threading.get_native_id()\n"
        "    out.append((int(psutil.Process(tid).ionice().ioclass),"
        " os.getpriority(os.PRIO_PROCESS, tid)))\n"
        "def collector(out):\n"
        "    out.append(lower_priority())\n"
        "    child = threading.Thread(target=probe, args=(out,))\n"
        "    child.start(); child.join()\n"
        "out = [os.getpriority(os.PRIO_PROCESS, threading.get_native_id())]\n"
        "t = threading.Thread(target=collector, args=(out,)); t.start(); t.join()\n"
        "probe(out)\n"
        "print(out)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    before, problems, worker, main = ast.literal_eval(out)
    assert problems == []
    assert worker[0] == 3 and worker[1] >= 10  # IOPRIO_CLASS_IDLE, nice 10
    assert main[1] == before  # the agent's main thread keeps its priority
