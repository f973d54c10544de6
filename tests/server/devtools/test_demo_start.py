"""``veu-server demo`` starting up: a port in use is said plainly before any agent starts, and the
agents are the installed ``veu-agent`` console script, not whatever ``agent/`` is in the cwd."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from server.devtools.demo import Demo, agent_command, plan_hosts
from tests.browser.conftest import REPO


class _Healthy(http.server.BaseHTTPRequestHandler):
    """Another program on the port that answers /healthz (as another verifier would)."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def do_POST(self) -> None:
        self.seen.append(f"POST {self.path}")
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b'{"code":"invalid_token","detail":"not ours"}')

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def other_server() -> Iterator[tuple[int, list[str]]]:
    seen: ClassVar[list[str]] = []
    handler = type("Handler", (_Healthy,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_in_use_is_said_and_no_agent_starts(
    other_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    port, seen = other_server
    data_dir = tmp_path / "fleet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEU_")}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "server.cli", "demo", "--data-dir", str(data_dir)),
            *("--port", str(port), "--hosts-per-site", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"error[port_in_use]: 127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr and "Errno 98" not in result.stderr
    assert not [s for s in seen if s.startswith("POST")]  # nobody tried to enroll there
    assert not list(data_dir.glob("**/agent.toml"))  # no agent was configured, none started


def test_the_demo_runs_the_installed_console_script_whatever_the_cwd_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory with an agent/ package of its own: `python -m agent.cli` would run it.
    decoy = tmp_path / "cwd"
    (decoy / "agent").mkdir(parents=True)
    marker = tmp_path / "decoy-ran"
    (decoy / "agent" / "__init__.py").write_text("")
    (decoy / "agent" / "cli.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(9)\n"
    )
    monkeypatch.chdir(decoy)
    assert Path(agent_command()).name == "veu-agent"
    demo = Demo(tmp_path / "fleet", 1, 1, "20s")
    host = plan_hosts(1)[0]
    host.state_dir = tmp_path / "state"
    result = demo._agent("init", host=host)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert (host.state_dir / "agent.key").exists()
