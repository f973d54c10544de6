"""``veu-server log verify|integrate|key``: the whole log against the database, the first
discrepancy named (a leaf deleted, rewritten or out of step with its row, a node or checkpoint
tampered with), and the migration's backfill agreeing with what ingest writes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, update

from contract.tlog import parse_verifier_key, verify_checkpoint
from server.cli import main
from server.store.log_models import LogCheckpoint, LogEntry, LogNode
from server.store.migrate import alembic_config
from server.store.models import Snapshot
from tests.server.builders import HostKit, digest_of


@pytest.fixture(autouse=True)
def _no_background_integrator(api: Any) -> None:
    api.services.integrator.stop()
    api.services.integrator = None


def _cli(api: Any, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    settings = api.services.settings
    flags = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        flags += ["--database-url", settings.database_url]
    code = main([*args, *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def _fill(api: Any, n: int = 5) -> list[str]:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    digests = []
    for _ in range(n):
        data = kit.next_envelope()
        assert api.submit(data).status_code == 200
        digests.append(digest_of(data))
    return digests


def test_an_intact_log_verifies(api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(api)
    code, out, _ = _cli(api, capsys, "log", "integrate")
    assert code == 0 and "checkpoint of size 5" in out
    code, out, _ = _cli(api, capsys, "log", "key")
    key = parse_verifier_key(out.strip())
    assert verify_checkpoint(api.services.log.latest().note, key).size == 5
    code, out, err = _cli(api, capsys, "log", "verify")
    assert code == 0, err
    assert "log intact: 5 leaves (5 accepted snapshots" in out and "latest of size 5" in out


def _tamper(api: Any, stmt: Any) -> None:
    with api.services.db.write() as s:
        s.execute(stmt)


CASES: list[tuple[str, Callable[[list[str]], Any], str]] = [
    (
        "a pending leaf deleted",
        lambda d: delete(LogEntry).where(LogEntry.envelope_digest == d[5]),
        "has no leaf in the log",
    ),
    (
        "an integrated leaf rewritten",
        lambda d: update(LogEntry).where(LogEntry.idx == 2).values(data=b'{"v":1}'),
        "the stored hash of leaf 2 is not the hash of its entry",
    ),
    (
        "a row's status rewritten (not in the leaf: no discrepancy)",
        lambda d: update(Snapshot).where(Snapshot.digest == d[1]).values(status="warning"),
        "",
    ),
    (
        "a row's signed result rewritten",
        lambda d: update(Snapshot).where(Snapshot.digest == d[1]).values(result="forged"),
        "does not match its row",
    ),
    (
        "an interior node tampered",
        lambda d: (
            update(LogNode).where(LogNode.level == 1, LogNode.idx == 1).values(hash=b"\x00" * 32)
        ),
        "the stored node (1, 1) is not the hash of its children",
    ),
    (
        "a checkpoint's root rewritten",
        lambda d: update(LogCheckpoint).where(LogCheckpoint.size == 5).values(root=b"\x02" * 32),
        "checkpoint of size 5",
    ),
    (
        "a leaf's index removed",
        lambda d: update(LogEntry).where(LogEntry.idx == 4).values(idx=None),
        "an integration was not all or nothing",
    ),
]


@pytest.mark.parametrize(("what", "stmt", "message"), CASES, ids=[c[0] for c in CASES])
def test_the_first_discrepancy_is_named(
    api: Any,
    capsys: pytest.CaptureFixture[str],
    what: str,
    stmt: Callable[[list[str]], Any],
    message: str,
) -> None:
    digests = _fill(api, 5)
    assert _cli(api, capsys, "log", "integrate")[0] == 0
    digests += _fill(api, 1)  # one more, pending
    _tamper(api, stmt(digests))
    code, out, err = _cli(api, capsys, "log", "verify")
    if not message:
        assert code == 0, err
        return
    assert code == 1, out
    assert "log BROKEN" in err and message in err


def test_an_orphan_leaf_is_named(api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    digests = _fill(api, 2)
    _tamper(api, delete(Snapshot).where(Snapshot.digest == digests[1]))
    code, _, err = _cli(api, capsys, "log", "verify")
    assert code == 1 and f"accepted leaf for {digests[1]}" in err


def test_the_upgrade_backfills_a_leaf_for_every_snapshot_already_accepted(
    api: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(api, 4)
    url = api.services.settings.resolved_database_url()
    api.services.db.dispose()
    cfg = alembic_config(url)
    command.downgrade(cfg, "0006")
    command.upgrade(cfg, "head")
    code, _, err = _cli(api, capsys, "log", "integrate")
    assert code == 0, err
    code, out, err = _cli(api, capsys, "log", "verify")
    assert code == 0, err
    assert "4 accepted snapshots" in out


def test_a_readable_log_key_is_refused(api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path: Path = api.services.settings.log_key_path
    os.chmod(path, 0o644)
    code, _, err = _cli(api, capsys, "log", "verify")
    assert code == 4 and "error[log_key_permissions]" in err and "chmod 600" in err
    assert "Traceback" not in err
