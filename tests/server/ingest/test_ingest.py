"""POST /v1/snapshots: appraisal end to end, one transaction, signed results (in-process app)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.results import verify_result
from tests.server.builders import HostKit, ago, digest_of
from tests.server.conftest import Fleet, LiveServer, make_fleet, start_server, stop_server


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def test_a_valid_first_snapshot_is_accepted_with_an_affirming_signed_result(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    data = kit.next_envelope()
    body = _ok(api.submit(data))
    assert body["status"] == "affirming" and body["duplicate"] is False
    claims = verify_result(body["result"], api.services.key.public_pem())
    sub = claims["submods"]["veu-snapshot"]
    assert sub["digest"] == digest_of(data) == body["digest"]
    assert sub["host_key_id"] == kit.key_id and sub["site_id"] == api.site_id
    assert sub["seq"] == 1 and sub["policy_digest"] == api.services.policy.digest


def test_the_same_envelope_twice_answers_the_stored_result_without_a_new_row(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    data = kit.next_envelope()
    first = _ok(api.submit(data))
    before = api.counts()
    second = _ok(api.submit(data))
    assert second["result"] == first["result"] and second["duplicate"] is True
    assert api.counts() == before


def test_a_chain_of_snapshots_advances_the_head_and_replaces_the_inventory(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    for _ in range(3):
        _ok(api.submit(kit.next_envelope()))
    host = api.client.get(f"/v1/hosts/{kit.key_id}", headers=api.as_auditor()).json()
    assert host["chain_head"] == {"seq": 3, "digest": kit.prev}
    assert len(host["accelerators"]) == 8 and len(host["weights"]) == 4
    assert api.counts()["inventory_accelerators"] == 8


def test_a_gap_is_accepted_with_a_warning_finding(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    _ok(api.submit(kit.next_envelope()))
    kit.seq += 2
    body = _ok(api.submit(kit.next_envelope()))
    assert body["status"] == "warning"
    claims = verify_result(body["result"], api.services.key.public_pem())
    found = claims["submods"]["veu-snapshot"]["findings"]
    # Proposed packs (the Chip Security Act: location not measured) report but do not count.
    ids = [f["condition_id"] for f in found if (f.get("pack") or {}).get("status") != "proposed"]
    assert ids == ["chain.gap"]


def test_a_fork_is_rejected_and_written_to_the_audit_log(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    _ok(api.submit(kit.next_envelope()))
    _ok(api.submit(kit.next_envelope()))
    before, audit_before = api.counts(), api.audit_count()
    response = api.submit(kit.next_envelope(advance=False, prev="f" * 64))
    assert response.status_code == 409 and response.json()["code"] == "fork"
    assert api.counts() == before and api.audit_count() == audit_before + 1


def test_a_nonce_bound_snapshot_consumes_its_nonce_once(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    challenge = api.client.post(
        "/v1/challenges", headers=kit.signed_headers("POST", "/v1/challenges")
    )
    nonce = _ok(challenge)["nonce"]
    body = _ok(api.submit(kit.next_envelope(nonce=nonce)))
    assert (
        verify_result(body["result"], api.services.key.public_pem())["submods"]["veu-snapshot"][
            "nonce"
        ]
        == nonce
    )
    response = api.submit(kit.next_envelope(nonce=nonce, advance=False))
    assert response.status_code == 409 and response.json()["code"] == "nonce_reused"


def test_late_delivered_evidence_is_accepted_with_an_info_finding(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    body = _ok(api.submit(kit.next_envelope(collected_at=_stamp(ago(hours=2)))))
    assert body["status"] == "affirming"


def test_an_admin_attest_request_reaches_the_host_at_its_next_checkin(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    quiet = _ok(api.client.get("/v1/checkin", headers=kit.signed_headers("GET", "/v1/checkin")))
    assert quiet["pending_challenge"] is None
    asked = _ok(
        api.client.post("/v1/challenges", json={"site": api.site_id}, headers=api.as_admin())
    )
    assert [c["host_id"] for c in asked["challenges"]] == [kit.key_id]
    pending = _ok(api.client.get("/v1/checkin", headers=kit.signed_headers("GET", "/v1/checkin")))
    nonce = pending["pending_challenge"]["nonce"]
    assert nonce == asked["challenges"][0]["nonce"]
    _ok(api.submit(kit.next_envelope(nonce=nonce)))
    after = _ok(api.client.get("/v1/checkin", headers=kit.signed_headers("GET", "/v1/checkin")))
    assert after["pending_challenge"] is None


def test_the_raw_envelope_comes_back_byte_for_byte(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    data = kit.next_envelope()
    digest = _ok(api.submit(data))["digest"]
    raw = api.client.get(f"/v1/snapshots/{digest}", headers=api.as_auditor())
    assert raw.status_code == 200 and raw.content == data
    res = _ok(api.client.get(f"/v1/results/{digest}", headers=api.as_auditor()))
    assert res["status"] == "affirming"


def test_metrics_count_accepted_and_rejected_snapshots(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    _ok(api.submit(kit.next_envelope()))
    api.submit(b"{}")
    text = api.client.get("/metrics").text
    assert "veu_snapshots_accepted_total 1.0" in text
    assert 'veu_snapshots_rejected_total{authenticated="false",code="bad_envelope"} 1.0' in text


def _stamp(moment: Any) -> str:
    from contract import format_timestamp

    return format_timestamp(moment)


# --------------------------------------------------------------------------- races (PostgreSQL)


@pytest.fixture
def two_workers(
    pg_database_factory: Callable[[], str], tmp_path: Path
) -> Iterator[tuple[Fleet, LiveServer]]:
    """Two `veu-server serve` processes sharing one PostgreSQL database and verifier key."""
    url = pg_database_factory()
    first = start_server(tmp_path / "data", url)
    second = start_server(tmp_path / "data", url)
    try:
        yield make_fleet(first), second
    finally:
        stop_server(first)
        stop_server(second)


def _race(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(calls))
    out: list[httpx.Response | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def _post(url: str, data: bytes) -> Callable[[], httpx.Response]:
    return lambda: httpx.post(
        f"{url}/v1/snapshots", content=data, headers={"Content-Type": "application/json"}
    )


@pytest.mark.postgres
def test_two_children_of_one_head_on_two_workers_one_wins_one_is_a_fork(
    two_workers: tuple[Fleet, LiveServer],
) -> None:
    fleet, second = two_workers
    kit = HostKit(fleet.site_id)
    fleet.enroll(kit)
    for _ in range(10):
        a = kit.next_envelope(advance=False, posture=_posture(True))
        b = kit.next_envelope(advance=False, posture=_posture(False))
        answers = _race([_post(fleet.server.url, a), _post(second.url, b)])
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 409], [r.text for r in answers]
        loser = next(r for r in answers if r.status_code == 409)
        # "fork" both when the two reach the database together (the head moved under the
        # loser) and when the loser is appraised after the winner's commit (a second child of
        # the same predecessor).
        assert loser.json()["code"] == "fork", loser.text
        winner = a if answers[0].status_code == 200 else b
        kit.seq, kit.prev = kit.seq + 1, digest_of(winner)
    page = httpx.get(
        f"{fleet.server.url}/v1/hosts/{kit.key_id}/snapshots",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {fleet.auditor_key}"},
    ).json()
    assert [s["seq"] for s in page["items"]] == list(range(10, 0, -1))


@pytest.mark.postgres
def test_the_same_envelope_on_two_workers_at_once_is_one_row_and_one_answer(
    two_workers: tuple[Fleet, LiveServer],
) -> None:
    fleet, second = two_workers
    kit = HostKit(fleet.site_id)
    fleet.enroll(kit)
    for _ in range(10):
        data = kit.next_envelope()
        answers = _race([_post(fleet.server.url, data), _post(second.url, data)])
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert answers[0].json()["result"] == answers[1].json()["result"]
    page = httpx.get(
        f"{fleet.server.url}/v1/hosts/{kit.key_id}/snapshots",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {fleet.auditor_key}"},
    ).json()
    assert len(page["items"]) == 10
    assert fleet.server.cli("audit", "verify").returncode == 0


def _posture(secure_boot: bool) -> Any:
    from contract import Posture

    return Posture(secure_boot=secure_boot, tpm_present=True)


def _stale_lookup(api: Any, monkeypatch: pytest.MonkeyPatch, kit: HostKit) -> None:
    """Make every lookup see the host's state as it is now, as a racing worker would."""
    import server.ingest
    from server.store.ingest import lookup

    with api.services.db.read() as session:
        frozen = lookup(session, (kit.key_id,), "0" * 64, None)

    def stale(session: Any, key_ids: Any, digest: str, nonce: str | None) -> Any:
        fresh = lookup(session, key_ids, digest, nonce)
        return type(fresh)(host=frozen.host, head=frozen.head, nonce=fresh.nonce, stored=None)

    monkeypatch.setattr(server.ingest, "lookup", stale)


def test_a_child_appraised_against_a_stale_head_loses_at_commit_as_a_fork(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    _stale_lookup(api, monkeypatch, kit)
    first = kit.next_envelope(advance=False, posture=_posture(True))
    second = kit.next_envelope(advance=False, posture=_posture(False))
    assert api.submit(first).status_code == 200
    before = api.counts()
    lost = api.submit(second)
    assert lost.status_code == 409 and lost.json()["code"] == "fork"
    assert api.counts() == before


def test_an_envelope_committed_by_a_racing_worker_is_answered_as_a_duplicate(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    _stale_lookup(api, monkeypatch, kit)
    data = kit.next_envelope()
    first = api.submit(data).json()
    before = api.counts()
    again = api.submit(data)
    assert again.status_code == 200 and again.json()["result"] == first["result"]
    assert again.json()["duplicate"] is True and api.counts() == before
