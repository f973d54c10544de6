"""Large-buffer hashing, the scan cache's file format and persistence, and priority lowering."""

from __future__ import annotations

import ast
import hashlib
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.hashing import (
    SHAPE,
    CacheKey,
    CacheProblem,
    ChangedWhileHashingError,
    ScanCache,
    _entry,
    _row,
    cache_key,
    hash_fd,
)
from contract import FileError, HeaderFacts, WeightFile

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
    path = tmp_path / "cache"
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
    ("content", "code"),
    [
        (b"", "cache_damaged"),
        (b"not json", "cache_damaged"),
        (b"[]", "cache_damaged"),
        (b"[" * 100000, "cache_damaged"),
        (b"veu-scan-cache 4\n", "cache_damaged"),
        (b'{"v": 1, "e": []}', "cache_outdated"),
        (b'{"v":2,"e":"x"}', "cache_outdated"),
    ],
)
def test_unusable_cache_is_ignored_with_a_reason(tmp_path: Path, content: bytes, code: str) -> None:
    path = tmp_path / "cache"
    path.write_bytes(content)
    cache = ScanCache(path)
    cache.load()
    assert len(cache) == 0 and cache.get((1, 2, 3, 4, 5)) == (False, None)
    assert cache.problem is not None and cache.problem.code == code
    assert cache.problem.reported == (code != "cache_outdated")
    cache.save()  # an unusable file is replaced, even by an empty cache
    assert path.read_bytes().startswith(b"veu-scan-cache 4 ")


def saved_cache(path: Path, entries: dict[CacheKey, WeightFile | None]) -> bytes:
    cache = ScanCache(path)
    for key, value in entries.items():
        cache.put(key, value)
    cache.save()
    return path.read_bytes()


def test_a_changed_byte_fails_the_checksum_and_nothing_is_used(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    data = saved_cache(path, {(1, 2, 3, 4, 5): weight_file("a.safetensors")})
    at = data.index(b"a.safetensors")
    path.write_bytes(data[:at] + b"b" + data[at + 1 :])  # a well-formed row, edited
    cache = ScanCache(path)
    cache.load()
    assert cache.get((1, 2, 3, 4, 5)) == (False, None)
    assert cache.problem == CacheProblem(
        "cache_damaged", "cache checksum does not match; rehashing all"
    )


def test_cache_from_another_version_or_shape_is_outdated_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    data = saved_cache(path, {(1, 2, 3, 4, 5): None})
    head, body = data.split(b"\n", 1)
    magic, version, shape, digest = head.split(b" ")
    for other in (
        b" ".join((magic, b"3", shape, digest)),
        b" ".join((magic, version, b"0" * 16, digest)),
    ):
        path.write_bytes(other + b"\n" + body)
        cache = ScanCache(path)
        cache.load()
        assert cache.problem is not None and cache.problem.code == "cache_outdated"
        assert not cache.problem.reported and len(cache) == 0


def test_rows_that_pass_the_checksum_but_are_malformed_are_misses(tmp_path: Path) -> None:
    good = _row(weight_file("ok.safetensors"))
    rows = {
        (1, 2, 3, 4, 5): good,
        (1, 2, 3, 4, 6): ["short"],
        (1, 2, 3, 4, 7): [*good[:10], "not a header", None],
        (1, 2, 3, 4, 8): ["a" * 64],
        "not a key": [],
    }
    body = marshal.dumps(rows)
    head = b"veu-scan-cache 4 %s %s\n" % (SHAPE.encode(), hashlib.sha256(body).hexdigest().encode())
    path = tmp_path / "cache"
    path.write_bytes(head + body)
    cache = ScanCache(path)
    cache.load()
    assert cache.problem is None
    assert cache.get((1, 2, 3, 4, 5)) == (True, weight_file("ok.safetensors"))
    assert cache.get((1, 2, 3, 4, 6)) == (False, None)
    assert cache.get((1, 2, 3, 4, 7)) == (False, None)
    assert cache.get((1, 2, 3, 4, 8)) == (True, "a" * 64)  # an unidentified file's digest


def test_unreadable_cache_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.mkdir()  # reading a directory fails with EISDIR
    cache = ScanCache(path)
    cache.load()
    assert cache.problem is not None and cache.problem.code == "cache_unreadable"
    assert cache.problem.reported


ENTRIES = [
    weight_file("plain.safetensors"),
    weight_file("no-header.bin", format="pytorch-zip", header=None),
    weight_file(
        "bad.gguf",
        format="gguf",
        sha256=None,
        header=None,
        error={"code": "truncated", "detail": "file ends"},
    ),
    weight_file(
        "x\\xff.gguf",
        path_b64="eP8uZ2d1Zg==",
        owner=None,
        uid=4242,
        gid=7,
        header={
            "tensor_count": None,
            "parameter_count": 2**70,
            "dtypes": [],
            "metadata": {"k\u00e9y": "v\u2603\n", "": ""},
        },
    ),
]


@pytest.mark.parametrize("validated", ENTRIES, ids=lambda e: e.path)
def test_entries_read_back_without_validation_equal_validated_ones(validated: WeightFile) -> None:
    built = _entry(_row(validated))
    assert built == validated
    assert built is not None and type(built) is WeightFile
    assert set(built.__dict__) == set(WeightFile.model_fields)
    # The scan validates entries with every field given (storage._weight_file): all are "set".
    as_scanned = WeightFile.model_validate(validated.model_dump())
    assert built.model_fields_set == as_scanned.model_fields_set == set(WeightFile.model_fields)
    assert built.model_dump(mode="json") == validated.model_dump(mode="json")
    assert built.model_dump_json() == validated.model_dump_json()
    for name in ("header", "error"):
        nested, expected = getattr(built, name), getattr(validated, name)
        assert type(nested) is type(expected) and nested == expected
        if nested is not None:
            assert set(nested.__dict__) == set(type(nested).model_fields)
    assert WeightFile.model_validate(built.model_dump()) == validated
    copied = built.model_copy(update={"path": "/elsewhere"})
    assert copied.path == "/elsewhere" and copied.sha256 == validated.sha256


def test_rows_hold_every_field_of_the_models() -> None:
    """_entry and _row spell the fields out; a field added to the models must be added there
    too (the cache's SHAPE changes with the models, so old files are not misread meanwhile)."""
    for validated in ENTRIES:
        row = _row(validated)
        assert len(row) == len(WeightFile.model_fields)
    assert len(HeaderFacts.model_fields) == 4 and len(FileError.model_fields) == 2
    for cls in (WeightFile, HeaderFacts, FileError):
        assert cls.__pydantic_post_init__ is None and not cls.__pydantic_root_model__


def test_many_entries_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    entries: dict[CacheKey, WeightFile | None] = {
        (1, i, 3, 4, 5): ENTRIES[i % len(ENTRIES)] if i % 3 else None for i in range(200)
    }
    saved_cache(path, entries)
    cache = ScanCache(path)
    cache.load()
    assert cache.problem is None
    assert {key: cache.get(key) for key in entries} == {k: (True, v) for k, v in entries.items()}
    before = path.read_bytes()
    cache.save()  # nothing changed and everything was seen: not rewritten
    assert path.read_bytes() == before


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
