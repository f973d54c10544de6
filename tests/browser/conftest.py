"""Playwright against real servers: a seeded fleet served by uvicorn, and the real demo.

Chromium is Debian's (``/usr/bin/chromium``), launched headless with an explicit path; nothing is
downloaded. Without it the browser tests skip. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.policy import PolicySet
from tests.server.api.dashboard.conftest import Env, make_env, policy

__all__ = ["policy"]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-artifacts" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    url: str
    admin_key: str
    public_key: Any
    over_site: str  # the name of the site above its authorization
    attest_site: str


@pytest.fixture
def seeded_server(tmp_path: Path, policy: PolicySet) -> Iterator[Served]:
    import uvicorn

    env: Env = make_env(tmp_path, policy)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url)
    try:
        yield Served(url, env.fleet.admin_key, env.svc.key.public, "over-ams", "us-east")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        env.svc.db.dispose()


def _wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[Served]:
    """``veu-server demo`` as a real process: real agents, real signed snapshots over HTTP."""
    port = free_port()
    data_dir = tmp_path / "demo"
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
            "5s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    key = url = ""
    while time.monotonic() < deadline and not key:
        line = proc.stdout.readline().decode()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if m := re.match(r"^Dashboard: (\S+)$", line.strip()):
            url = m.group(1).removesuffix("/dashboard/")
        if m := re.match(r"^Admin API key: (\S+)$", line.strip()):
            key = m.group(1)
    if not key:
        proc.kill()
        raise AssertionError("demo did not start:\n" + "".join(lines))
    from server.results import load_or_create_key

    public = load_or_create_key(data_dir / "server" / "verifier.key").public
    try:
        yield Served(url, key, public, "nl-ams", "nl-ams")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()
        assert "demo stopped" in out.decode()
