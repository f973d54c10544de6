"""The HTTP surface: JSON errors everywhere, pagination, OpenAPI, health, verifier key."""

from __future__ import annotations

from typing import Any

from contract.keys import key_id, load_public_pem
from tests.server.builders import HostKit


def test_unknown_paths_and_methods_answer_json_errors(api: Any) -> None:
    missing = api.client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = api.client.delete("/v1/snapshots")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


def test_invalid_request_bodies_answer_422_with_a_stable_code(api: Any) -> None:
    response = api.client.post("/v1/enroll", json={"token": 5})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert "Traceback" not in response.text


def test_openapi_describes_the_v1_endpoints(api: Any) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/enroll", "/v1/challenges", "/v1/snapshots", "/v1/hosts", "/v1/sites"):
        assert path in paths


def test_the_verifier_key_is_public_and_matches_its_key_id(api: Any) -> None:
    body = api.client.get("/v1/verifier-key").json()
    assert body["alg"] == "EdDSA"
    assert key_id(load_public_pem(body["public_key"].encode())) == body["key_id"]


def test_healthz_answers_ok(api: Any) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_host_lists_are_paginated_with_a_cursor(api: Any) -> None:
    kits = [HostKit(api.site_id, index=i) for i in range(5)]
    for kit in kits:
        api.enroll(kit)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/hosts", params=params, headers=api.as_auditor()).json()
        seen += [h["host_id"] for h in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(k.key_id for k in kits)


def test_host_snapshots_are_listed_newest_first_across_pages(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    for _ in range(3):
        assert api.submit(kit.next_envelope()).status_code == 200
    url = f"/v1/hosts/{kit.key_id}/snapshots"
    first = api.client.get(url, params={"limit": 2}, headers=api.as_auditor()).json()
    assert [s["seq"] for s in first["items"]] == [3, 2]
    rest = api.client.get(
        url, params={"limit": 2, "cursor": first["next_cursor"]}, headers=api.as_auditor()
    ).json()
    assert [s["seq"] for s in rest["items"]] == [1] and rest["next_cursor"] is None


def test_a_bad_cursor_is_a_400_not_a_crash(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    response = api.client.get(
        f"/v1/hosts/{kit.key_id}/snapshots", params={"cursor": "x'; --"}, headers=api.as_auditor()
    )
    assert response.status_code == 400 and response.json()["code"] == "bad_cursor"


def test_sites_are_listed_for_auditors(api: Any) -> None:
    items = api.client.get("/v1/sites", headers=api.as_auditor()).json()["items"]
    assert [(s["site_id"], s["country"]) for s in items] == [(api.site_id, "DE")]


def test_an_admin_attest_request_for_an_unknown_host_is_404(api: Any) -> None:
    response = api.client.post("/v1/challenges", json={"host": "0" * 64}, headers=api.as_admin())
    assert response.status_code == 404 and response.json()["code"] == "unknown_host"


def test_an_admin_attest_request_needs_exactly_one_target(api: Any) -> None:
    response = api.client.post("/v1/challenges", json={}, headers=api.as_admin())
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"


def test_a_host_that_hoards_challenges_is_told_to_slow_down(api: Any) -> None:
    from server.store.repo import MAX_OPEN_NONCES

    kit = HostKit(api.site_id)
    api.enroll(kit)
    for _ in range(MAX_OPEN_NONCES):
        ok = api.client.post("/v1/challenges", headers=kit.signed_headers("POST", "/v1/challenges"))
        assert ok.status_code == 200
    refused = api.client.post(
        "/v1/challenges", headers=kit.signed_headers("POST", "/v1/challenges")
    )
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_challenges"
    assert refused.headers["retry-after"] == "60"


def test_the_live_server_fixture_serves_the_api_on_loopback(live_server: str) -> None:
    import httpx

    assert live_server.startswith("http://127.0.0.1:")
    assert httpx.get(f"{live_server}/healthz").json() == {"status": "ok"}
