"""Who may call what: every endpoint against every kind of caller.

Callers: nobody, a wrong API key, an auditor, an admin, and an enrolled host signing its request.
Agents may only enroll, take challenges, check in and submit; auditors read; admins manage.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.builders import HostKit

CALLERS = ("none", "wrong_key", "auditor", "admin", "agent")
READ = {"none": 401, "wrong_key": 401, "auditor": 200, "admin": 200, "agent": 401}
MANAGE = {"none": 401, "wrong_key": 401, "auditor": 403, "admin": 200, "agent": 401}
PUBLIC = dict.fromkeys(CALLERS, 200)

MATRIX: list[tuple[str, str, dict[str, int]]] = [
    ("GET", "/v1/hosts", READ),
    ("GET", "/v1/hosts/{host}", READ),
    ("GET", "/v1/hosts/{host}/snapshots", READ),
    ("GET", "/v1/snapshots/{digest}", READ),
    ("GET", "/v1/results/{digest}", READ),
    ("GET", "/v1/sites", READ),
    ("POST", "/v1/hosts/{other}/revoke", MANAGE),
    ("POST", "/v1/challenges", {**MANAGE, "agent": 200}),
    ("GET", "/v1/checkin", {**dict.fromkeys(CALLERS, 401), "agent": 200}),
    ("GET", "/v1/verifier-key", PUBLIC),
    ("GET", "/healthz", PUBLIC),
    ("GET", "/metrics", PUBLIC),
]


def _call(api: Any, kit: HostKit, caller: str, method: str, path: str) -> int:
    body = b'{"host": "%s"}' % kit.key_id.encode() if path == "/v1/challenges" else b""
    headers: dict[str, str] = {"Content-Type": "application/json"} if body else {}
    if caller == "wrong_key":
        headers["Authorization"] = "Bearer veu_ak_not-a-real-key"
    elif caller == "auditor":
        headers.update(api.as_auditor())
    elif caller == "admin":
        headers.update(api.as_admin())
    elif caller == "agent":
        body = b""
        headers = kit.signed_headers(method, path, body)
    response = api.client.request(method, path, content=body or None, headers=headers)
    if response.status_code >= 400:
        assert set(response.json()) == {"code", "detail"}, response.text
    return int(response.status_code)


@pytest.mark.parametrize(("method", "template", "expected"), MATRIX, ids=[m[1] for m in MATRIX])
def test_each_caller_gets_exactly_the_access_its_role_allows(
    api: Any, method: str, template: str, expected: dict[str, int]
) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    digest = api.submit(kit.next_envelope()).json()["digest"]
    seen: dict[str, int] = {}
    for caller in CALLERS:
        other = HostKit(api.site_id)
        api.enroll(other)
        path = template.format(host=kit.key_id, digest=digest, other=other.key_id)
        seen[caller] = _call(api, kit, caller, method, path)
    assert seen == expected


def test_a_revoked_host_can_no_longer_check_in_or_submit(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    revoke = api.client.post(f"/v1/hosts/{kit.key_id}/revoke", headers=api.as_admin())
    assert revoke.status_code == 200
    checkin = api.client.get("/v1/checkin", headers=kit.signed_headers("GET", "/v1/checkin"))
    assert checkin.status_code == 403 and checkin.json()["code"] == "revoked_key"
    submit = api.submit(kit.next_envelope())
    assert submit.status_code == 403 and submit.json()["code"] == "revoked_key"


def test_a_signed_request_for_another_path_does_not_authenticate(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    headers = kit.signed_headers("POST", "/v1/challenges")
    response = api.client.get("/v1/checkin", headers=headers)
    assert response.status_code == 401 and response.json()["code"] == "bad_request_signature"


def test_a_stale_signed_request_is_refused(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    headers = kit.signed_headers("GET", "/v1/checkin", timestamp="2020-01-01T00:00:00.000000Z")
    response = api.client.get("/v1/checkin", headers=headers)
    assert response.status_code == 401 and response.json()["code"] == "stale_request"
