"""``veu-server log witness``: it follows a real verifier's log, cosigns each checkpoint that
extends the last (C2SP tlog-cosignature/v1), and when the operator rewrites the log's history it
raises the alarm with both signed checkpoints as evidence, and cosigns no more."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, delete, update

from contract.tlog import (
    CheckpointError,
    LogProofError,
    parse_verifier_key,
    verify_checkpoint,
    verify_consistency,
    verify_cosignature,
)
from server.log.note import LogKey
from server.log.witness import Witness
from server.store.log_models import LogCheckpoint, LogEntry, LogNode
from tests.server.builders import HostKit
from tests.server.conftest import Fleet, run_cli, start_server, stop_server


def test_cosignatures_verify_and_bind_the_checkpoint(tmp_path: Path) -> None:
    log = LogKey(Ed25519PrivateKey.generate(), "log.example")
    witness = Witness("http://unused", log.note_key, Ed25519PrivateKey.generate(), "w1", tmp_path)
    note = log.sign(5, b"\x07" * 32)
    cosigned = witness.cosign(note, 1_700_000_000)
    wkey = parse_verifier_key(witness.verifier_key, kind=0x04)
    assert verify_cosignature(cosigned, wkey) == 1_700_000_000
    assert verify_checkpoint(cosigned, log.note_key).size == 5  # the log's signature still holds
    with pytest.raises(CheckpointError):
        verify_cosignature(cosigned.replace("\n5\n", "\n6\n"), wkey)
    with pytest.raises(CheckpointError):
        verify_cosignature(note, wkey)  # not cosigned
    with pytest.raises(CheckpointError):
        parse_verifier_key(witness.verifier_key)  # a cosignature key is not a note key


def _submit(fleet: Fleet, kit: HostKit, n: int) -> None:
    for _ in range(n):
        r = httpx.post(
            f"{fleet.server.url}/v1/snapshots",
            content=kit.next_envelope(),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text


def _size(url: str) -> int:
    r = httpx.get(f"{url}/log/checkpoint")
    return int(r.text.split("\n")[1]) if r.status_code == 200 else -1


def _wait_size(url: str, size: int) -> None:
    deadline = time.monotonic() + 60
    while _size(url) != size:
        assert time.monotonic() < deadline, f"the log never reached size {size}"
        time.sleep(0.05)


def test_a_witness_follows_cosigns_and_catches_a_rewritten_history(
    fleet: Fleet, tmp_path: Path
) -> None:
    server = fleet.server
    log_key = server.cli("log", "key").stdout.strip()
    kit = HostKit(fleet.site_id)
    fleet.enroll(kit)
    wdir = tmp_path / "witness"

    def witness() -> object:
        return run_cli(
            "log", "witness", "--url", server.url, "--log-key", log_key, "--name",
            "auditor.example/witness", "--once", "--data-dir", str(wdir), check=False,
        )  # fmt: skip

    _submit(fleet, kit, 2)
    _wait_size(server.url, 2)
    first = witness()
    assert first.returncode == 0, first.stderr  # type: ignore[attr-defined]
    out = first.stdout  # type: ignore[attr-defined]
    wkey = parse_verifier_key(out.splitlines()[0].split(": ", 1)[1], kind=0x04)
    cosigned = out[out.index("\n", out.index("cosigned")) + 1 :]
    assert verify_checkpoint(cosigned, parse_verifier_key(log_key)).size == 2
    assert verify_cosignature(cosigned, wkey) > 0

    _submit(fleet, kit, 1)
    _wait_size(server.url, 3)
    second = witness()
    assert second.returncode == 0, second.stderr  # type: ignore[attr-defined]
    assert "cosigned" in second.stdout and "at size 3" in second.stdout  # type: ignore[attr-defined]

    # The operator rewrites history: drops the log's tree and one leaf, and lets the integrator
    # sign the rest afresh with the same key.
    stop_server(server)
    engine = create_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(delete(LogCheckpoint))
        conn.execute(delete(LogNode))
        conn.execute(delete(LogEntry).where(LogEntry.idx == 1))
        conn.execute(update(LogEntry).values(idx=None))
    engine.dispose()
    again = start_server(server.data_dir, server.database_url)
    try:
        fleet.server = again
        _submit(fleet, kit, 2)
        _wait_size(again.url, 4)
        third = run_cli(
            "log", "witness", "--url", again.url, "--log-key", log_key, "--name",
            "auditor.example/witness", "--once", "--data-dir", str(wdir), check=False,
        )  # fmt: skip
        assert third.returncode == 1, third.stdout
        assert "log SPLIT VIEW" in third.stderr and "not consistent" in third.stderr
        (alarm,) = (wdir / "witness").glob("*/alarm-*.json")
        evidence = json.loads(alarm.read_text())
        pinned = parse_verifier_key(log_key)
        old = verify_checkpoint(evidence["earlier_checkpoint"], pinned)
        new = verify_checkpoint(evidence["later_checkpoint"], pinned)
        assert (old.size, new.size) == (3, 4)
        with pytest.raises(LogProofError):  # anyone can check the proof of misbehaviour
            verify_consistency(
                3, 4, [base64.b64decode(p) for p in evidence["consistency_proof"]],
                old.root, new.root,
            )  # fmt: skip
        # And the witness cosigns that log no more.
        fourth = run_cli(
            "log", "witness", "--url", again.url, "--log-key", log_key, "--name",
            "auditor.example/witness", "--once", "--data-dir", str(wdir), check=False,
        )  # fmt: skip
        assert fourth.returncode != 0 and "split_view" in fourth.stderr
    finally:
        stop_server(again)
