"""Crash safety of the log: SIGKILL a real ``veu-server serve`` while its integrator works
through a backlog, restart it, and check that no leaf was lost, every leaf has one index, and
every checkpoint signed before and after the crash is consistent with the next."""

from __future__ import annotations

import base64
import itertools
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from contract.tlog import leaf_hash, parse_verifier_key, verify_checkpoint, verify_consistency
from server.log.merkle import Tree
from server.store.log_models import LogCheckpoint, LogEntry
from tests.server.conftest import start_server, stop_server

pytestmark = pytest.mark.slow

LEAVES = 120_000


def _checkpoint_size(url: str) -> int:
    r = httpx.get(f"{url}/log/checkpoint", timeout=10)
    return int(r.text.split("\n")[1]) if r.status_code == 200 else -1


def _wait(predicate: object, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_integration_loses_no_leaf_and_stays_consistent(
    db_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{data_dir / 'veu.sqlite3'}"
    server = start_server(data_dir, db_url)  # migrates; signs the empty tree
    _wait(lambda: _checkpoint_size(server.url) == 0, "the empty checkpoint")
    key = parse_verifier_key(httpx.get(f"{server.url}/v1/log/key").json()["verifier_key"])
    stop_server(server)

    engine = create_engine(db_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for start in range(0, LEAVES, 10_000):
            conn.execute(
                LogEntry.__table__.insert(),
                [
                    {
                        "kind": "test",
                        "envelope_digest": None,
                        "data": f"leaf {i}".encode(),
                        "created_at": now,
                    }
                    for i in range(start, start + 10_000)
                ],
            )

    server = start_server(data_dir, db_url)
    _wait(lambda: _checkpoint_size(server.url) > 0, "a first checkpoint of the backlog")
    os.kill(server.process.pid, signal.SIGKILL)  # the integrator is at once in its next round
    server.process.wait(timeout=10)
    with engine.connect() as conn:
        at_crash = conn.execute(select(func.max(LogCheckpoint.size))).scalar_one()
        integrated = conn.execute(
            select(func.count()).select_from(LogEntry).where(LogEntry.idx.is_not(None))
        ).scalar_one()
        total = conn.execute(select(func.count()).select_from(LogEntry)).scalar_one()
    assert 0 < at_crash < LEAVES, "the crash should come mid-backlog"
    assert integrated == at_crash  # a round is all or nothing: no index without its checkpoint
    assert total == LEAVES

    server = start_server(data_dir, db_url)
    try:
        _wait(lambda: _checkpoint_size(server.url) == LEAVES, "the whole backlog integrated")
        with engine.connect() as conn:
            cps = conn.execute(select(LogCheckpoint).order_by(LogCheckpoint.size)).all()
            rows = conn.execute(select(LogEntry.idx, LogEntry.data).order_by(LogEntry.idx)).all()
        assert [r.idx for r in rows] == list(range(LEAVES))
        assert at_crash in [c.size for c in cps]
        for a, b in itertools.pairwise(cps):
            assert verify_checkpoint(b.note, key).root == bytes(b.root)
            r = httpx.get(
                f"{server.url}/v1/log/proof/consistency",
                params={"size1": a.size, "size2": b.size},
                timeout=30,
            )
            proof = [base64.b64decode(x) for x in r.json()["proof"]]
            verify_consistency(a.size, b.size, proof, bytes(a.root), bytes(b.root))
        tree = Tree()
        for r in rows:
            tree.append(leaf_hash(bytes(r.data)))
        assert tree.root() == bytes(cps[-1].root)
    finally:
        stop_server(server)
        engine.dispose()
