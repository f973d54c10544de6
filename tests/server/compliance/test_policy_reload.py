"""A policy reload reaches every worker: ``POST /v1/policy/reload`` and ``SIGHUP`` to ``serve``.

Each test edits a copied pack (``VEU_POLICIES_DIR``) under a real ``veu-server serve``, reloads,
and checks that the signed results name the new digest. With ``--workers 2`` on PostgreSQL the
snapshots are sent over fresh connections until each worker has answered one (the worker behind
a connection is found from /proc, as in test_workers.py), after every worker reported the new
digest in ``GET /v1/policy``. A process that cannot load the recorded packs keeps the old ones
and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.results import verify_result
from server.config import shipped_policies_dir
from server.results import load_or_create_key
from tests.server.builders import HostKit
from tests.server.conftest import Fleet, LiveServer, make_fleet, start_server, stop_server

PACK = "ai-diffusion-2025"
JSON = {"Content-Type": "application/json"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dest = tmp_path / "policies"
    shutil.copytree(shipped_policies_dir(), dest)
    monkeypatch.setenv("VEU_POLICIES_DIR", str(dest))
    monkeypatch.setenv("VEU_POLICY_CHECK_INTERVAL", "0.5")
    return dest


def _edit_pack(policies: Path, version: str) -> None:
    path = policies / PACK / "pack.yaml"
    text = path.read_text()
    start = text.index('version: "')
    end = text.index('"', start + len('version: "'))
    path.write_text(text[:start] + f'version: "{version}' + text[end:])


@contextlib.contextmanager
def _serve(tmp_path: Path, database_url: str, *extra: str) -> Iterator[Fleet]:
    data_dir = tmp_path / "data"
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{data_dir / 'veu.sqlite3'}"
    server = start_server(data_dir, database_url, *extra)
    try:
        yield make_fleet(server)
    finally:
        stop_server(server)


def _digest_of_result(fleet: Fleet, body: dict[str, Any]) -> str:
    pem = load_or_create_key(fleet.server.data_dir / "verifier.key").public_pem()
    claims = verify_result(body["result"], pem)
    digest: str = claims["submods"]["veu-snapshot"]["policy_digest"]
    return digest


def _policy(client: httpx.Client, fleet: Fleet) -> httpx.Response:
    r = client.get("/v1/policy", headers={"Authorization": f"Bearer {fleet.auditor_key}"})
    assert r.status_code == 200, r.text
    return r


def _reload(fleet: Fleet) -> dict[str, Any]:
    r = httpx.post(
        f"{fleet.server.url}/v1/policy/reload",
        headers={"Authorization": f"Bearer {fleet.admin_key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _until(check: Callable[[], bool], what: str | Callable[[], str], seconds: float = 90) -> None:
    """Poll until ``check`` holds; the deadline only stops a test that would hang."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"not within {seconds:.0f} s: {what if isinstance(what, str) else what()}")


def _worker_pids(server: LiveServer) -> list[int]:
    import psutil

    pids = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("spawn_main" in part for part in child.cmdline()):
                pids.append(child.pid)
    return pids


def _served_by(server: LiveServer, response: httpx.Response) -> int:
    """The worker process holding the (still open, keep-alive) connection of ``response``."""
    import psutil

    port = int(server.url.rsplit(":", 1)[1])
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    for pid in _worker_pids(server):
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.laddr.port == port and c.raddr and c.raddr.port == client_port:
                return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def _each_worker(
    fleet: Fleet, pids: list[int], call: Callable[[httpx.Client], httpx.Response]
) -> dict[int, httpx.Response]:
    """``call`` over fresh connections until every worker in ``pids`` answered once."""
    answers: dict[int, httpx.Response] = {}
    for _ in range(400):
        with httpx.Client(base_url=fleet.server.url, timeout=60) as client:
            response = call(client)
            pid = _served_by(fleet.server, response)
        answers.setdefault(pid, response)
        if set(answers) == set(pids):
            return answers
    raise AssertionError(f"fresh connections reached only workers {sorted(answers)} of {pids}")


def _reload_reaches_both_workers(fleet: Fleet, policies: Path, reload: Callable[[], None]) -> None:
    pids = _worker_pids(fleet.server)
    assert len(pids) == 2
    before = {
        pid: r.json()["digest"]
        for pid, r in _each_worker(fleet, pids, lambda c: _policy(c, fleet)).items()
    }
    assert len(set(before.values())) == 1, before
    old = next(iter(before.values()))
    _edit_pack(policies, "9.9.9")
    reload()
    state: dict[int, str] = {}

    def both_new() -> bool:
        seen = _each_worker(fleet, pids, lambda c: _policy(c, fleet))
        state.update({pid: r.json()["digest"] for pid, r in seen.items()})
        return all(d != old for d in state.values())

    _until(both_new, lambda: f"both workers judge by the reloaded packs (digests {state})")
    new = set(state.values())
    assert len(new) == 1, state
    digest = new.pop()
    kits = iter(HostKit(fleet.site_id, index=i) for i in range(1000))

    def snapshot(client: httpx.Client) -> httpx.Response:
        kit = next(kits)
        fleet.enroll(kit)
        r = client.post("/v1/snapshots", content=kit.next_envelope(), headers=JSON)
        assert r.status_code == 200, r.text
        return r

    for pid, r in _each_worker(fleet, pids, snapshot).items():
        assert _digest_of_result(fleet, r.json()) == digest, pid


# --------------------------------------------------------------------------- PostgreSQL, 2 workers


@pytest.mark.postgres
def test_api_reload_reaches_both_workers_of_serve_on_postgresql(
    pg_database_factory: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = _policies(tmp_path, monkeypatch)
    with _serve(tmp_path, pg_database_factory(), "--workers", "2") as fleet:

        def reload() -> None:
            body = _reload(fleet)
            assert body["packs"][0]["version"] == "9.9.9"

        _reload_reaches_both_workers(fleet, policies, reload)


@pytest.mark.postgres
def test_sighup_to_the_supervisor_reloads_both_workers_on_postgresql(
    pg_database_factory: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = _policies(tmp_path, monkeypatch)
    with _serve(tmp_path, pg_database_factory(), "--workers", "2") as fleet:
        workers = sorted(_worker_pids(fleet.server))
        _reload_reaches_both_workers(
            fleet, policies, lambda: os.kill(fleet.server.process.pid, signal.SIGHUP)
        )
        assert sorted(_worker_pids(fleet.server)) == workers  # reloaded, not replaced
        audit = fleet.server.cli("audit", "verify")
        assert audit.returncode == 0


# --------------------------------------------------------------------------- SQLite, one process


def _submit(fleet: Fleet, kit: HostKit) -> str:
    r = httpx.post(
        f"{fleet.server.url}/v1/snapshots", content=kit.next_envelope(), headers=JSON, timeout=60
    )
    assert r.status_code == 200, r.text
    return _digest_of_result(fleet, r.json())


def test_reload_by_api_and_by_sighup_in_one_sqlite_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = _policies(tmp_path, monkeypatch)
    with _serve(tmp_path, "sqlite") as fleet, httpx.Client(base_url=fleet.server.url) as client:
        kit = HostKit(fleet.site_id)
        fleet.enroll(kit)
        first = _policy(client, fleet).json()
        assert first["reload"]["generation"] == 1  # serve recorded the packs it started with
        assert _submit(fleet, kit) == first["digest"]

        _edit_pack(policies, "2.0.0")
        body = _reload(fleet)
        assert body["previous"] == first["digest"] and body["digest"] != first["digest"]
        assert body["reload"]["generation"] == 2
        assert _submit(fleet, kit) == body["digest"]

        _edit_pack(policies, "3.0.0")
        os.kill(fleet.server.process.pid, signal.SIGHUP)
        _until(
            lambda: (
                _policy(client, fleet).json()["digest"] not in (first["digest"], body["digest"])
            ),
            "SIGHUP reloads the packs",
        )
        third = _policy(client, fleet).json()
        assert third["packs"][0]["version"] == "3.0.0" and third["reload"]["generation"] == 3
        assert _submit(fleet, kit) == third["digest"]

        # A pack that does not load: SIGHUP changes nothing and the server keeps serving.
        (policies / PACK / "conditions.yaml").write_text("parameters: [\n")
        os.kill(fleet.server.process.pid, signal.SIGHUP)
        _until(
            lambda: "policy packs not reloaded" in fleet.server.log.read_text(),
            "the failed SIGHUP reload is logged",
        )
        assert _policy(client, fleet).json()["digest"] == third["digest"]
        assert _submit(fleet, kit) == third["digest"]


def test_a_process_that_cannot_load_the_recorded_packs_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded files are corrupted behind the verifier's back: the process keeps judging by
    the packs it has, and ``GET /v1/policy`` says why it did not follow."""
    from sqlalchemy import update

    from server.config import Settings
    from server.store.compliance_models import PolicyState
    from server.store.db import Database, engine_for
    from server.store.migrate import upgrade

    _policies(tmp_path, monkeypatch)
    with _serve(tmp_path, "sqlite") as fleet, httpx.Client(base_url=fleet.server.url) as client:
        digest = _policy(client, fleet).json()["digest"]
        settings = Settings(data_dir=fleet.server.data_dir)
        upgrade(settings.resolved_database_url())
        db = Database(engine_for(settings))
        try:
            bad = {f"{PACK}/pack.yaml": "aWQ6IFsK"}  # "id: [" (YAML that does not parse)
            with db.write() as session:
                session.execute(
                    update(PolicyState)
                    .where(PolicyState.id == 1)
                    .values(
                        generation=PolicyState.generation + 1,
                        digest="f" * 64,
                        files=json.dumps(bad),
                    )
                )
        finally:
            db.dispose()
        _until(
            lambda: _policy(client, fleet).json()["reload"]["error"] is not None,
            "the process reports the recorded packs it could not load",
        )
        answer = _policy(client, fleet).json()
        assert answer["digest"] == digest and answer["reload"]["recorded_digest"] == "f" * 64
        assert "policy_reload_failed" in fleet.server.log.read_text()
        kit = HostKit(fleet.site_id)
        fleet.enroll(kit)
        assert _submit(fleet, kit) == digest
