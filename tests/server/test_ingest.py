"""POST /v1/snapshots: appraisal end to end, one transaction, signed results (in-process app)."""

from __future__ import annotations

from typing import Any

from server.results import verify_result
from tests.server.builders import HostKit, ago, digest_of


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
    assert sub["seq"] == 1 and sub["policy_digest"] is None


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
    ids = [f["condition_id"] for f in claims["submods"]["veu-snapshot"]["findings"]]
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
    from agent.evidence import format_timestamp

    return format_timestamp(moment)
