"""Several verifier workers on one PostgreSQL database: ``veu-server serve --workers 2``.

tests/server/ingest/test_ingest.py already proves the two races across two separate ``serve``
processes (two children of one head: one accepted, one ``fork``; one envelope twice
at once: one row, identical answers). This file adds what it does not cover:

- the same two races through ONE ``serve --workers 2`` (uvicorn's supervisor, the documented
  deployment; each worker listens on its own ``SO_REUSEPORT`` socket, server/api/workers.py);
- that connections opened at once reach both workers, and that a killed worker is replaced
  without a new connection being lost;
- the site and organization aggregates staying exact under a concurrent burst from many hosts of
  one site on two workers — including the very first snapshots of a site, when its aggregate row
  does not exist yet. Both workers' settlers fold the pending hosts in under the site row's lock
  (``SKIP LOCKED``): the installed TPP must equal the sum of the hosts' contributions.

Why the loser of a fork race is always ``fork``: when both children reach the database together,
the second commit finds the head moved (a lost race); when the loser is appraised after the
winner committed, its seq equals the new head's and it names the head's own predecessor, which
the appraisal recognizes as a second child of that predecessor (server/appraise/, rule 9).

Skipped without ``VEU_TEST_PG_URL``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from server.store.compliance_models import HostState
from server.store.db import Database, make_engine
from tests.server.builders import HostKit, digest_of, h100_accelerators
from tests.server.conftest import Fleet, LiveServer, make_fleet, start_server, stop_server

pytestmark = pytest.mark.postgres

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def workers2(pg_database_factory: Callable[[], str], tmp_path: Path) -> Iterator[Fleet]:
    url = pg_database_factory()
    server = start_server(tmp_path / "data", url, "--workers", "2")
    try:
        yield make_fleet(server)
    finally:
        stop_server(server)


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
    return lambda: httpx.post(f"{url}/v1/snapshots", content=data, headers=JSON, timeout=60)


def _posture(secure_boot: bool) -> Any:
    from contract import Posture

    return Posture(secure_boot=secure_boot, tpm_present=True)


def _worker_pids(server: LiveServer) -> list[int]:
    """The worker processes (not multiprocessing's resource tracker)."""
    import psutil

    pids = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("spawn_main" in part for part in child.cmdline()):
                pids.append(child.pid)
    return pids


def test_serve_with_two_workers_runs_two_worker_processes(workers2: Fleet) -> None:
    assert len(_worker_pids(workers2.server)) == 2


def test_two_children_of_one_head_through_two_workers_one_accepted_one_refused(
    workers2: Fleet,
) -> None:
    url = workers2.server.url
    kit = HostKit(workers2.site_id)
    workers2.enroll(kit)
    for _ in range(10):
        a = kit.next_envelope(advance=False, posture=_posture(True))
        b = kit.next_envelope(advance=False, posture=_posture(False))
        answers = _race([_post(url, a), _post(url, b)])
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        loser = next(r for r in answers if r.status_code == 409)
        assert loser.json()["code"] == "fork", loser.text
        winner = a if answers[0].status_code == 200 else b
        kit.seq, kit.prev = kit.seq + 1, digest_of(winner)
    page = httpx.get(
        f"{url}/v1/hosts/{kit.key_id}/snapshots",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {workers2.auditor_key}"},
    ).json()
    assert [s["seq"] for s in page["items"]] == list(range(10, 0, -1))


def test_the_same_envelope_through_two_workers_at_once_is_one_row_and_one_answer(
    workers2: Fleet,
) -> None:
    url = workers2.server.url
    kit = HostKit(workers2.site_id)
    workers2.enroll(kit)
    for _ in range(10):
        data = kit.next_envelope()
        answers = _race([_post(url, data), _post(url, data)])
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert answers[0].json()["result"] == answers[1].json()["result"]
        assert sorted(r.json()["duplicate"] for r in answers) == [False, True]
    page = httpx.get(
        f"{url}/v1/hosts/{kit.key_id}/snapshots",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {workers2.auditor_key}"},
    ).json()
    assert len(page["items"]) == 10
    assert workers2.server.cli("audit", "verify").returncode == 0


def _burst(fleet: Fleet, kits: list[HostKit], shapes: list[list[int]]) -> list[int]:
    """Every host sends its chain (one snapshot per GPU count in its shape) at once, one thread
    per host, all through the same two-worker server; returns each host's final GPU count."""
    barrier = threading.Barrier(len(kits))
    errors: list[str] = []

    def host(i: int) -> None:
        kit = kits[i]
        with httpx.Client(base_url=fleet.server.url, timeout=60) as client:
            barrier.wait()
            for count in shapes[i]:
                data = kit.next_envelope(accelerators=h100_accelerators(kit.index)[:count])
                r = client.post("/v1/snapshots", content=data, headers=JSON)
                if r.status_code != 200:
                    errors.append(f"host {i}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=host, args=(i,)) for i in range(len(kits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    return [shape[-1] for shape in shapes]


def _status(fleet: Fleet) -> dict[str, Any]:
    r = httpx.get(
        f"{fleet.server.url}/v1/sites/{fleet.site_id}/status",
        headers={"Authorization": f"Bearer {fleet.auditor_key}"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, dict)
    return body


def _host_sums(fleet: Fleet) -> tuple[int, int, int]:
    engine = make_engine(fleet.server.database_url)
    try:
        with Database(engine).read() as s:
            row = s.execute(
                select(
                    func.count(HostState.key_id),
                    func.coalesce(func.sum(HostState.tpp), 0),
                    func.coalesce(func.sum(HostState.accelerators), 0),
                ).where(HostState.site_id == fleet.site_id)
            ).one()
            return int(row[0]), int(row[1]), int(row[2])
    finally:
        engine.dispose()


def test_the_site_aggregate_is_exact_after_a_concurrent_burst_from_many_hosts_on_two_workers(
    workers2: Fleet,
) -> None:
    kits = [HostKit(workers2.site_id, index=i) for i in range(16)]
    for kit in kits:
        workers2.enroll(kit)
    # Inventories change between snapshots, so every snapshot moves the aggregate by a delta;
    # the site has no aggregate row when the burst starts (first snapshots of the site).
    shapes = [[8, 1 + i % 8, 8 - i % 3] for i in range(len(kits))]
    finals = _burst(workers2, kits, shapes)
    hosts, tpp_sum, accelerators_sum = _host_sums(workers2)
    status = _status(workers2)
    assert hosts == status["hosts_reporting"] == len(kits)
    assert status["accelerators"] == accelerators_sum == sum(finals)
    assert status["installed_tpp"] == tpp_sum
    per_gpu = status["models"]["nvidia-h100-sxm"]["tpp"] // status["accelerators"]
    assert tpp_sum == per_gpu * sum(finals)


def test_the_site_aggregate_stays_exact_over_repeated_bursts_on_two_workers(
    workers2: Fleet,
) -> None:
    kits = [HostKit(workers2.site_id, index=i) for i in range(12)]
    for kit in kits:
        workers2.enroll(kit)
    for round_ in range(3):
        shapes = [[(i + round_) % 8 + 1, (i * 3 + round_) % 8 + 1] for i in range(len(kits))]
        finals = _burst(workers2, kits, shapes)
        hosts, tpp_sum, accelerators_sum = _host_sums(workers2)
        status = _status(workers2)
        assert hosts == len(kits) and status["accelerators"] == accelerators_sum == sum(finals)
        assert status["installed_tpp"] == tpp_sum


# --------------------------------------------------------------------------- one socket per worker


def _listening_inodes(pid: int, port: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds that listen on ``port`` (from /proc)."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[8:-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    listening.add(inode)
    return held & listening


def _established_counts(server: LiveServer) -> list[int]:
    import psutil

    port = int(server.url.rsplit(":", 1)[1])
    counts = []
    for pid in _worker_pids(server):
        conns = psutil.Process(pid).net_connections(kind="tcp")
        counts.append(sum(1 for c in conns if c.status == "ESTABLISHED" and c.laddr.port == port))
    return counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_each_worker_listens_on_its_own_socket_and_connections_opened_at_once_reach_both(
    workers2: Fleet,
) -> None:
    server = workers2.server
    port = int(server.url.rsplit(":", 1)[1])
    inodes = [_listening_inodes(pid, port) for pid in _worker_pids(server)]
    assert [len(i) for i in inodes] == [1, 1] and inodes[0] != inodes[1], inodes
    assert _listening_inodes(server.process.pid, port) == set()  # the supervisor holds none
    # 16 keep-alive connections opened at once (a load balancer's pool): with one shared
    # socket the first worker to wake took nearly all of them.
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(16)]
    try:
        answers = _race([lambda c=c: c.get("/healthz") for c in clients])  # type: ignore[misc]
        assert all(r.status_code == 200 for r in answers)
        counts = _established_counts(server)
        assert sum(counts) == 16 and min(counts) >= 1, counts
    finally:
        for c in clients:
            c.close()


def test_a_killed_worker_is_replaced_and_no_new_connection_is_lost(workers2: Fleet) -> None:
    import psutil

    server = workers2.server
    victim = _worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = _worker_pids(server)
        if victim not in pids and len(pids) == 2 and all(psutil.pid_exists(p) for p in pids):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the killed worker was not replaced")
    # Every new connection is answered: none is hashed to the dead worker's socket, because the
    # supervisor kept no copy of it to hold it in the group.
    for _ in range(40):
        r = httpx.get(f"{server.url}/healthz", timeout=10)
        assert r.status_code == 200
    kit = HostKit(workers2.site_id)
    workers2.enroll(kit)
    assert _post(server.url, kit.next_envelope())().status_code == 200


def test_serve_with_workers_on_a_port_in_use_is_a_clear_error(
    pg_database_factory: Callable[[], str], tmp_path: Path
) -> None:
    from tests.server.conftest import run_cli

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        out = run_cli(
            "serve",
            "--data-dir",
            str(tmp_path),
            "--port",
            port,
            "--workers",
            "2",
            db=pg_database_factory(),
            check=False,
        )
    finally:
        busy.close()
    assert out.returncode == 4, out.stderr
    assert f"error[cannot_listen]: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
