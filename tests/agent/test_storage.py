"""Storage collector: mounts and encryption from recorded /proc and /sys, and the file scan."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import pwd
import shutil
from pathlib import Path

import pytest

from agent.collect import storage
from agent.collect.storage import (
    block_encryption,
    describe_encryption,
    find_mount,
    read_mountinfo,
    scan_weight_roots,
)
from contract import (
    AgentInfo,
    CollectorError,
    HostInfo,
    Posture,
    SnapshotV1,
    StorageRoot,
    WeightFile,
    parse_statement,
    statement_bytes,
)
from tests.agent.weights_fixtures import (
    FIXTURES,
    safetensors_bytes,
    torch_zip,
    write_gguf,
    write_safetensors,
)

PROC = FIXTURES / "proc"
SYS = FIXTURES / "sys"


def encryption_of(path: str) -> tuple[str, str | None, str]:
    mount = find_mount(path, read_mountinfo(PROC))
    enc = describe_encryption(path, mount, SYS, fscrypt=None)
    return enc.status, enc.method, enc.determined_by or enc.reason or ""


# --------------------------------------------------------------------------- mounts, encryption


def test_mount_is_longest_prefix_and_unescaped() -> None:
    mounts = read_mountinfo(PROC)
    hit = find_mount("/srv/models/llama/model.safetensors", mounts)
    assert hit is not None and hit.mount_point == "/srv/models" and hit.fstype == "ext4"
    assert hit.source == "/dev/mapper/luks-1234"
    spaced = find_mount("/mnt/with space/x", mounts)
    assert spaced is not None and spaced.mount_point == "/mnt/with space"
    sibling = find_mount("/srv/models2", mounts)
    assert sibling is not None and sibling.mount_point == "/"


def test_last_mount_on_the_same_point_wins() -> None:
    hit = find_mount("/srv/models/scratch/a", read_mountinfo(PROC))
    assert hit is not None and hit.fstype == "ext4"  # tmpfs was mounted over by ext4


def test_luks2_device_mapper_is_encrypted() -> None:
    status, method, why = encryption_of("/srv/models/llama")
    assert (status, method) == ("encrypted", "dm-crypt/LUKS2")
    assert "dm-0/dm/uuid = CRYPT-LUKS2-" in why


def test_lvm_on_luks_is_encrypted_through_slaves() -> None:
    status, method, why = encryption_of("/data/models")
    assert (status, method) == ("encrypted", "dm-crypt/LUKS1")
    assert why.startswith("dm-2 (dm LVM) -> ") and "dm-1/dm/uuid" in why


def test_lvm_spanning_encrypted_and_plain_devices_is_unencrypted() -> None:
    status, _, why = encryption_of("/mixed")
    assert status == "unencrypted" and "sdb1" in why


def test_plain_partition_is_unencrypted_and_says_what_was_read() -> None:
    status, method, why = encryption_of("/home/user/models")
    assert (status, method) == ("unencrypted", None)
    assert "sda2" in why and "plain block device" in why


def test_dm_verity_is_not_mistaken_for_encryption() -> None:
    status, _, _ = encryption_of("/mnt/verity")
    assert status == "unencrypted"


def test_btrfs_anonymous_device_is_found_by_dm_name() -> None:
    status, method, _ = encryption_of("/btr/models")
    assert (status, method) == ("encrypted", "dm-crypt")


@pytest.mark.parametrize(
    ("path", "reason_part"),
    [
        ("/tmp/models", "memory-backed"),
        ("/var/lib/docker/overlay2/abc/merged/m", "upperdir=/var/lib/docker/overlay2/abc/diff"),
        ("/mnt/nfs/m", "another machine"),
        ("/mnt/loop/m", "loop device backed by /var/lib/images/x.img"),
    ],
)
def test_filesystems_without_a_verdict_are_unknown_with_reason(path: str, reason_part: str) -> None:
    status, method, why = encryption_of(path)
    assert status == "unknown" and method is None
    assert reason_part in why


def test_fscrypt_flag_makes_a_plain_partition_encrypted() -> None:
    mount = find_mount("/home/u", read_mountinfo(PROC))
    enc = describe_encryption("/home/u", mount, SYS, fscrypt=True)
    assert (enc.status, enc.method) == ("encrypted", "fscrypt")


def test_device_missing_from_sysfs_is_unknown(tmp_path: Path) -> None:
    enc = block_encryption(tmp_path / "class" / "block" / "sdz", tmp_path)
    assert enc.status == "unknown" and "sdz" in (enc.reason or "")


def test_fscrypt_flag_reads_without_error_on_this_filesystem(tmp_path: Path) -> None:
    assert storage.fscrypt_flag(str(tmp_path)) in (None, False)
    assert storage.fscrypt_flag(str(tmp_path / "missing")) is None


# --------------------------------------------------------------------------- scanning


def proc_with_mount(tmp_path: Path, mount_point: Path, line: str) -> Path:
    """A proc tree whose mountinfo puts ``mount_point`` on the fixture's LUKS2 device."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    text = (PROC / "self" / "mountinfo").read_text()
    (proc / "self" / "mountinfo").write_text(text + line.format(mp=mount_point) + "\n")
    return proc


def scan(
    roots: list[Path], tmp_path: Path, cache: bool = True, **kwargs: object
) -> tuple[list[StorageRoot], list[CollectorError]]:
    return scan_weight_roots(
        roots,
        cache_path=tmp_path / "state" / "scan-cache.json" if cache else None,
        proc_root=PROC,
        sys_root=SYS,
        **kwargs,  # type: ignore[arg-type]
    )


def files_by_name(root: StorageRoot) -> dict[str, WeightFile]:
    return {os.path.basename(f.path): f for f in root.files}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "llama").mkdir(parents=True)
    write_safetensors(root / "llama" / "model.safetensors", {"format": "pt"})
    write_gguf(root / "llama" / "q4.gguf")
    torch_zip(root / "llama" / "pytorch_model.bin")
    (root / "llama" / "config.json").write_text('{"hidden": 8}')
    (root / "README.md").write_text("# hi\n")
    return root


def test_scan_reports_every_weight_file_with_facts(tree: Path, tmp_path: Path) -> None:
    proc = proc_with_mount(tmp_path, tree, "99 22 8:2 / {mp} rw - ext4 /dev/sda2 rw")
    roots, errors = scan_weight_roots([tree], cache_path=None, proc_root=proc, sys_root=SYS)
    assert errors == []
    [root] = roots
    files = files_by_name(root)
    assert set(files) == {"model.safetensors", "q4.gguf", "pytorch_model.bin"}
    st = files["model.safetensors"]
    raw = (tree / "llama" / "model.safetensors").read_bytes()
    assert st.sha256 == hashlib.sha256(raw).hexdigest()
    assert st.size == len(raw) and st.format == "safetensors"
    assert st.header is not None and st.header.tensor_count == 2
    info = os.stat(tree / "llama" / "model.safetensors")
    assert st.mode == f"{info.st_mode & 0o7777:04o}" and st.uid == info.st_uid
    assert st.owner == pwd.getpwuid(info.st_uid).pw_name
    assert st.mtime.endswith("Z") and st.mtime[:4].isdigit()
    assert files["q4.gguf"].header is not None and files["pytorch_model.bin"].header is None
    assert root.file_count == 3 and root.total_bytes == sum(f.size for f in root.files)
    assert root.root == str(tree) and root.mount_point == str(tree)
    assert (root.device, root.filesystem) == ("/dev/sda2", "ext4")
    assert root.encryption.status == "unencrypted"


def test_root_on_luks_mount_reports_device_and_encryption(tree: Path, tmp_path: Path) -> None:
    line = "99 22 253:0 / {mp} rw,relatime - ext4 /dev/mapper/luks-1234 rw"
    proc = proc_with_mount(tmp_path, tree, line)
    roots, _ = scan_weight_roots([tree], cache_path=None, proc_root=proc, sys_root=SYS)
    assert roots[0].mount_point == str(tree) and roots[0].device == "/dev/mapper/luks-1234"
    assert roots[0].encryption.method == "dm-crypt/LUKS2"


def test_missing_root_is_an_error_and_other_roots_are_scanned(tree: Path, tmp_path: Path) -> None:
    roots, errors = scan([tmp_path / "nope", tree], tmp_path)
    assert [r.root for r in roots] == [str(tree)]
    assert [(e.collector, e.code) for e in errors] == [("storage", "root_not_found")]


def test_unreadable_mountinfo_is_an_error_not_a_crash(tree: Path, tmp_path: Path) -> None:
    roots, errors = scan_weight_roots([tree], cache_path=None, proc_root=tmp_path / "noproc")
    assert [e.code for e in errors] == ["mountinfo_unreadable"]
    assert roots[0].encryption.status == "unknown" and roots[0].file_count == 3


def test_hostile_header_is_recorded_on_the_file_and_still_hashed(
    tree: Path, tmp_path: Path
) -> None:
    data = safetensors_bytes(b'{"a":1}', length=2**63)
    (tree / "evil.safetensors").write_bytes(data)
    roots, errors = scan([tree], tmp_path)
    evil = files_by_name(roots[0])["evil.safetensors"]
    assert evil.error is not None and evil.error.code == "header_too_large"
    assert evil.sha256 == hashlib.sha256(data).hexdigest()
    assert len(roots[0].files) == 4 and errors == []


def test_file_symlinks_inside_roots_are_skipped_and_loops_are_harmless(
    tree: Path, tmp_path: Path
) -> None:
    blob = tree / "llama" / "model.safetensors"
    os.symlink(blob, tree / "link.safetensors")
    os.symlink(tree, tree / "llama" / "loop")  # directory loop
    os.symlink("self", tree / "self")  # a link to itself
    os.symlink(tree / "gone", tree / "dangling")
    roots, errors = scan([tree], tmp_path)
    assert set(files_by_name(roots[0])) == {"model.safetensors", "q4.gguf", "pytorch_model.bin"}
    assert errors == []


def test_symlinks_to_weights_outside_roots_are_reported(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_safetensors(outside / "secret.safetensors")
    (outside / "notes.txt").write_text("x")
    os.symlink(outside / "secret.safetensors", tree / "secret")
    os.symlink(outside / "notes.txt", tree / "notes")
    os.symlink(outside, tree / "more")
    roots, errors = scan([tree], tmp_path)
    assert "secret" not in files_by_name(roots[0])
    codes = sorted((e.code, e.detail.split(":")[-1].strip()) for e in errors)
    assert codes == [
        ("symlink_outside_roots", "directory outside the roots not followed"),
        ("symlink_outside_roots", "weight file outside the roots"),
    ]


def test_names_with_newlines_and_invalid_utf8_keep_their_raw_bytes(
    tree: Path, tmp_path: Path
) -> None:
    raw_dir = os.fsencode(tree)
    bad = raw_dir + b"/caf\xe9\nmodel.safetensors"
    shutil.copyfile(tree / "llama" / "model.safetensors", bad)
    roots, _ = scan([tree], tmp_path)
    [entry] = [f for f in roots[0].files if f.path_b64 is not None]
    assert base64.b64decode(entry.path_b64 or "") == bad
    assert entry.path.endswith("caf\\xe9\nmodel.safetensors")
    assert entry.path.encode("utf-8")  # always encodable: safe to sign as JSON


def test_unreadable_weight_file_is_an_error_on_the_file(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = storage._open_file

    def deny(raw: bytes) -> int:
        if raw.endswith((b"q4.gguf", b"config.json")):
            raise PermissionError(13, "Permission denied")
        return real_open(raw)

    monkeypatch.setattr(storage, "_open_file", deny)
    roots, errors = scan([tree], tmp_path)
    q4 = files_by_name(roots[0])["q4.gguf"]
    assert q4.sha256 is None and q4.format == "gguf"
    assert q4.error is not None and q4.error.code == "unreadable"
    assert [(e.code, os.path.basename(e.detail.split(":")[0])) for e in errors] == [
        ("file_unreadable", "config.json")
    ]


def test_file_changing_while_hashed_has_no_digest(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tree / "llama" / "model.safetensors"
    real_hash = storage.hash_fd

    def grow_then_hash(fd: int, **kwargs: object) -> tuple[str, int]:
        if os.fstat(fd).st_ino == os.stat(target).st_ino:
            with open(target, "ab") as fh:
                fh.write(b"\0" * 10)
        return real_hash(fd, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "hash_fd", grow_then_hash)
    roots, _ = scan([tree], tmp_path)
    model = files_by_name(roots[0])["model.safetensors"]
    assert model.sha256 is None
    assert model.error is not None and model.error.code == "changed_while_hashing"
    monkeypatch.setattr(storage, "hash_fd", real_hash)
    again, _ = scan([tree], tmp_path)  # not cached: the next scan hashes it properly
    assert files_by_name(again[0])["model.safetensors"].sha256 is not None


def test_unchanged_files_are_not_opened_on_rescan(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = scan([tree], tmp_path)
    opened: list[bytes] = []
    real_open = storage._open_file

    def spy(raw: bytes) -> int:
        opened.append(raw)
        return real_open(raw)

    monkeypatch.setattr(storage, "_open_file", spy)
    second, _ = scan([tree], tmp_path)
    assert opened == [] and second == first
    (tree / "llama" / "q4.gguf").write_bytes(b"GGUF" + b"\0" * 30)
    third, _ = scan([tree], tmp_path)
    assert [os.path.basename(p) for p in opened] == [b"q4.gguf"]
    assert files_by_name(third[0])["q4.gguf"].error is not None


def spy_opens(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    opened: list[bytes] = []
    real_open = storage._open_file

    def spy(raw: bytes) -> int:
        opened.append(raw)
        return real_open(raw)

    monkeypatch.setattr(storage, "_open_file", spy)
    return opened


def test_damaged_cache_is_logged_and_every_file_rehashed(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = scan([tree], tmp_path)
    cache_file = tmp_path / "state" / "scan-cache.json"
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped in the rows
    opened = spy_opens(monkeypatch)
    with caplog.at_level("WARNING", logger="agent.hashing"):
        second, errors = scan([tree], tmp_path)
    assert second == first and len(opened) == 5  # every file under the root, read again
    assert errors == []  # nothing is missing from this snapshot: not an evidence error
    assert "cache checksum does not match; rehashing all" in caplog.text
    assert cache_file.read_bytes().startswith(b"veu-scan-cache 4 ")
    opened.clear()
    third, errors = scan([tree], tmp_path)  # rebuilt: nothing opened
    assert third == first and errors == [] and opened == []


def test_cache_of_an_older_agent_is_rebuilt_without_an_error(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = scan([tree], tmp_path, cache=False)
    cache_file = tmp_path / "state" / "scan-cache.json"
    cache_file.parent.mkdir()
    cache_file.write_text('{"v":2,"e":[]}')  # what version 2 wrote: one JSON document
    opened = spy_opens(monkeypatch)
    second, errors = scan([tree], tmp_path)
    assert second == first and errors == [] and len(opened) == 5
    assert cache_file.read_bytes().startswith(b"veu-scan-cache 4 ")


def snapshot_payload(roots: list[StorageRoot]) -> bytes:
    """The signed statement bytes of a snapshot that differs only in its storage section."""
    return statement_bytes(
        SnapshotV1(
            agent=AgentInfo(key_id="a" * 64, version="test"),
            site_id=None,
            host=HostInfo(),
            seq=1,
            prev=None,
            nonce=None,
            collected_at="2026-01-01T00:00:00.000000Z",
            accelerators=[],
            storage=roots,
            posture=Posture(),
            errors=[],
        )
    )


def test_cached_rescan_gives_byte_identical_evidence(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries read back from the cache are not re-validated; they must still be the very
    evidence a scan without a cache gives, down to the bytes that get signed."""
    (tree / "evil.safetensors").write_bytes(safetensors_bytes(b'{"a":1}', length=2**63))
    shutil.copyfile(tree / "llama" / "model.safetensors", os.fsencode(tree) + b"/caf\xe9\n.bin")
    os.link(tree / "llama" / "q4.gguf", tree / "q4-link.gguf")
    write_safetensors(tree / "meta.safetensors", {"n\u00e4me": "\u2603", "q": '"\\'})
    uncached, errors = scan([tree], tmp_path, cache=False)
    assert errors == [] and len(uncached[0].files) == 7
    cold, _ = scan([tree], tmp_path)
    opened = spy_opens(monkeypatch)
    warm, errors = scan([tree], tmp_path)
    assert opened == [] and errors == []
    assert warm == cold == uncached
    assert [f.model_dump() for f in warm[0].files] == [f.model_dump() for f in uncached[0].files]
    payload = snapshot_payload(uncached)
    assert snapshot_payload(cold) == payload and snapshot_payload(warm) == payload
    _, parsed = parse_statement(payload)  # and the verifier accepts it
    assert parsed.storage == warm


def test_renamed_touched_and_chmodded_files_are_described_as_they_are_now(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan([tree], tmp_path)
    os.rename(tree / "llama" / "q4.gguf", tree / "llama" / "renamed.gguf")
    gguf_before = files_by_name(scan([tree], tmp_path)[0][0])["renamed.gguf"]
    os.chmod(tree / "llama" / "pytorch_model.bin", 0o600)
    os.utime(tree / "llama" / "model.safetensors", ns=(1, 2_000_000_000))
    opened = spy_opens(monkeypatch)
    roots, errors = scan([tree], tmp_path)
    assert errors == []
    assert sorted(os.path.basename(p) for p in opened) == [
        b"model.safetensors",
        b"pytorch_model.bin",
    ]
    files = files_by_name(roots[0])
    assert files["pytorch_model.bin"].mode == "0600"
    assert files["model.safetensors"].mtime == "1970-01-01T00:00:02.000000Z"
    assert files["renamed.gguf"] == gguf_before
    assert gguf_before.path.endswith("/llama/renamed.gguf")
    assert roots == scan([tree], tmp_path, cache=False)[0]


def test_nested_mounts_are_not_entered_but_reported(tmp_path: Path) -> None:
    dev_shm = Path("/dev/shm")
    if not dev_shm.is_dir() or os.stat(dev_shm).st_dev == os.stat("/dev").st_dev:
        pytest.skip("needs /dev/shm as a separate filesystem")
    roots, errors = scan([Path("/dev")], tmp_path, cache=False)
    assert any(e.code == "nested_mount_not_scanned" and "/dev/shm" in e.detail for e in errors)
    assert roots[0].root == "/dev"


def test_single_file_root_is_scanned(tree: Path, tmp_path: Path) -> None:
    roots, errors = scan([tree / "llama" / "q4.gguf"], tmp_path)
    assert errors == [] and [f.format for f in roots[0].files] == ["gguf"]


def test_parallel_workers_give_the_same_result_as_one(tree: Path, tmp_path: Path) -> None:
    for i in range(12):
        write_safetensors(tree / f"shard-{i}.safetensors", {"i": str(i)})
    one, _ = scan([tree], tmp_path, cache=False, workers=1)
    four, _ = scan([tree], tmp_path, cache=False, workers=4)
    assert one == four and one[0].file_count == 15


def test_hard_links_are_listed_under_each_name_from_one_cache_entry(
    tree: Path, tmp_path: Path
) -> None:
    os.link(tree / "llama" / "q4.gguf", tree / "llama" / "q4-link.gguf")
    first, _ = scan([tree], tmp_path)
    second, _ = scan([tree], tmp_path)
    for roots in (first, second):
        files = files_by_name(roots[0])
        assert files["q4-link.gguf"].path.endswith("/llama/q4-link.gguf")
        assert files["q4.gguf"].path.endswith("/llama/q4.gguf")
        assert files["q4-link.gguf"].sha256 == files["q4.gguf"].sha256


def test_unreadable_directory_is_reported_and_the_rest_scanned(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scandir = os.scandir
    blocked = os.fsencode(tree / "llama")

    def scandir(path: bytes) -> object:
        if path == blocked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(storage.os, "scandir", scandir)
    roots, errors = scan([tree], tmp_path, cache=False)
    assert roots[0].file_count == 0
    assert [(e.code, e.detail) for e in errors] == [
        ("dir_unreadable", f"{tree / 'llama'}: Permission denied")
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_a_terminal_and_result_is_unchanged(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet, _ = scan([tree], tmp_path, cache=False)
    terminal = _Terminal()
    monkeypatch.setattr(storage.sys, "stderr", terminal)
    shown, _ = scan([tree], tmp_path, cache=False, progress=True)
    assert shown == quiet
    assert "hashing weights" in terminal.getvalue()


def test_no_progress_bar_without_a_terminal(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan([tree], tmp_path, cache=False, progress=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
        (1_795_813_508_378_452_877, "2026-11-27T21:05:08.378452Z"),
        (10**24, "9999-12-31T23:59:59.000000Z"),
        (-(10**24), "0001-01-01T00:00:00.000000Z"),
    ],
)
def test_mtime_is_rfc3339_utc_even_at_the_extremes(ns: int, text: str) -> None:
    result = storage._mtime(ns)
    assert result == text


def test_file_rewritten_between_walk_and_open_is_described_as_read(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tree / "llama" / "model.safetensors"
    replacement = write_safetensors(tmp_path / "other.safetensors", {"v": "2"}).read_bytes()
    real_open = storage._open_file

    def rewrite_first(raw: bytes) -> int:
        if raw == os.fsencode(target):
            target.write_bytes(replacement)
        return real_open(raw)

    monkeypatch.setattr(storage, "_open_file", rewrite_first)
    roots, _ = scan([tree], tmp_path)
    model = files_by_name(roots[0])["model.safetensors"]
    assert model.size == len(replacement)
    assert model.sha256 == hashlib.sha256(replacement).hexdigest()
    monkeypatch.setattr(storage, "_open_file", real_open)
    again, _ = scan([tree], tmp_path)
    assert files_by_name(again[0])["model.safetensors"] == model


def test_file_deleted_between_walk_and_hashing_is_reported_not_listed(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_walk = storage._walk
    victim = tree / "llama" / "q4.gguf"

    def walk_then_delete(*args: object) -> object:
        found = real_walk(*args)  # type: ignore[arg-type]
        victim.unlink()
        return found

    monkeypatch.setattr(storage, "_walk", walk_then_delete)
    roots, errors = scan([tree], tmp_path)
    assert "q4.gguf" not in files_by_name(roots[0])
    assert [e.code for e in errors] == ["stat_failed"] and "q4.gguf" in errors[0].detail


# --------------------------------------------------------------------------- nothing is invisible


def _hidden_weights_tree(tmp_path: Path) -> Path:
    root = tmp_path / "hidden"
    root.mkdir()
    # Weight names whose bytes are no weight format: a few bytes prepended, a damaged zip.
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"format": "pt"})
    (root / "prepended.safetensors").write_bytes(b"xyz" + good.read_bytes())
    (root / "weights.bin").write_bytes(b"\x00" * 4096)
    # No weight name, no weight bytes: an encrypted blob (large) and a small note.
    (root / "blob.enc").write_bytes(os.urandom(1024) * 1100)  # 1.1 MiB
    (root / "notes.txt").write_bytes(b"hello\n")
    return root


def test_weight_names_with_unrecognized_bytes_are_entries_with_an_error(tmp_path: Path) -> None:
    root_dir = _hidden_weights_tree(tmp_path)
    [root], errors = scan([root_dir], tmp_path)
    files = files_by_name(root)
    assert set(files) == {"prepended.safetensors", "weights.bin"}
    for name, fmt in (("prepended.safetensors", "safetensors"), ("weights.bin", "pytorch-zip")):
        entry = files[name]
        raw = (root_dir / name).read_bytes()
        assert entry.format == fmt and entry.size == len(raw)
        assert entry.sha256 == hashlib.sha256(raw).hexdigest()
        assert entry.error is not None and entry.error.code == "unrecognized_content"
    assert errors == []


def test_every_other_file_is_counted_and_large_ones_listed_with_digests(tmp_path: Path) -> None:
    root_dir = _hidden_weights_tree(tmp_path)
    blob = (root_dir / "blob.enc").read_bytes()
    for _ in range(2):  # the cached rescan says the same
        [root], _ = scan([root_dir], tmp_path)
        assert root.unidentified_count == 2
        assert root.unidentified_bytes == len(blob) + 6
        assert root.unidentified_listed_from == 1024 * 1024
        [listed] = root.unidentified
        assert listed.path == str(root_dir / "blob.enc") and listed.size == len(blob)
        assert listed.sha256 == hashlib.sha256(blob).hexdigest()
    # A lower threshold lists the small file too, with its digest (the cache does not hide it).
    [root], _ = scan([root_dir], tmp_path, list_unidentified_from=1)
    assert [os.path.basename(u.path) for u in root.unidentified] == ["blob.enc", "notes.txt"]
    assert root.unidentified[1].sha256 == hashlib.sha256(b"hello\n").hexdigest()


def test_hostile_safetensors_length_is_an_entry_not_a_disappearance(tmp_path: Path) -> None:
    root_dir = tmp_path / "w"
    root_dir.mkdir()
    (root_dir / "evil.safetensors").write_bytes((2**63).to_bytes(8, "little") + b"{}" * 40)
    (root_dir / "evil.data").write_bytes((2**63).to_bytes(8, "little") + b"\x00" * 40)
    [root], _ = scan([root_dir], tmp_path)
    [entry] = root.files
    assert entry.error is not None and entry.sha256 is not None
    assert root.unidentified_count == 1
