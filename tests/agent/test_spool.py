"""The spool: durable before put returns, bounded, ordered, and honest about damaged files."""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.spool import CORRUPT, REJECTED, Spool, SpoolCorrupt, SpoolFull, file_name
from contract import (
    AgentInfo,
    HostInfo,
    Posture,
    SnapshotV1,
    format_timestamp,
    fsutil,
    sign_envelope,
    statement_bytes,
)
from contract.keys import key_id as compute_key_id


def envelope_bytes(key: Ed25519PrivateKey, seq: int, prev: str | None = None) -> bytes:
    kid = compute_key_id(key.public_key())
    snapshot = SnapshotV1(
        agent=AgentInfo(key_id=kid, version="test"),
        site_id="site-1",
        host=HostInfo(hostname="h1"),
        seq=seq,
        prev=prev,
        nonce=None,
        collected_at=format_timestamp(datetime.now(UTC)),
        accelerators=[],
        storage=[],
        posture=Posture(),
        errors=[],
    )
    return sign_envelope(statement_bytes(snapshot), key, kid).to_bytes()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", 1_000_000)


def test_put_then_read_returns_the_same_bytes(spool: Spool, key: Ed25519PrivateKey) -> None:
    data = envelope_bytes(key, 1)
    spool.put(1, data)
    assert spool.read(1) == data
    assert spool.depth == 1
    assert spool.bytes_used == len(data)


def test_pending_lists_sequence_numbers_in_chain_order(
    spool: Spool, key: Ed25519PrivateKey
) -> None:
    for seq in (3, 1, 12, 2):
        spool.put(seq, envelope_bytes(key, seq))
    assert spool.pending() == [1, 2, 3, 12]


def test_put_is_idempotent_per_sequence_number(spool: Spool, key: Ed25519PrivateKey) -> None:
    data = envelope_bytes(key, 1)
    spool.put(1, data)
    spool.put(1, data)
    assert spool.depth == 1
    assert spool.bytes_used == len(data)


def test_spool_survives_a_restart(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    first = Spool(tmp_path / "spool", 1_000_000)
    first.put(1, envelope_bytes(key, 1))
    first.put(2, envelope_bytes(key, 2))
    first.remove(1)
    again = Spool(tmp_path / "spool", 1_000_000)
    assert again.pending() == [2]
    assert again.bytes_used == first.bytes_used


def test_put_fsyncs_the_file_before_rename_and_the_directory_after(
    spool: Spool, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    spool.put(7, envelope_bytes(key, 7))

    final = str(spool.directory / file_name(7))
    kinds = [kind for kind, _ in events]
    rename_at = events.index(("rename", final))
    assert "fsync" in kinds[:rename_at], "the file must be fsynced before it gets its final name"
    assert ".tmp" in events[kinds.index("fsync")][1]
    assert ("fsync", str(spool.directory)) in events[rename_at + 1 :], (
        "the directory must be fsynced after the rename so the new name survives power loss"
    )


def test_remove_fsyncs_the_directory(
    spool: Spool, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.put(1, envelope_bytes(key, 1))
    synced: list[Path] = []
    real = fsutil.fsync_dir

    def spy(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr("agent.spool.fsync_dir", spy)
    spool.remove(1)
    assert synced == [spool.directory]
    assert spool.pending() == []


def test_put_over_the_byte_limit_raises_spool_full_and_writes_nothing(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    one = envelope_bytes(key, 1)
    spool = Spool(tmp_path / "spool", len(one) + 10)
    spool.put(1, one)
    with pytest.raises(SpoolFull) as info:
        spool.put(2, envelope_bytes(key, 2))
    assert "full" in info.value.detail and "spool_max_bytes" in info.value.detail
    assert info.value.code == "spool_full"
    assert sorted(p.name for p in spool.directory.iterdir()) == [file_name(1)]


def test_room_returns_after_a_removal(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    one = envelope_bytes(key, 1)
    spool = Spool(tmp_path / "spool", len(one) + 10)
    spool.put(1, one)
    two = envelope_bytes(key, 2)
    assert not spool.has_room(len(two))
    spool.remove(1)
    spool.put(2, two)
    assert spool.pending() == [2]


def test_disk_full_raises_spool_full_and_leaves_no_partial_file(
    spool: Spool, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 16:
            return real_write(fd, bytes(data[:16]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(SpoolFull) as info:
        spool.put(1, envelope_bytes(key, 1))
    monkeypatch.undo()
    assert "no space left" in info.value.detail
    assert list(spool.directory.iterdir()) == []
    assert spool.depth == 0


def test_leftover_temporary_files_from_a_crash_are_removed_on_open(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / f".{file_name(4)}.tmp-999").write_bytes(b'{"payloadType": "half')
    spool = Spool(directory, 1_000_000)
    assert spool.pending() == []
    assert list(directory.iterdir()) == []


def test_truncated_file_is_reported_corrupt(spool: Spool, key: Ed25519PrivateKey) -> None:
    data = envelope_bytes(key, 1)
    spool.put(1, data)
    (spool.directory / file_name(1)).write_bytes(data[: len(data) // 2])
    with pytest.raises(SpoolCorrupt) as info:
        spool.read(1)
    assert info.value.seq == 1
    assert "not a valid envelope" in info.value.detail


def test_empty_file_is_reported_corrupt(spool: Spool, key: Ed25519PrivateKey) -> None:
    spool.put(1, envelope_bytes(key, 1))
    (spool.directory / file_name(1)).write_bytes(b"")
    with pytest.raises(SpoolCorrupt, match="empty"):
        spool.read(1)


def test_file_under_the_wrong_sequence_number_is_reported_corrupt(
    spool: Spool, key: Ed25519PrivateKey
) -> None:
    spool.put(2, envelope_bytes(key, 5))
    with pytest.raises(SpoolCorrupt, match="seq 5, not seq 2"):
        spool.read(2)


def test_tampered_payload_is_caught_by_the_signature_when_the_key_is_known(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    kid = compute_key_id(key.public_key())
    spool = Spool(tmp_path / "spool", 1_000_000, public_key=key.public_key(), key_id=kid)
    good = envelope_bytes(key, 1)
    forged = json.loads(envelope_bytes(key, 1))  # same seq, other collected_at: other payload
    forged["signatures"] = json.loads(good)["signatures"]
    spool.put(1, json.dumps(forged).encode())
    with pytest.raises(SpoolCorrupt, match="bad_signature"):
        spool.read(1)


def test_quarantine_moves_the_file_aside_with_a_reason(
    spool: Spool, key: Ed25519PrivateKey
) -> None:
    spool.put(1, envelope_bytes(key, 1))
    spool.put(2, envelope_bytes(key, 2))
    moved = spool.quarantine(1, "key revoked by the verifier", folder=REJECTED, code="revoked_key")
    assert spool.pending() == [2]
    assert moved.path.parent == spool.directory / REJECTED
    assert moved.path.exists()
    note = json.loads(moved.path.with_name(f"{1:020d}.reason.json").read_text())
    assert note["code"] == "revoked_key" and note["reason"] == "key revoked by the verifier"
    assert len(note["digest"]) == 64
    listed = spool.quarantined(REJECTED)
    assert [(q.seq, q.code) for q in listed] == [(1, "revoked_key")]
    assert spool.quarantined(CORRUPT) == []


def test_corrupt_file_quarantine_keeps_the_bytes_for_inspection(
    spool: Spool, key: Ed25519PrivateKey
) -> None:
    spool.put(3, envelope_bytes(key, 3))
    (spool.directory / file_name(3)).write_bytes(b"\x00garbage")
    with pytest.raises(SpoolCorrupt) as info:
        spool.read(3)
    moved = spool.quarantine(3, info.value.detail, folder=CORRUPT, code="spool_corrupt")
    assert moved.path.read_bytes() == b"\x00garbage"
    assert spool.depth == 0 and spool.bytes_used == 0
    assert [q.seq for q in spool.quarantined(CORRUPT)] == [3]


def test_quarantining_the_same_sequence_twice_keeps_both(
    spool: Spool, key: Ed25519PrivateKey
) -> None:
    for _ in range(2):
        spool.put(1, envelope_bytes(key, 1))
        spool.quarantine(1, "fork", folder=REJECTED, code="fork")
    assert len(spool.quarantined(REJECTED)) == 2


def test_foreign_files_in_the_spool_are_ignored(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "notes.txt").write_text("hello")
    spool = Spool(directory, 1_000_000)
    assert spool.pending() == [] and spool.bytes_used == 0


def test_with_the_host_key_a_signed_envelope_under_the_wrong_name_is_still_caught(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    kid = compute_key_id(key.public_key())
    spool = Spool(tmp_path / "spool", 1_000_000, public_key=key.public_key(), key_id=kid)
    spool.put(2, envelope_bytes(key, 5))
    with pytest.raises(SpoolCorrupt, match="seq 5, not seq 2"):
        spool.read(2)
    spool.put(3, envelope_bytes(key, 3)[:-40])
    with pytest.raises(SpoolCorrupt, match="not a valid envelope"):
        spool.read(3)
    spool.put(4, envelope_bytes(key, 4))
    assert spool.read(4)


def test_what_was_set_aside_counts_against_the_bound_with_its_reason_cut(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    first = envelope_bytes(key, 1)
    spool = Spool(tmp_path / "spool", len(first) * 2 + 3000)
    spool.put(1, first)
    spool.quarantine(1, "r" * 10_000_000, folder=REJECTED, code="fork")
    note = next((tmp_path / "spool" / REJECTED).glob("*.reason.json"))
    assert note.stat().st_size < 4096
    assert spool.bytes_used == 0
    assert spool.quarantined_bytes == len(first) + note.stat().st_size
    spool.put(2, envelope_bytes(key, 2))
    assert not spool.has_room(len(first))
    with pytest.raises(SpoolFull, match="set aside"):
        spool.put(3, envelope_bytes(key, 3))
    assert Spool(tmp_path / "spool", 1 << 30).quarantined_bytes == spool.quarantined_bytes
