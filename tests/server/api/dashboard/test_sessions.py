"""Dashboard sessions end when the user signs out (a copied cookie stops working), signing out
needs the session's CSRF token, and the sign-in form carries a token of its own (login CSRF)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from server.api.dashboard import session
from tests.server.api.dashboard.conftest import Env, login_form_token


def _csrf(client: TestClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def _copy(client: TestClient, env: Env) -> TestClient:
    thief = TestClient(env.app)
    value = client.cookies.get(session.COOKIE)
    assert value is not None
    thief.cookies.set(session.COOKIE, value, path="/dashboard")
    return thief


def test_a_copied_cookie_stops_working_when_its_session_signs_out(env: Env) -> None:
    site = env.fleet.sites["us-east"]
    client = env.client("admin")
    csrf = _csrf(client, f"/dashboard/sites/{site}")
    thief = _copy(client, env)
    assert thief.get("/dashboard/", follow_redirects=False).status_code == 200
    out = client.post("/dashboard/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert thief.get("/dashboard/", follow_redirects=False).status_code == 303  # to sign-in
    attest = thief.post(f"/dashboard/sites/{site}/attest", headers={"X-CSRF-Token": csrf})
    assert attest.status_code == 401


def test_sign_out_without_the_csrf_token_is_refused_and_keeps_the_session(env: Env) -> None:
    client = env.client("auditor")
    refused = client.post("/dashboard/logout", data={"csrf": "0" * 64}, follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/dashboard/", follow_redirects=False).status_code == 200


def test_sign_in_without_the_form_token_is_refused(env: Env) -> None:
    client = env.client(role=None)
    login_form_token(client)  # the pre-session cookie is set, but the token is not sent
    resp = client.post(
        "/dashboard/login", data={"api_key": env.fleet.admin_key}, follow_redirects=False
    )
    assert resp.status_code == 403
    assert session.COOKIE not in resp.headers.get("set-cookie", "")
    # A token from another browser's form (another pre-session cookie) does not do either.
    other = env.client(role=None)
    token = login_form_token(other)
    fresh = env.client(role=None)
    resp = fresh.post(
        "/dashboard/login",
        data={"api_key": env.fleet.admin_key, "csrf": token},
        follow_redirects=False,
    )
    assert resp.status_code == 403


def test_two_sessions_of_one_key_end_separately(env: Env) -> None:
    first, second = env.client("auditor"), env.client("auditor")
    csrf = _csrf(first, "/dashboard/")
    assert first.post("/dashboard/logout", data={"csrf": csrf}).status_code == 200
    assert second.get("/dashboard/", follow_redirects=False).status_code == 200
