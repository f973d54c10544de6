"""A real app (migrated SQLite file, verifier key) with the dashboard mounted and a seeded fleet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.dashboard import mount
from server.api.deps import Services
from server.config import Settings
from server.policy import PolicySet
from server.reports import load_default_policy
from tests.server.api.dashboard.seed import Fleet, seed_fleet

NOW = datetime.now(UTC)


@dataclass
class Env:
    app: FastAPI
    svc: Services
    fleet: Fleet
    policy: PolicySet
    data_dir: Path

    def client(self, role: str | None = "admin") -> TestClient:
        client = TestClient(self.app)
        if role is not None:
            key = self.fleet.admin_key if role == "admin" else self.fleet.auditor_key
            resp = sign_in(client, key)
            assert resp.status_code == 303, resp.text
        return client


def login_form_token(client: TestClient) -> str:
    """The CSRF token of a freshly loaded sign-in form (its pre-session cookie is kept)."""
    page = client.get("/dashboard/login").text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page[:300]
    return found.group(1)


def sign_in(client: TestClient, key: str, **form: str) -> Any:
    """Sign in through the form, as a browser does (load it, post it with its token)."""
    data = {"api_key": key, "csrf": login_form_token(client), **form}
    return client.post("/dashboard/login", data=data, follow_redirects=False)


@pytest.fixture(scope="session")
def policy() -> PolicySet:
    return load_default_policy()


def make_env(tmp_path: Path, policy: PolicySet, **seed: object) -> Env:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    mount(app)
    svc = app.state.veu
    fleet = seed_fleet(svc.db, policy, NOW, **seed)  # type: ignore[arg-type]
    return Env(app, svc, fleet, policy, tmp_path / "data")


@pytest.fixture
def env(tmp_path: Path, policy: PolicySet) -> Iterator[Env]:
    e = make_env(tmp_path, policy)
    yield e
    e.svc.db.dispose()
