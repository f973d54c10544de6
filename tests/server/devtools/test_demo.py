"""``veu-server demo``: real agents, real evidence, the deliberate problems, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from server.devtools.demo import run_demo
from tests.browser.conftest import REPO, free_port

pytestmark = pytest.mark.slow


@dataclass
class Running:
    url: str
    key: str
    data_dir: Path
    lines: list[str]

    def api(self, path: str) -> dict:  # type: ignore[type-arg]
        r = httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.key}"})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]


def _processes_under(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if str(data_dir) in cmd:
            found.append(p)
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("demo") / "fleet"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEU_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "demo",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--hosts-per-site",
            "1",
            "--report-interval",
            "4s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(x.startswith("Admin API key:") for x in lines):
        line = proc.stdout.readline().decode()
        if not line and proc.poll() is not None:
            break
        lines.append(line.rstrip("\n"))
    url = next((x.split(" ", 1)[1] for x in lines if x.startswith("Dashboard: ")), "")
    key = next((x.split(": ", 1)[1] for x in lines if x.startswith("Admin API key: ")), "")
    if not key:
        proc.kill()
        pytest.fail("demo did not start:\n" + "\n".join(lines))
    running = Running(url.removesuffix("/dashboard/"), key, data_dir, lines)
    yield running
    # Ctrl-C: every agent and the server stop, the process exits 0.
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out.decode()
    assert "demo stopped" in out.decode()
    assert _processes_under(data_dir) == []


def test_demo_prints_dashboard_and_admin_key_on_lines_of_their_own(demo: Running) -> None:
    assert re.fullmatch(r"Dashboard: http://127\.0\.0\.1:\d+/dashboard/", demo.lines[-2])
    assert re.fullmatch(r"Admin API key: \S+", demo.lines[-1])
    assert httpx.get(f"{demo.url}/dashboard/", follow_redirects=False).status_code == 303


def test_demo_agents_push_signed_snapshots_and_the_stale_host_stops(demo: Running) -> None:
    hosts = demo.api("/v1/hosts?limit=100")["items"]
    names = {h["hostname"] for h in hosts}
    assert {
        "us-east-01",
        "us-east-02",
        "de-fra-01",
        "de-fra-store-01",
        "nl-ams-01",
        "ae-auh-01",
        "cn-sha-01",
    } <= names
    assert len(hosts) == 8  # and this machine's own agent
    deadline = time.monotonic() + 60
    while True:
        hosts = {h["hostname"]: h for h in demo.api("/v1/hosts?limit=100")["items"]}
        if all(h["chain_head"]["seq"] >= 2 for n, h in hosts.items() if n != "de-fra-store-01"):
            break
        assert time.monotonic() < deadline, hosts
        time.sleep(1)
    stale = hosts["de-fra-store-01"]["chain_head"]["seq"]
    assert stale >= 1
    time.sleep(6)
    again = {h["hostname"]: h for h in demo.api("/v1/hosts?limit=100")["items"]}
    assert again["de-fra-store-01"]["chain_head"]["seq"] == stale
    agents = [p for p in _processes_under(demo.data_dir) if "veu-agent" in " ".join(p.cmdline())]
    assert len(agents) == 7  # the stale host's agent was stopped


def test_demo_shows_each_deliberate_problem(demo: Running) -> None:
    from server.store.compliance_models import FindingRow
    from server.store.db import Database, make_engine

    db = Database(make_engine(f"sqlite:///{demo.data_dir / 'server' / 'veu.sqlite3'}"))
    wanted = {
        "site.authorized-tpp": "nl-ams above its authorization",
        "site.unique-accelerator-identity": "one GPU at two sites",
        "host.controlled-weights-encrypted": "controlled weights not on encrypted storage",
        "site.hosts-fresh": "a stale host",
        "org.universal-country-share": "AE above 7%",
        "site.cn-lab-tested": "a chip in China without a U.S. lab test record (pack in force)",
        "host.location-verified": "location not measured (proposed Chip Security Act)",
    }
    deadline = time.monotonic() + 150
    try:
        while True:
            with db.read() as s:
                open_ = {
                    c.split("/", 1)[-1]
                    for (c,) in s.query(FindingRow.condition_id).filter(FindingRow.is_open)
                }
            missing = {k: v for k, v in wanted.items() if k not in open_}
            if not missing:
                break
            assert time.monotonic() < deadline, f"never shown: {missing}; open: {open_}"
            time.sleep(2)
    finally:
        db.dispose()


def test_demo_refuses_a_data_dir_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    assert run_demo(tmp_path, free_port()) == 4
