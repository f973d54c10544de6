"""Fixtures for verifier tests: databases on SQLite and PostgreSQL, and a live server.

``db_url`` is parametrized over a fresh SQLite file and, when ``VEU_TEST_PG_URL`` is set (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), a fresh PostgreSQL database created
for the test and dropped afterwards. Without the variable the PostgreSQL case is skipped.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server.config import normalize_database_url

PG_ENV = "VEU_TEST_PG_URL"
REPO = Path(__file__).resolve().parents[2]


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    return normalize_database_url(url) if url else None


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh PostgreSQL databases on demand; drops them all at the end of the session."""
    admin_url = _pg_admin_url()
    created: list[str] = []
    if admin_url is None:
        yield lambda: pytest.skip(f"{PG_ENV} is not set")
        return
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"veu_test_{secrets.token_hex(6)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pg_database_factory: Callable[[], str],
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'veu.sqlite3'}"
    return pg_database_factory()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir), db=self.database_url, check=check)


def run_cli(
    *args: str, db: str | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("VEU_DATABASE_URL", None)
    if db is not None and not db.startswith("sqlite"):
        full_env["VEU_DATABASE_URL"] = db
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"veu-server {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def start_server(
    data_dir: Path,
    database_url: str,
    *extra: str,
    ca_file: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> LiveServer:
    """Start `veu-server serve`; ``ca_file`` means it serves TLS (pass --tls-cert in ``extra``);
    ``env_extra`` adds to its environment (settings such as VEU_HEADER_TIMEOUT)."""
    port = free_port()
    env = dict(os.environ)
    env.pop("VEU_DATABASE_URL", None)
    env.update(env_extra or {})
    args = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    if not database_url.startswith("sqlite"):
        args += ["--database-url", database_url]
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
    verify: bool | str = str(ca_file) if ca_file else True
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify).status_code == 200:
                return LiveServer(url, data_dir, database_url, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise AssertionError(f"server did not become healthy: {log.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


@pytest.fixture
def live_server_handle(db_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """A real ``veu-server serve`` (uvicorn) on a free loopback port, SQLite or PostgreSQL:
    its URL, data directory, database URL, process and log, and ``cli()`` against it."""
    data_dir = tmp_path / "data"
    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{data_dir / 'veu.sqlite3'}"
    server = start_server(data_dir, db_url)
    try:
        yield server
    finally:
        stop_server(server)


# --------------------------------------------------------------------------- in-process app


@dataclass
class Api:
    """An app on a fresh database with an org, a site, and one admin and one auditor key."""

    client: object  # fastapi.testclient.TestClient
    services: object  # server.api.deps.Services
    site_id: str
    admin_key: str
    auditor_key: str

    @property
    def http(self) -> object:
        return self.client

    def token(self, ttl_hours: float = 1.0, site_id: str | None = None) -> str:
        from datetime import UTC, datetime, timedelta

        from server.store import repo

        svc = self.services
        with svc.db.write() as s:  # type: ignore[attr-defined]
            token, _ = repo.create_enroll_token(
                s, site_id or self.site_id, timedelta(hours=ttl_hours), datetime.now(UTC)
            )
        return token

    def enroll(self, kit: object) -> object:
        from tests.server.builders import HostKit

        assert isinstance(kit, HostKit)
        response = self.client.post("/v1/enroll", json=kit.enroll_body(self.token()))  # type: ignore[attr-defined]
        assert response.status_code == 200, response.text
        return response

    def submit(self, data: bytes) -> object:
        return self.client.post(  # type: ignore[attr-defined]
            "/v1/snapshots", content=data, headers={"Content-Type": "application/json"}
        )

    def counts(self) -> dict[str, int]:
        from server.store import repo
        from server.store.models import EVIDENCE_TABLES

        with self.services.db.read() as s:  # type: ignore[attr-defined]
            return repo.row_counts(s, EVIDENCE_TABLES)

    def audit_count(self) -> int:
        from server.store import repo

        with self.services.db.read() as s:  # type: ignore[attr-defined]
            return repo.row_counts(s, ["audit_log"])["audit_log"]

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def as_auditor(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auditor_key}"}


def seed(svc: object) -> tuple[str, str, str]:
    """Org, site, admin and auditor keys; returns (site_id, admin_key, auditor_key)."""
    from datetime import UTC, datetime

    from server.store import repo

    now = datetime.now(UTC)
    with svc.db.write() as s:  # type: ignore[attr-defined]
        repo.add_org(s, "Acme Compute", "universal", "US", None, now)
        site = repo.add_site(
            s, "Acme Compute", "Frankfurt-1", "DE", 5e6, "VEU-2026-001", False, now
        )
        admin, _ = repo.create_api_key(s, "admin", "ops", now)
        auditor, _ = repo.create_api_key(s, "auditor", "audit", now)
        register_builder_model(s, svc, now)
        return site.id, admin, auditor


def register_builder_model(session: object, svc: object, now: object) -> None:
    """The weights in builders.weights_root() are a published open-weight model: registered, so
    the policy classifies them (not controlled) and realistic snapshots judge as affirming."""
    from server.compliance import ledger
    from tests.server.builders import weight_digests

    ledger.add_model(
        session,  # type: ignore[arg-type]
        svc.policy,  # type: ignore[attr-defined]
        {
            "name": "llama-3-70b",
            "training_ops": 6.4e24,
            "published": True,
            "digests": weight_digests(),
        },
        now=now,  # type: ignore[arg-type]
        actor="test",
    )


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from server.api.app import create_app
    from server.config import Settings

    database_url = None if db_url.startswith("sqlite") else db_url
    data_dir = tmp_path / "data"
    if database_url is None:
        settings = Settings(data_dir=data_dir)
    else:
        settings = Settings(data_dir=data_dir, database_url=database_url)
    app = create_app(settings)
    svc = app.state.veu
    site_id, admin, auditor = seed(svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, svc, site_id, admin, auditor)
    svc.db.dispose()


# --------------------------------------------------------------------------- live-server helpers


@dataclass
class Fleet:
    """A live server with one org and site, an admin key and an auditor key (made by the CLI)."""

    server: LiveServer
    site_id: str
    admin_key: str
    auditor_key: str

    def token(self) -> str:
        return (
            self.server.cli("enroll-token", "create", self.site_id).stdout.strip().splitlines()[-1]
        )

    def enroll(self, kit: object) -> dict[str, object]:
        return self.enroll_with(kit, self.token())

    def enroll_with(self, kit: object, token: str) -> dict[str, object]:
        from tests.server.builders import HostKit

        assert isinstance(kit, HostKit)
        response = httpx.post(f"{self.server.url}/v1/enroll", json=kit.enroll_body(token))
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body


def make_fleet(server: LiveServer) -> Fleet:
    server.cli("org", "add", "Acme Compute", "--veu", "universal", "--hq", "US")
    site = server.cli(
        "site", "add", "Acme Compute", "Frankfurt-1", "--country", "DE", "--authorized-tpp", "5e6"
    )
    site_id = site.stdout.strip().splitlines()[-1]
    admin = server.cli("apikey", "create", "--role", "admin").stdout.strip().splitlines()[-1]
    auditor = server.cli("apikey", "create", "--role", "auditor").stdout.strip().splitlines()[-1]
    return Fleet(server, site_id, admin, auditor)


@pytest.fixture
def live_server(live_server_handle: LiveServer) -> str:
    """The base URL of a real ``veu-server serve`` on loopback (see ``live_server_handle``)."""
    return live_server_handle.url


@pytest.fixture
def fleet(live_server_handle: LiveServer) -> Fleet:
    return make_fleet(live_server_handle)
