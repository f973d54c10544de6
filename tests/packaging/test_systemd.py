"""The shipped systemd units agree with the programs they start: the console scripts under the
documented install prefix, and the agent's "a restart cannot help" exit statuses, which systemd
must not answer with a restart every ``RestartSec``."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.cli import EXIT_USAGE
from agent.daemon import EXIT_CONFIG

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def service_section(unit: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of ``[Service]`` (a key may repeat; ``\\`` continues a line)."""
    out: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in unit.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def prevented(unit: Path) -> set[int]:
    return {
        int(v)
        for line in service_section(unit).get("RestartPreventExitStatus", [])
        for v in line.split()
    }


def test_the_agent_unit_does_not_restart_on_a_config_error_or_a_missing_enrollment() -> None:
    statuses = prevented(DEPLOY / "veu-agent.service")
    assert EXIT_USAGE in statuses, "a bad agent.toml would be restarted every RestartSec"
    assert EXIT_CONFIG in statuses


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "toml",
    [
        'report_interval = "soon"\n',
        "no_such_setting = 1\n",
        "this is not TOML\n",
        'server_url = "http://verifier.example:8443"\n',
    ],
)
def test_a_bad_agent_config_really_exits_with_a_status_the_unit_does_not_restart(
    tmp_path: Path, toml: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n' + toml)
    result = _agent("run", "--config", str(config))
    assert result.returncode in prevented(DEPLOY / "veu-agent.service"), result.stderr
    assert result.stderr.startswith("error[") and "Traceback" not in result.stderr


def test_an_agent_that_is_not_enrolled_exits_with_a_status_the_unit_does_not_restart(
    tmp_path: Path,
) -> None:
    assert _agent("init", "--state-dir", str(tmp_path)).returncode == 0
    result = _agent("run", "--state-dir", str(tmp_path))
    assert result.returncode in prevented(DEPLOY / "veu-agent.service"), result.stderr


@pytest.mark.parametrize("unit", ["veu-agent.service", "veu-server.service"])
def test_the_units_start_the_console_scripts_from_the_documented_prefix(unit: str) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    service = service_section(DEPLOY / unit)
    for command in service["ExecStart"] + service.get("ExecStartPre", []):
        program = Path(command.split()[0])
        assert program.name in scripts, f"{program} is not a console script of the wheel"
        prefix = program.parent.parent
        assert f"python3 -m venv {prefix}" in (DEPLOY / "README.md").read_text()
