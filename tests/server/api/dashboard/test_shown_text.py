"""What the dashboard shows of agent-controlled text, pruned envelopes, and the API's pages."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from server.store.models import Host, Snapshot
from tests.server.api.dashboard.conftest import Env

HOSTILE = "gpu-01\u202egnp.exe\x1b]52;c;QUFB\x07\u200b"


def _a_host(env: Env) -> str:
    return sorted(next(iter(env.fleet.hosts.values())))[0]


def test_bidi_and_control_characters_are_shown_as_visible_escapes(env: Env) -> None:
    host = _a_host(env)
    with env.svc.db.write() as s:
        s.execute(update(Host).where(Host.key_id == host).values(hostname=HOSTILE))
    client = env.client("auditor")
    for path in [f"/dashboard/hosts/{host}", f"/dashboard/sites/{_site_of(env, host)}"]:
        page = client.get(path).text
        for raw in ("\u202e", "\x1b", "\x07", "\u200b"):
            assert raw not in page, (path, repr(raw))
        assert "gpu-01\\u202egnp.exe\\x1b]52;c;QUFB\\x07\\u200b" in page


def _site_of(env: Env, host: str) -> str:
    return next(env.fleet.sites[name] for name, hosts in env.fleet.hosts.items() if host in hosts)


def test_a_pruned_envelope_download_says_it_was_pruned(env: Env) -> None:
    host = _a_host(env)
    with env.svc.db.write() as s:
        row = s.query(Snapshot).filter_by(key_id=host).first()
        assert row is not None
        digest = row.digest
        row.envelope, row.pruned_at = b"", datetime.now(UTC)
    response = env.client("auditor").get(f"/dashboard/snapshots/{digest}/envelope")
    assert response.status_code == 410
    assert "pruned" in response.text
    assert "attachment" not in response.headers.get("content-disposition", "")


def test_the_api_pages_that_load_scripts_from_a_cdn_are_off(env: Env) -> None:
    client = env.client(role=None)
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_the_host_page_serves_the_key_that_re_verifies_its_envelopes(env: Env) -> None:
    from contract.keys import key_id, load_public_pem

    host = _a_host(env)
    client = env.client("auditor")
    assert f"/dashboard/hosts/{host}/key.pem" in client.get(f"/dashboard/hosts/{host}").text
    pem = client.get(f"/dashboard/hosts/{host}/key.pem")
    assert pem.status_code == 200
    assert key_id(load_public_pem(pem.content)) == host
    assert env.client(role=None).get(f"/dashboard/hosts/{host}/key.pem").status_code == 401


def test_a_repeated_rejection_shows_its_count_and_last_time(env: Env) -> None:
    from server.store.models import RepeatedRejection

    host = env.fleet.hosts["over-ams"][0]
    now = datetime.now(UTC)
    with env.svc.db.write() as s:
        s.add(
            RepeatedRejection(
                key="ab" * 32,
                key_id=host,
                code="fork",
                first_seen=now,
                last_seen=now,
                last_audited=now,
                count=7,
            )
        )
    page = env.client("auditor").get(f"/dashboard/hosts/{host}").text
    assert "×7, last" in page
