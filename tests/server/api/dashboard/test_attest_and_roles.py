"""Roles on the dashboard: auditors read, only admins request fresh evidence ("attest now")."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from server.store.models import Nonce
from tests.server.api.dashboard.conftest import Env


def _csrf(client: TestClient, site: str) -> str:
    page = client.get(f"/dashboard/sites/{site}").text
    found = re.search(r'data-csrf="([0-9a-f]+)"', page) or re.search(
        r'name="csrf" value="([0-9a-f]+)"', page
    )
    assert found is not None
    return found.group(1)


def test_auditor_sees_no_attest_action_and_cannot_request_it(env: Env) -> None:
    site = env.fleet.sites["us-east"]
    client = env.client("auditor")
    page = client.get(f"/dashboard/sites/{site}").text
    assert 'id="attest-now"' not in page
    token = _csrf(client, site)
    resp = client.post(f"/dashboard/sites/{site}/attest", headers={"X-CSRF-Token": token})
    assert resp.status_code == 403
    assert resp.json()["code"] == "forbidden"
    with env.svc.db.read() as s:
        assert s.query(Nonce).count() == 0


def test_attest_now_without_the_csrf_token_is_refused(env: Env) -> None:
    site = env.fleet.sites["us-east"]
    client = env.client("admin")
    resp = client.post(f"/dashboard/sites/{site}/attest")
    assert resp.status_code == 403
    assert resp.json()["code"] == "csrf"


def test_attest_now_without_a_session_is_unauthenticated(env: Env) -> None:
    site = env.fleet.sites["us-east"]
    resp = env.client(role=None).post(f"/dashboard/sites/{site}/attest")
    assert resp.status_code == 401


def test_admin_attest_now_challenges_every_active_host_and_shows_who_answered(env: Env) -> None:
    site = env.fleet.sites["us-east"]
    client = env.client("admin")
    resp = client.post(
        f"/dashboard/sites/{site}/attest", headers={"X-CSRF-Token": _csrf(client, site)}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    hosts = sorted(env.fleet.hosts["us-east"])
    assert sorted(c["host_id"] for c in body["challenges"]) == hosts
    since = body["requested_at"]
    status = client.get(f"/dashboard/sites/{site}/attest-status", params={"since": since}).json()
    assert status == {**status, "answered": 0, "total": len(hosts)}
    with env.svc.db.write() as s:
        row = s.query(Nonce).filter_by(key_id=hosts[0]).one()
        row.used, row.used_at = True, datetime.now(UTC)
    status = client.get(f"/dashboard/sites/{site}/attest-status", params={"since": since}).json()
    assert status["answered"] == 1
    answered = [h for h in status["hosts"] if h["answered"]]
    assert answered[0]["host_id"] == hosts[0] and answered[0]["answered_at"]
    # The request is in the audit log as the API route writes it.
    from server.store.models import AuditEntry

    with env.svc.db.read() as s:
        assert s.query(AuditEntry).filter_by(action="attest.requested").count() == 1


def test_auditor_can_create_and_download_a_signed_report(env: Env) -> None:
    client = env.client("auditor")
    org = env.fleet.org_id
    page = client.get(f"/dashboard/orgs/{org}").text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token is not None
    resp = client.post(
        f"/dashboard/orgs/{org}/reports",
        data={"period": "2026H1", "format": "json", "csrf": token.group(1)},
        follow_redirects=True,
    )
    assert resp.status_code == 200
    link = re.search(r'id="report-link" href="([^"]+)"', resp.text)
    sig = re.search(r'id="report-sig-link" href="([^"]+)"', resp.text)
    assert link and sig
    body = client.get(link.group(1))
    signature = client.get(sig.group(1))
    assert body.status_code == signature.status_code == 200
    from server.reports import verify_report

    assert verify_report(body.content, signature.content, env.svc.key.public)
    assert not verify_report(body.content + b" ", signature.content, env.svc.key.public)


def test_report_form_without_csrf_is_refused(env: Env) -> None:
    client = env.client("admin")
    resp = client.post(
        f"/dashboard/orgs/{env.fleet.org_id}/reports", data={"period": "2026H1", "format": "csv"}
    )
    assert resp.status_code == 403


def test_report_download_refuses_path_traversal(env: Env) -> None:
    client = env.client("admin")
    assert client.get("/dashboard/reports/..%2Fveu.sqlite3").status_code == 404
    assert client.get("/dashboard/reports/.hidden").status_code == 404


def _report_form(client: TestClient, org: str) -> dict[str, str]:
    page = client.get(f"/dashboard/orgs/{org}").text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert token is not None
    return {"period": "2026H1", "format": "csv", "csrf": token.group(1)}


def test_one_report_at_a_time_per_user_and_old_report_files_expire(env: Env) -> None:
    import os

    from server.api.dashboard.views import report_slot, reports_dir

    org = env.fleet.org_id
    auditor, admin = env.client("auditor"), env.client("admin")
    from server.store import repo

    with env.svc.db.read() as s:
        row = repo.lookup_api_key(s, env.fleet.auditor_key)
        assert row is not None
        auditor_id = row.id
    old = reports_dir(env.svc) / "old-report.csv"
    old.write_text("x")
    week_ago = datetime.now(UTC).timestamp() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    with report_slot(auditor_id) as held:
        assert held
        busy = auditor.post(f"/dashboard/orgs/{org}/reports", data=_report_form(auditor, org))
        assert busy.status_code == 429 and "Retry-After" in busy.headers
        done = admin.post(
            f"/dashboard/orgs/{org}/reports",
            data=_report_form(admin, org),
            follow_redirects=False,
        )
        assert done.status_code == 303
    assert not old.exists()
    again = auditor.post(
        f"/dashboard/orgs/{org}/reports", data=_report_form(auditor, org), follow_redirects=False
    )
    assert again.status_code == 303
