"""Deferred site judgement: ingest marks a host pending, settling folds it into the site total and
judges the site and its organization (SQLite and PostgreSQL).

The app here runs with the background settler and the periodic refresh off, so every test says
exactly when settling happens; one test turns the background settler on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from server.compliance import settle as compliance
from server.store import repo
from server.store.compliance_models import FindingRow, HostState, OrgState, SiteState
from tests.server.builders import HostKit, failed_collector, h100_accelerators
from tests.server.conftest import Api, seed

H100_TPP = 15_832


def _app(db_url: str, tmp_path: Path, **settings: Any) -> Any:
    from server.api.app import create_app
    from server.config import Settings

    database_url = None if db_url.startswith("sqlite") else db_url
    options: dict[str, Any] = {"refresh_interval_s": 0.0, "settle_interval_s": 0.0} | settings
    return create_app(Settings(data_dir=tmp_path / "data", database_url=database_url, **options))


@pytest.fixture
def quiet(db_url: str, tmp_path: Path) -> Iterator[Api]:
    """An app whose sites settle only when a test (or a compliance read) says so."""
    from fastapi.testclient import TestClient

    app = _app(db_url, tmp_path)
    svc = app.state.veu
    site_id, admin, auditor = seed(svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, svc, site_id, admin, auditor)
    svc.db.dispose()


def enrolled(api: Api, index: int, site_id: str | None = None) -> HostKit:
    kit = HostKit(site_id or api.site_id, index=index)
    response = api.client.post(  # type: ignore[attr-defined]
        "/v1/enroll", json=kit.enroll_body(api.token(site_id=site_id))
    )
    assert response.status_code == 200, response.text
    return kit


def submit(api: Api, kit: HostKit, **over: Any) -> None:
    response = api.submit(kit.next_envelope(**over))
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]


def site_aggregate(api: Api, site_id: str | None = None) -> dict[str, Any] | None:
    with api.services.db.read() as s:  # type: ignore[attr-defined]
        state = s.get(SiteState, site_id or api.site_id)
        return json.loads(state.aggregate) if state is not None else None


def host_rows(api: Api) -> dict[str, HostState]:
    with api.services.db.read() as s:  # type: ignore[attr-defined]
        return {h.key_id: h for h in s.scalars(select(HostState))}


def test_ingest_marks_the_host_pending_and_settling_folds_it_in(quiet: Api) -> None:
    kit = enrolled(quiet, 0)
    submit(quiet, kit)
    assert site_aggregate(quiet) is None  # the site was not touched by ingest
    (row,) = host_rows(quiet).values()
    assert row.pending and row.applied is None
    assert quiet.services.settle() == 1  # type: ignore[attr-defined]
    agg = site_aggregate(quiet)
    assert agg is not None and (agg["hosts"], agg["accelerators"]) == (1, 8)
    assert agg["tpp_3a090"] == 8 * H100_TPP
    (row,) = host_rows(quiet).values()
    assert not row.pending and row.applied == row.contribution
    assert quiet.services.settle() == 0  # type: ignore[attr-defined]  # nothing left


def test_several_snapshots_between_settles_are_folded_exactly_once(quiet: Api) -> None:
    a, b = enrolled(quiet, 0), enrolled(quiet, 1)
    submit(quiet, a)
    submit(quiet, b)
    quiet.services.settle()  # type: ignore[attr-defined]
    submit(quiet, a, accelerators=h100_accelerators(0)[:7])
    submit(quiet, a, accelerators=h100_accelerators(0)[:6])
    submit(quiet, b, accelerators=h100_accelerators(1)[:5])
    agg = site_aggregate(quiet)
    assert agg is not None and agg["accelerators"] == 16  # still the settled figure
    quiet.services.settle()  # type: ignore[attr-defined]
    agg = site_aggregate(quiet)
    assert agg is not None
    assert (agg["hosts"], agg["accelerators"], agg["tpp_3a090"]) == (2, 11, 11 * H100_TPP)


def test_a_compliance_read_settles_before_it_answers(quiet: Api) -> None:
    kit = enrolled(quiet, 0)
    submit(quiet, kit)
    response = quiet.client.get(  # type: ignore[attr-defined]
        f"/v1/sites/{quiet.site_id}/status", headers=quiet.as_auditor()
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["accelerators"], body["hosts_reporting"], body["status"]) == (8, 1, "affirming")
    assert not next(iter(host_rows(quiet).values())).pending


def test_a_revoked_host_leaves_the_totals_when_its_site_settles(quiet: Api) -> None:
    a, b = enrolled(quiet, 0), enrolled(quiet, 1)
    submit(quiet, a)
    submit(quiet, b)
    quiet.services.settle()  # type: ignore[attr-defined]
    response = quiet.client.post(  # type: ignore[attr-defined]
        f"/v1/hosts/{a.key_id}/revoke", headers=quiet.as_admin()
    )
    assert response.status_code == 200, response.text
    row = host_rows(quiet)[a.key_id]
    assert row.revoked and row.pending and row.accelerators == 0
    quiet.services.settle()  # type: ignore[attr-defined]
    agg = site_aggregate(quiet)
    assert agg is not None and (agg["hosts"], agg["accelerators"]) == (1, 8)
    assert a.key_id not in host_rows(quiet)


def test_a_revoked_host_never_settled_leaves_no_trace(quiet: Api) -> None:
    a = enrolled(quiet, 0)
    submit(quiet, a)
    quiet.client.post(f"/v1/hosts/{a.key_id}/revoke", headers=quiet.as_admin())  # type: ignore[attr-defined]
    quiet.services.settle()  # type: ignore[attr-defined]
    agg = site_aggregate(quiet)
    assert agg is not None and (agg["hosts"], agg["accelerators"]) == (0, 0)


def test_the_organization_total_is_the_sum_of_its_sites(quiet: Api) -> None:
    now = datetime.now(UTC)
    with quiet.services.db.write() as s:  # type: ignore[attr-defined]
        paris = repo.add_site(s, "Acme Compute", "Paris-1", "FR", 5e6, None, False, now).id
    submit(quiet, enrolled(quiet, 0))
    submit(quiet, enrolled(quiet, 1, paris))
    submit(quiet, enrolled(quiet, 2, paris), accelerators=h100_accelerators(2)[:4])
    quiet.services.settle()  # type: ignore[attr-defined]
    with quiet.services.db.read() as s:  # type: ignore[attr-defined]
        (state,) = s.scalars(select(OrgState)).all()
        totals = json.loads(state.aggregate)["tpp_by_country"]
        assert compliance.org_aggregate(s, state.org_id).tpp_by_country == totals
    assert totals == {"DE": 8 * H100_TPP, "FR": 12 * H100_TPP}


def _host_findings(api: Api, key_id: str) -> list[FindingRow]:
    with api.services.db.read() as s:  # type: ignore[attr-defined]
        return list(
            s.scalars(
                select(FindingRow)
                .where(FindingRow.scope == "host", FindingRow.scope_id == key_id)
                .where(FindingRow.pack_status != "proposed")  # location not measured: by design
                .order_by(FindingRow.id)
            )
        )


def test_an_unchanged_set_of_host_findings_only_moves_last_seen(quiet: Api) -> None:
    kit = enrolled(quiet, 0)
    submit(quiet, kit, errors=[failed_collector()])
    (first,) = _host_findings(quiet, kit.key_id)
    submit(quiet, kit, errors=[failed_collector()])
    (again,) = _host_findings(quiet, kit.key_id)
    assert again.id == first.id and again.is_open
    assert again.last_seen_at >= first.last_seen_at and again.opened_at == first.opened_at
    submit(quiet, kit)  # the collector works again: the finding closes
    (closed,) = _host_findings(quiet, kit.key_id)
    assert closed.id == first.id and not closed.is_open and closed.closed_at is not None


def test_findings_from_before_the_findings_key_existed_are_synchronized(quiet: Api) -> None:
    kit = enrolled(quiet, 0)
    submit(quiet, kit, errors=[failed_collector()])
    with quiet.services.db.write() as s:  # type: ignore[attr-defined]
        s.execute(text("UPDATE host_state SET findings_key = NULL"))
    submit(quiet, kit)
    (row,) = _host_findings(quiet, kit.key_id)
    assert not row.is_open


def test_the_background_settler_judges_new_evidence_without_a_read(
    db_url: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    app = _app(db_url, tmp_path, settle_interval_s=0.05)
    svc = app.state.veu
    site_id, admin, auditor = seed(svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client, svc, site_id, admin, auditor)
        submit(api, enrolled(api, 0))
        deadline = time.monotonic() + 30  # a bound on waiting, not a speed assertion
        while (agg := site_aggregate(api)) is None or agg["hosts"] == 0:
            assert time.monotonic() < deadline, "the background settler never ran"
            time.sleep(0.05)
    svc.db.dispose()
    assert agg["accelerators"] == 8


@pytest.mark.postgres
def test_a_site_being_settled_elsewhere_is_skipped_not_waited_for(quiet: Api) -> None:
    if quiet.services.db.is_sqlite:  # type: ignore[attr-defined]
        pytest.skip("SQLite has one writer at a time: nothing to skip")
    svc: Any = quiet.services
    submit(quiet, enrolled(quiet, 0))
    svc.settle()  # the site's state row exists from now on (its first creation waits instead)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with svc.db.write() as s:
            compliance.settle_site(s, svc.policy, quiet.site_id, svc.now(), svc.compliance)
            holding.set()
            release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert holding.wait(30)
        submit(quiet, enrolled(quiet, 1))  # ingest is not blocked by the site lock
        assert svc.settle(skip_locked=True) == 0  # busy elsewhere: skipped
    finally:
        release.set()
        worker.join(30)
    assert svc.settle(skip_locked=True) == 1  # the new host, now that the lock is free
    agg = site_aggregate(quiet)
    assert agg is not None and agg["hosts"] == 2


def test_settling_an_unknown_site_is_an_error_and_settle_pending_goes_on(quiet: Api) -> None:
    svc: Any = quiet.services
    with svc.db.write() as s, pytest.raises(LookupError):
        compliance.settle_site(s, svc.policy, "site_nope", svc.now(), svc.compliance)
    assert svc.settle() == 0


def test_the_migration_marks_existing_contributions_as_already_in_the_site_total(
    db_url: str,
) -> None:
    """Rows folded in by the old per-snapshot update get ``applied = contribution``, so the first
    settle after the upgrade does not count them twice; downgrade and upgrade again work."""
    from alembic import command
    from sqlalchemy import inspect

    from server.store.db import make_engine
    from server.store.migrate import alembic_config, upgrade

    upgrade(db_url, "0003")
    engine = make_engine(db_url)
    try:
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO organizations (id, name, veu, hq_country, created_at) "
                    "VALUES ('org_1', 'Acme', 'universal', 'US', :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO sites (id, org_id, name, country, authorized_tpp, test_site, "
                    "created_at) VALUES ('site_1', 'org_1', 'F1', 'DE', 1e6, false, :now)"
                ),
                {"now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO hosts (key_id, public_key, site_id, status, facts, enrolled_at) "
                    "VALUES ('k1', :pk, 'site_1', 'active', '{}', :now)"
                ),
                {"pk": b"\0" * 32, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO host_state (key_id, site_id, org_id, contribution, collected_at,"
                    " status, snapshot_digest, accelerators, tpp) VALUES ('k1', 'site_1', "
                    "'org_1', '{\"c\": 1}', :now, 'affirming', 'd', 8, 100)"
                ),
                {"now": now},
            )
        upgrade(db_url)
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT applied, pending, revoked, findings_key FROM host_state")
            ).one()
        assert tuple(row) == ('{"c": 1}', False, False, None)
        command.downgrade(alembic_config(db_url), "0003")
        assert "applied" not in {c["name"] for c in inspect(engine).get_columns("host_state")}
        upgrade(db_url)
        assert "pending" in {c["name"] for c in inspect(engine).get_columns("host_state")}
    finally:
        engine.dispose()


def test_a_site_that_fails_to_settle_stays_pending_and_the_others_go_on(
    quiet: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    svc: Any = quiet.services
    now = datetime.now(UTC)
    with svc.db.write() as s:
        paris = repo.add_site(s, "Acme Compute", "Paris-1", "FR", 5e6, None, False, now).id
    submit(quiet, enrolled(quiet, 0))
    submit(quiet, enrolled(quiet, 1, paris))
    real = compliance.settle_site

    def failing(session: Any, policy: Any, site_id: str, *args: Any, **kw: Any) -> Any:
        if site_id == paris:
            raise RuntimeError("deadlock detected")
        return real(session, policy, site_id, *args, **kw)

    monkeypatch.setattr(compliance, "settle_site", failing)
    with caplog.at_level("ERROR", logger="veu.compliance"):
        assert svc.settle() == 1
    assert "settling site" in caplog.text and paris in caplog.text
    response = quiet.client.get(  # type: ignore[attr-defined]
        f"/v1/sites/{paris}/status", headers=quiet.as_auditor()
    )
    assert response.status_code == 200  # the read still answers, with the last settled state
    monkeypatch.setattr(compliance, "settle_site", real)
    assert svc.settle() == 1  # the failed site is still pending, and settles now
    agg = site_aggregate(quiet, paris)
    assert agg is not None and agg["hosts"] == 1


def test_a_contribution_replaced_while_its_site_settles_stays_pending(
    quiet: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest that lands between settling's read and its final mark: what was folded is
    recorded as ``applied`` and the row stays pending, so the next settle folds the rest."""
    svc: Any = quiet.services
    kit = enrolled(quiet, 0)
    submit(quiet, kit)
    svc.settle()
    submit(quiet, kit, accelerators=h100_accelerators(0)[:6])  # pending: 8 -> 6
    with svc.db.read() as s:
        six = s.get(HostState, kit.key_id).contribution
    four = six.replace('"nvidia-h100-sxm": [6, ', '"nvidia-h100-sxm": [4, ').replace(
        str(6 * H100_TPP), str(4 * H100_TPP)
    )
    assert four != six
    real = compliance._judge_org

    def ingest_meanwhile(session: Any, *args: Any) -> None:
        real(session, *args)
        session.execute(
            text("UPDATE host_state SET contribution = :c WHERE key_id = :k"),
            {"c": four, "k": kit.key_id},
        )

    monkeypatch.setattr(compliance, "_judge_org", ingest_meanwhile)
    assert svc.settle() == 1
    agg = site_aggregate(quiet)
    assert agg is not None and agg["accelerators"] == 6  # what was read was folded
    row = host_rows(quiet)[kit.key_id]
    assert row.pending and row.applied == six and row.contribution == four
    monkeypatch.setattr(compliance, "_judge_org", real)
    svc.settle()
    agg = site_aggregate(quiet)
    assert agg is not None and agg["accelerators"] == 4 and agg["tpp_3a090"] == 4 * H100_TPP
    assert not host_rows(quiet)[kit.key_id].pending
