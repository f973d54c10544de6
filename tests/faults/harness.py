"""Real processes on loopback for the fault-injection tests: a verifier, an agent, and checks.

:class:`VerifierProcess` runs ``veu-server serve`` on SQLite in a temporary data directory;
:class:`AgentProcess` runs ``veu-agent run`` with short intervals and an inventory file instead of
hardware. :func:`ledger` compares what the verifier holds with what the agent's chain and spool
hold; :func:`assert_nothing_lost` is the property every test ends with.

Every wait is bounded (``wait_for``); every process is killed by its own pid on teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "tests" / "fixtures" / "inventory" / "h100-sxm-8.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEU_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


class VerifierProcess:
    """``veu-server serve`` on ``127.0.0.1:port`` with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.admin_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "veu-server"), *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            timeout=60,
            env=_env(),
        )
        if done.returncode != 0:
            raise AssertionError(f"veu-server {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode().strip().splitlines()[-1]

    def setup_site(self) -> str:
        """Organization, site and admin key; returns a fresh enrollment token."""
        self.cli("db", "upgrade")
        self.cli("org", "add", "Fault Test Cloud", "--veu", "universal", "--hq", "US")
        self.cli(
            "site",
            "add",
            "Fault Test Cloud",
            "dc1",
            "--country",
            "DE",
            "--authorized-tpp",
            "1000000",
        )
        self.admin_key = self.cli("apikey", "create", "--role", "admin")
        return self.cli("enroll-token", "create", "dc1")

    def start(self, *, timeout: float = 40.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        log = open(self.data_dir.parent / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(BIN / "veu-server"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
        log.close()
        wait_for(self.healthy, timeout=timeout, what="the verifier to answer /healthz")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"verifier exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        _kill(self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill(self.proc)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            json=body,
            timeout=10.0,
        )
        response.raise_for_status()
        return response.json()

    def snapshots(self, host_id: str) -> list[dict[str, Any]]:
        """Every snapshot the verifier accepted for the host, by ascending seq."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(1000):
            query = f"?limit=1000&cursor={cursor}" if cursor else "?limit=1000"
            page = self.api("GET", f"/v1/hosts/{host_id}/snapshots{query}")
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return sorted(items, key=lambda s: int(s["seq"]))

    def revoke(self, host_id: str) -> None:
        self.api("POST", f"/v1/hosts/{host_id}/revoke")


@dataclass
class AgentProcess:
    """``veu-agent run`` on ``state_dir``; ``server_url`` overrides the enrolled one (a proxy)."""

    state_dir: Path
    check_in: str = "0.2s"
    report: str = "0.3s"
    server_url: str | None = None
    spool_max_bytes: int | None = None
    weight_roots: tuple[Path, ...] = ()
    inventory: Path = INVENTORY
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    key_id: str = ""

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "veu-agent"), *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            timeout=60,
            env=_env(),
        )
        if done.returncode != 0:
            raise AssertionError(f"veu-agent {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode().strip().splitlines()[-1]

    def enroll(self, server_url: str, token: str) -> str:
        self.key_id = self.cli("init")
        self.cli("enroll", "--server", server_url, "--token", token)
        return self.key_id

    def write_config(self) -> Path:
        lines = [
            f'state_dir = "{self.state_dir}"',
            f'inventory = "{self.inventory}"',
            f'check_in_interval = "{self.check_in}"',
            f'report_interval = "{self.report}"',
            "nvml = false",
        ]
        if self.server_url:
            lines.append(f'server_url = "{self.server_url}"')
        if self.spool_max_bytes:
            lines.append(f"spool_max_bytes = {self.spool_max_bytes}")
        if self.weight_roots:
            lines.append(f"weight_roots = {json.dumps([str(p) for p in self.weight_roots])}")
        path = self.state_dir.parent / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / "agent.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        config = self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(BIN / "veu-agent"), "run", "--config", str(config)],
            stdout=log,
            stderr=log,
            env=_env(),
        )
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        _kill(self.proc)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM; the daemon finishes its current send and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and (name is None or record.get("event") == name):
                        out.append(record)
        return out

    # -- what is on disk ---------------------------------------------------------------------------

    def head_seq(self) -> int:
        try:
            return int(json.loads((self.state_dir / "head.json").read_text())["seq"])
        except FileNotFoundError:
            return 0

    def spooled(self) -> list[int]:
        spool = self.state_dir / "spool"
        if not spool.is_dir():
            return []
        return sorted(int(p.name.split(".")[0]) for p in spool.glob("*.dsse.json"))

    def quarantined(self, folder: str) -> list[int]:
        path = self.state_dir / "spool" / folder
        if not path.is_dir():
            return []
        return sorted(int(p.name.split(".")[0]) for p in path.glob("*.dsse.json"))

    def status(self) -> tuple[dict[str, Any], int]:
        done = subprocess.run(
            [str(BIN / "veu-agent"), "status", "--json", "--state-dir", str(self.state_dir)],
            capture_output=True,
            timeout=60,
            env=_env(),
        )
        return json.loads(done.stdout), done.returncode


def ledger(verifier: VerifierProcess, agent: AgentProcess) -> tuple[list[int], list[int], int]:
    """(seqs the verifier holds, seqs still spooled, the agent's chain head)."""
    held = [int(s["seq"]) for s in verifier.snapshots(agent.key_id)]
    return held, agent.spooled(), agent.head_seq()


def assert_nothing_lost(
    verifier: VerifierProcess,
    agent: AgentProcess,
    *,
    missing_ok: frozenset[int] = frozenset(),
    fully_delivered: bool = False,
) -> list[int]:
    """Every seq the chain produced is at the verifier or still in the spool; none twice."""
    held, spooled, head = ledger(verifier, agent)
    assert len(held) == len(set(held)), f"the verifier holds a seq twice: {held}"
    # A crash between the spool write and the head update leaves seq head+1 spooled: the chain
    # adopts it on the next start.
    produced = set(range(1, max(head, max(spooled, default=0)) + 1))
    lost = produced - set(held) - set(spooled) - missing_ok
    assert not lost, f"evidence lost: seqs {sorted(lost)} are neither at the verifier nor spooled"
    unexpected = set(held) - produced
    assert not unexpected, f"the verifier holds seqs the agent never made: {sorted(unexpected)}"
    contiguous = [s for s in range(1, (max(held) if held else 0) + 1) if s not in missing_ok]
    assert [s for s in held if s not in missing_ok] == contiguous, (
        f"the verifier's chain has a gap: {held}"
    )
    if fully_delivered:
        assert not spooled, f"still spooled: {spooled}"
        assert set(held) | missing_ok >= set(range(1, head + 1))
    return held
