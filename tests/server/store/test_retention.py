"""Retention: old raw envelopes pruned (rows, digests and results kept), old closed findings
deleted, in batches; heads and open findings never touched (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from server.cli import main
from server.store import retention
from server.store.audit import verify_audit
from server.store.compliance_models import FindingRow
from server.store.models import AuditEntry, Snapshot
from tests.server.builders import HostKit

NOW = datetime.now(UTC)


def _chain(api: Any, n: int) -> tuple[HostKit, list[str]]:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    digests = []
    for _ in range(n):
        response = api.submit(kit.next_envelope())
        assert response.status_code == 200, response.text
        digests.append(response.json()["digest"])
    return kit, digests


def _age(api: Any, digests: list[str], days: float) -> None:
    with api.services.db.write() as s:
        s.execute(
            update(Snapshot)
            .where(Snapshot.digest.in_(digests))
            .values(received_at=NOW - timedelta(days=days))
        )


def _rows(api: Any) -> dict[str, Snapshot]:
    with api.services.db.read() as s:
        return {r.digest: r for r in s.scalars(select(Snapshot))}


def _finding(closed_days_ago: float | None, opened_days_ago: float = 400) -> FindingRow:
    return FindingRow(
        scope="host",
        scope_id="h" * 64,
        site_id=None,
        org_id=None,
        condition_id="test.retention",
        subject=f"host:{closed_days_ago}",
        severity="warning",
        message="test",
        expected=None,
        seen=None,
        citation=None,
        confidence="",
        opened_at=NOW - timedelta(days=opened_days_ago),
        last_seen_at=NOW - timedelta(days=opened_days_ago),
        closed_at=None if closed_days_ago is None else NOW - timedelta(days=closed_days_ago),
        is_open=closed_days_ago is None,
    )


def test_old_envelopes_lose_their_bytes_but_keep_row_digest_and_signed_result(api: Any) -> None:
    _, digests = _chain(api, 4)
    _age(api, digests, 100)
    before = _rows(api)
    result = retention.apply(api.services.db, envelopes_days=90, findings_days=None, now=NOW)
    after = _rows(api)
    assert result.envelopes_pruned == 3  # the head (the 4th) is kept whole
    assert result.envelope_bytes_dropped == sum(before[d].size for d in digests[:3])
    for digest in digests[:3]:
        row = after[digest]
        assert row.envelope == b"" and row.pruned_at is not None
        assert row.result == before[digest].result and row.status == before[digest].status
        assert row.seq == before[digest].seq and row.size == before[digest].size
    head = after[digests[3]]
    assert head.envelope == before[digests[3]].envelope and head.pruned_at is None


def test_recent_envelopes_are_kept(api: Any) -> None:
    _, digests = _chain(api, 3)
    _age(api, digests[:1], 10)
    result = retention.apply(api.services.db, envelopes_days=30, findings_days=None, now=NOW)
    assert result.envelopes_pruned == 0
    assert all(r.pruned_at is None and r.envelope for r in _rows(api).values())


def test_pruning_runs_in_batches_and_a_second_run_finds_nothing_left(api: Any) -> None:
    _, digests = _chain(api, 6)
    _age(api, digests, 40)
    first = retention.apply(api.services.db, envelopes_days=30, findings_days=None, batch=2)
    assert first.envelopes_pruned == 5 and first.batches == 3
    again = retention.apply(api.services.db, envelopes_days=30, findings_days=None, batch=2)
    assert again.envelopes_pruned == 0
    assert retention.pruned_count(api.services.db) == 5


def test_the_chain_continues_after_its_history_was_pruned(api: Any) -> None:
    kit, digests = _chain(api, 3)
    _age(api, digests, 40)
    retention.apply(api.services.db, envelopes_days=30, findings_days=None)
    response = api.submit(kit.next_envelope())
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is False


def test_closed_findings_older_than_the_setting_are_deleted_open_ones_never(api: Any) -> None:
    with api.services.db.write() as s:
        s.add_all([_finding(200), _finding(100), _finding(10), _finding(None)])
    result = retention.apply(api.services.db, envelopes_days=None, findings_days=90, batch=1)
    assert result.findings_deleted == 2 and result.batches == 2
    with api.services.db.read() as s:
        left = sorted(s.scalars(select(FindingRow.subject).where(FindingRow.scope_id == "h" * 64)))
    assert left == ["host:10", "host:None"]


def test_each_run_is_recorded_in_the_audit_log_and_the_chain_stays_intact(api: Any) -> None:
    _, digests = _chain(api, 2)
    _age(api, digests, 40)
    retention.apply(api.services.db, envelopes_days=30, findings_days=30, now=NOW)
    with api.services.db.read() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "retention.applied")).one()
        assert '"envelopes_pruned":1' in entry.details
        assert verify_audit(s) is None


def test_negative_days_are_refused(api: Any) -> None:
    import pytest

    with pytest.raises(ValueError):
        retention.apply(api.services.db, envelopes_days=-1, findings_days=None)


def test_the_retention_apply_command_prunes_through_its_registered_parser(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from server.api.app import create_app
    from server.config import Settings
    from tests.server.conftest import seed

    data = tmp_path / "data"
    app = create_app(Settings(data_dir=data))
    svc = app.state.veu
    site_id, _, _ = seed(svc)
    kit = HostKit(site_id)
    with TestClient(app) as client:
        from tests.server.conftest import Api

        api = Api(client, svc, site_id, "", "")
        api.enroll(kit)
        digests = []
        for _ in range(3):
            response: Any = api.submit(kit.next_envelope())
            digests.append(response.json()["digest"])
        _age(api, digests, 10)
    svc.db.dispose()

    apply = ["retention", "apply", "--data-dir", str(data)]
    assert main([*apply, "--envelopes-days", "7", "--batch", "1"]) == 0
    assert main(apply) == 4  # usage

    app = create_app(Settings(data_dir=data))
    with app.state.veu.db.read() as s:
        pruned = s.scalars(select(Snapshot.digest).where(Snapshot.pruned_at.is_not(None))).all()
    app.state.veu.db.dispose()
    assert sorted(pruned) == sorted(digests[:2])


def test_the_retention_migration_upgrades_and_downgrades(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from server.store.db import make_engine
    from server.store.migrate import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade(url)

    def columns() -> set[str]:
        engine = make_engine(url)
        try:
            return {c["name"] for c in inspect(engine).get_columns("snapshots")}
        finally:
            engine.dispose()

    assert "pruned_at" in columns()
    command.downgrade(alembic_config(url), "0002")
    assert "pruned_at" not in columns()
    upgrade(url)
    assert "pruned_at" in columns()
