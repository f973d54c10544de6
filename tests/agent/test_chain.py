"""The host hash chain: ordering, crash safety, key rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.chain import HEAD_NAME, JOURNAL_NAME, Chain, ChainError
from contract import (
    AgentInfo,
    HostInfo,
    Posture,
    SnapshotV1,
    envelope_digest,
    parse_envelope,
    parse_statement,
)
from contract.keys import key_id as compute_key_id


def builder(key: Ed25519PrivateKey):  # type: ignore[no-untyped-def]
    kid = compute_key_id(key.public_key())

    def build(seq: int, prev: str | None) -> SnapshotV1:
        return SnapshotV1(
            agent=AgentInfo(key_id=kid, version="t"),
            site_id="s",
            host=HostInfo(),
            seq=seq,
            prev=prev,
            nonce=None,
            collected_at="2026-01-01T00:00:00Z",
            accelerators=[],
            storage=[],
            posture=Posture(),
            errors=[],
        )

    return build


class ListOutbox:
    def __init__(self) -> None:
        self.items: dict[int, bytes] = {}

    def put(self, seq: int, data: bytes) -> None:
        self.items[seq] = data


def test_first_snapshot_has_seq_1_and_no_prev(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    taken = Chain(tmp_path, key).advance(builder(key))
    assert (taken.snapshot.seq, taken.snapshot.prev) == (1, None)


def test_each_snapshot_links_to_the_digest_of_the_previous(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    chain = Chain(tmp_path, key)
    first = chain.advance(builder(key))
    second = chain.advance(builder(key))
    assert second.snapshot.seq == 2
    assert second.snapshot.prev == first.digest == envelope_digest(first.envelope)
    head = chain.head()
    assert head is not None and (head.seq, head.digest) == (2, second.digest)


def test_head_survives_a_new_process(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    first = Chain(tmp_path, key).advance(builder(key))
    again = Chain(tmp_path, key).advance(builder(key))
    assert again.snapshot.prev == first.digest


def test_crash_after_envelope_write_before_head_update_reuses_no_seq(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    outbox = ListOutbox()
    chain = Chain(tmp_path, key, outbox=outbox)
    chain.advance(builder(key))
    head_before = (tmp_path / HEAD_NAME).read_bytes()
    second = chain.advance(builder(key))
    # Simulate the crash: the journal (and outbox) hold seq 2, the head still says seq 1.
    (tmp_path / HEAD_NAME).write_bytes(head_before)
    fresh_outbox = ListOutbox()
    recovered = Chain(tmp_path, key, outbox=fresh_outbox)
    head = recovered.head()
    assert head is not None and (head.seq, head.digest) == (2, second.digest)
    assert fresh_outbox.items == {2: second.raw}  # the recovered envelope is queued for delivery
    third = recovered.advance(builder(key))
    assert (third.snapshot.seq, third.snapshot.prev) == (3, second.digest)


def test_envelope_is_durable_before_the_head_moves(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()

    class FailingOutbox:
        def put(self, seq: int, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Chain(tmp_path, key, outbox=FailingOutbox()).advance(builder(key))
    assert not (tmp_path / HEAD_NAME).exists()


def test_a_replaced_key_starts_a_new_chain(tmp_path: Path) -> None:
    old = Ed25519PrivateKey.generate()
    Chain(tmp_path, old).advance(builder(old))
    new = Ed25519PrivateKey.generate()
    taken = Chain(tmp_path, new).advance(builder(new))
    assert (taken.snapshot.seq, taken.snapshot.prev) == (1, None)


def test_corrupt_head_is_a_clear_error(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / HEAD_NAME).write_text("{not json")
    with pytest.raises(ChainError) as err:
        Chain(tmp_path, key).head()
    assert err.value.code == "corrupt_head"


def test_corrupt_journal_is_set_aside_and_the_head_stays_authoritative(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    first = Chain(tmp_path, key).advance(builder(key))
    (tmp_path / JOURNAL_NAME).write_bytes(b"garbage")
    chain = Chain(tmp_path, key)
    assert (tmp_path / "journal.dsse.corrupt").exists()
    assert chain.advance(builder(key)).snapshot.prev == first.digest


def test_journal_envelope_is_what_was_signed(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    taken = Chain(tmp_path, key).advance(builder(key))
    env = parse_envelope((tmp_path / JOURNAL_NAME).read_bytes())
    _, snap = parse_statement(env.payload_bytes())
    assert snap == taken.snapshot
    assert json.loads((tmp_path / HEAD_NAME).read_text())["seq"] == 1
