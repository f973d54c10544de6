"""Operator commands never damage the evidence: end to end against a real verifier on loopback.

An enrolled host's ``veu-agent snapshot`` used to name site ``null`` and consume a seq that never
reached the verifier, so the daemon's next snapshot was answered with ``chain.gap``. Here the
agent runs as the installed console script and the verifier as ``veu-server serve``; what the
verifier recorded (findings, security events) is read back afterwards.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.agent.weights_fixtures import write_safetensors
from tests.server.conftest import Fleet

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def veu_agent() -> str:
    found = Path(sys.executable).with_name("veu-agent")
    return str(found) if found.exists() else (shutil.which("veu-agent") or "veu-agent")


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [veu_agent(), *args], capture_output=True, text=True, timeout=300, check=False
    )


def enrolled_host(fleet: Fleet, tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "agent"
    models = tmp_path / "models"
    models.mkdir()
    write_safetensors(models / "model.safetensors", {"format": "pt"})
    assert agent("init", "--state-dir", str(state)).returncode == 0
    enrolled = agent(
        "enroll", "--state-dir", str(state), "--server", fleet.server.url, "--token", fleet.token()
    )
    assert enrolled.returncode == 0, enrolled.stderr
    return state, models


def findings(fleet: Fleet) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{fleet.server.url}/v1/findings",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {fleet.admin_key}"},
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def security_events(fleet: Fleet) -> list[str]:
    engine = sa.create_engine(fleet.server.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT details FROM audit_log WHERE action = 'evidence.rejected'")
            )
            return [str(r[0]) for r in rows]
    finally:
        engine.dispose()


def status(state: Path) -> dict[str, Any]:
    result = agent("status", "--state-dir", str(state), "--json")
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def run_daemon_until_delivered(state: Path, models: Path, seq: int) -> None:
    """Start ``veu-agent run`` and stop it once the verifier acknowledged ``seq``."""
    daemon = subprocess.Popen(
        [
            veu_agent(),
            "run",
            "--state-dir",
            str(state),
            "--weights",
            str(models),
            "--check-in-interval",
            "1s",
            "--report-interval",
            "1h",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240  # a bound on a hang, not a timing assertion
        while time.monotonic() < deadline:
            current = status(state)
            delivered = (current.get("last_success") or {}).get("seq")
            if delivered is not None and delivered >= seq and current["spool"]["depth"] == 0:
                return
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else b""
            time.sleep(0.5)
        raise AssertionError(f"the daemon did not deliver seq {seq}: {status(state)}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def chain_findings(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in items if f["condition_id"].startswith("chain.")]


def test_snapshot_on_an_enrolled_host_is_delivered_and_leaves_no_gap(
    fleet: Fleet, tmp_path: Path
) -> None:
    state, models = enrolled_host(fleet, tmp_path)
    taken = agent(
        "snapshot",
        "--state-dir",
        str(state),
        "--weights",
        str(models),
        "--out",
        str(tmp_path / "s"),
    )
    assert taken.returncode == 0, taken.stderr
    assert "queued seq 1" in taken.stderr
    run_daemon_until_delivered(state, models, seq=2)
    assert chain_findings(findings(fleet)) == []
    assert security_events(fleet) == []
    hosts = httpx.get(
        f"{fleet.server.url}/v1/hosts", headers={"Authorization": f"Bearer {fleet.admin_key}"}
    ).json()["items"]
    [host] = hosts
    assert host["site_id"] == fleet.site_id


def test_a_dry_run_envelope_is_refused_by_the_verifier_and_the_chain_goes_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    state, models = enrolled_host(fleet, tmp_path)
    dry = agent("snapshot", "--state-dir", str(state), "--weights", str(models), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    response = httpx.post(
        f"{fleet.server.url}/v1/snapshots",
        content=dry.stdout.strip().encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["code"] == "dry_run"
    attested = agent("attest", "--state-dir", str(state), "--weights", str(models), "--json")
    assert attested.returncode in (0, 1, 2), attested.stderr  # a verdict, not "cannot attest"
    assert chain_findings(findings(fleet)) == []


def test_the_readme_quick_start_leaves_only_findings_the_inventory_earns(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The agent half of README.md's quick start, command for command (one real weight file,
    not registered: the one finding the inventory earns is that warning)."""
    state, models = enrolled_host(fleet, tmp_path)
    snap = tmp_path / "snap.json"
    taken = agent(
        "snapshot", "--state-dir", str(state), "--weights", str(models), "--out", str(snap)
    )
    assert taken.returncode == 0, taken.stderr
    assert agent("verify", str(snap), "--state-dir", str(state)).returncode == 0
    attested = agent("attest", "--state-dir", str(state), "--weights", str(models))
    assert attested.returncode != 4, attested.stderr
    run_daemon_until_delivered(state, models, seq=3)  # `veu-agent status` polled meanwhile

    everything = findings(fleet)
    assert chain_findings(everything) == []  # open or closed since: none was ever raised
    items = [f for f in everything if f["open"]]
    assert security_events(fleet) == []
    host_findings = {f["condition_id"].split("/")[-1] for f in items if f["scope"] == "host"}
    earned = {
        "host.weights-classified",  # the one weight file is in no registry
        "host.collectors-succeeded",  # this test machine's own probes, if any fail here
        "host.probed-evidence",
    }
    assert "host.weights-classified" in host_findings
    assert host_findings <= earned, host_findings
