"""POST /v1/enroll: a single-use, expiring token plus proof of the private key registers a host."""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.keys import load_public_pem
from tests.server.builders import HostKit


def test_enrollment_returns_the_site_and_the_verifier_key(api: Any) -> None:
    kit = HostKit(api.site_id)
    body = api.client.post("/v1/enroll", json=kit.enroll_body(api.token())).json()
    assert body["host_id"] == body["key_id"] == kit.key_id
    assert body["site_id"] == api.site_id and body["site_name"] == "Frankfurt-1"
    assert body["status"] == "active"
    assert body["verifier_key_id"] == api.services.key.key_id
    load_public_pem(body["verifier_key"].encode())


def test_a_used_token_cannot_enroll_a_second_host(api: Any) -> None:
    token = api.token()
    assert api.client.post("/v1/enroll", json=HostKit(api.site_id).enroll_body(token)).is_success
    again = api.client.post("/v1/enroll", json=HostKit(api.site_id).enroll_body(token))
    assert again.status_code == 401 and again.json()["code"] == "token_used"


def test_an_expired_token_is_refused(api: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from server.store.models import EnrollToken

    token = api.token()
    with api.services.db.write() as s:
        for row in s.query(EnrollToken):
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    response = api.client.post("/v1/enroll", json=HostKit(api.site_id).enroll_body(token))
    assert response.status_code == 401 and response.json()["code"] == "token_expired"


def test_an_unknown_token_is_refused(api: Any) -> None:
    response = api.client.post("/v1/enroll", json=HostKit(api.site_id).enroll_body("veu_et_nope"))
    assert response.status_code == 401 and response.json()["code"] == "invalid_token"


def test_a_proof_by_another_key_is_refused_and_the_token_survives(api: Any) -> None:
    kit, other = HostKit(api.site_id), Ed25519PrivateKey.generate()
    token = api.token()
    forged = base64.b64encode(other.sign(b"anything")).decode()
    response = api.client.post("/v1/enroll", json=kit.enroll_body(token, proof=forged))
    assert response.status_code == 401 and response.json()["code"] == "bad_proof"
    assert api.client.post("/v1/enroll", json=kit.enroll_body(token)).is_success


def test_an_enrolled_key_cannot_enroll_again(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    again = api.client.post("/v1/enroll", json=kit.enroll_body(api.token()))
    assert again.status_code == 409 and again.json()["code"] == "already_enrolled"


def test_a_public_key_that_is_not_32_bytes_is_refused(api: Any) -> None:
    kit = HostKit(api.site_id)
    body = kit.enroll_body(api.token(), public_key=base64.b64encode(b"x" * 31).decode())
    response = api.client.post("/v1/enroll", json=body)
    assert response.status_code == 400 and response.json()["code"] == "bad_public_key"


def test_an_agent_chain_head_carried_into_enrollment_continues_the_chain(api: Any) -> None:
    kit = HostKit(api.site_id, seq=7, prev="a" * 64)
    body = kit.enroll_body(api.token(), chain_head={"seq": 7, "digest": "a" * 64})
    assert api.client.post("/v1/enroll", json=body).is_success
    accepted = api.submit(kit.next_envelope())
    assert accepted.status_code == 200 and accepted.json()["status"] == "affirming"


def test_enrollment_is_recorded_in_the_audit_log(api: Any) -> None:
    before = api.audit_count()
    api.enroll(HostKit(api.site_id))
    assert api.audit_count() == before + 2  # token created, host enrolled
