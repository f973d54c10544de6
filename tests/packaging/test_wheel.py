"""The wheel as the people who deploy it get it: built from the tree, installed into fresh virtual
environments from the local wheelhouse (no network), run from a directory outside the checkout.

- With the ``[server]`` extra: ``veu-server policy test`` judges by the packs shipped inside the
  wheel (and by ``VEU_POLICIES_DIR`` when set), and ``veu-server demo`` starts, delivers evidence
  and stops cleanly.
- Without it (an agent host): none of the verifier's stack is importable, ``veu-server`` says
  which extra to install, and ``veu-agent`` runs ``init``, ``snapshot``, ``verify``, ``enroll``,
  ``attest`` and ``run`` against a live verifier on loopback served from the test environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import contract
from tests.browser.conftest import free_port
from tests.server.conftest import LiveServer, make_fleet, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".venv" / "wheelhouse"
FIXTURES = REPO / "tests" / "fixtures"
HGX = ["--sys-root", str(FIXTURES / "sysfs" / "h100-hgx")]
HGX += ["--nvml-replay", str(FIXTURES / "nvml" / "h100-hgx-8.json")]
#: What the wheel is built from: everything else in the checkout stays out of it.
BUILD_INPUTS = ["pyproject.toml", "README.md", "LICENSE", "contract", "agent", "server", "policies"]
#: Top-level modules of the verifier's stack that an agent host must not get.
SERVER_STACK = ["fastapi", "sqlalchemy", "psycopg", "fpdf", "jinja2", "cel", "celpy", "uvicorn"]


def _env(**extra: str) -> dict[str, str]:
    """The environment of a deployed host: no checkout on the path, no pip index but ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VEU_", "PIP_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _run(
    cmd: list[str | Path], cwd: Path, *, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(cmd: list[str | Path], cwd: Path) -> subprocess.Popen[str]:
    """A long-running command of the installed package, its output read as one stream."""
    return subprocess.Popen(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} -> {result.returncode}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    if not list(WHEELHOUSE.glob(".complete-*")):
        pytest.fail(
            f"no wheelhouse at {WHEELHOUSE}: run ./scripts/setup (it downloads the dependencies' "
            "wheels once, so these tests install without the network)"
        )
    return WHEELHOUSE


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    _ok(
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-index",
                "--find-links",
                wheelhouse,
                "--wheel-dir",
                out,
                src,
            ],
            cwd=src,
        )
    )
    (built,) = out.glob("veu_attest-*.whl")
    return built


def _venv(root: Path, wheel: Path, wheelhouse: Path, extra: str) -> Path:
    _ok(_run([sys.executable, "-m", "venv", root], cwd=root.parent))
    _ok(
        _run(
            [
                root / "bin" / "python",
                "-m",
                "pip",
                "install",
                "--no-index",
                "--find-links",
                wheelhouse,
                f"{wheel}{extra}",
            ],
            cwd=root.parent,
        )
    )
    return root / "bin"


@pytest.fixture(scope="module")
def server_bin(tmp_path_factory: pytest.TempPathFactory, wheel: Path, wheelhouse: Path) -> Path:
    return _venv(tmp_path_factory.mktemp("server-host") / "venv", wheel, wheelhouse, "[server]")


@pytest.fixture(scope="module")
def agent_bin(tmp_path_factory: pytest.TempPathFactory, wheel: Path, wheelhouse: Path) -> Path:
    return _venv(tmp_path_factory.mktemp("agent-host") / "venv", wheel, wheelhouse, "")


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no checkout in it or above it."""
    away = tmp_path / "elsewhere"
    away.mkdir()
    return away


def test_the_wheel_ships_the_packs_and_the_license_and_no_tests(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "policies/ai-diffusion-2025/pack.yaml" in names
    assert "policies/ai-diffusion-2025/tests/host.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "contract/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_the_installed_verifier_runs_outside_the_checkout(
    server_bin: Path, elsewhere: Path
) -> None:
    located = _ok(
        _run(
            [
                server_bin / "python",
                "-c",
                "import contract, policies, server; print(server.__file__, policies.__file__)",
            ],
            cwd=elsewhere,
        )
    )
    assert all(p.startswith(str(server_bin.parent)) for p in located.split()), located
    version = contract.__version__
    assert _ok(_run([server_bin / "veu-server", "--version"], cwd=elsewhere)).strip() == (
        f"veu-server {version}"
    )
    assert _ok(_run([server_bin / "veu-agent", "--version"], cwd=elsewhere)).strip() == (
        f"veu-agent {version}"
    )
    shipped = _ok(_run([server_bin / "veu-server", "policy", "test"], cwd=elsewhere))
    assert "ai-diffusion-2025" in shipped and shipped.strip().endswith("PASS")
    # VEU_POLICIES_DIR wins over the shipped packs.
    empty = elsewhere / "no-packs"
    empty.mkdir()
    chosen = _run(
        [server_bin / "veu-server", "policy", "test"],
        cwd=elsewhere,
        env=_env(VEU_POLICIES_DIR=str(empty)),
    )
    assert chosen.returncode == 2 and f"no packs under {empty}" in chosen.stderr, chosen.stderr


def test_the_installed_demo_delivers_evidence_and_stops_cleanly(
    server_bin: Path, elsewhere: Path
) -> None:
    port = free_port()
    demo = f"demo --port {port} --hosts-per-site 1 --report-interval 4s"
    proc = _start([server_bin / "veu-server", *demo.split()], elsewhere)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(
            x.startswith("Admin API key:") for x in lines
        ):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line.rstrip("\n"))
        key = next((x.split(": ", 1)[1] for x in lines if x.startswith("Admin API key: ")), "")
        assert key, "demo did not start:\n" + "\n".join(lines)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            hosts = httpx.get(
                f"{url}/v1/hosts?limit=100", headers={"Authorization": f"Bearer {key}"}
            ).json()["items"]
            if any((h["chain_head"] or {}).get("seq", 0) >= 1 for h in hosts):
                break
            assert time.monotonic() < deadline, hosts
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "\n".join(lines) + out
    assert "demo stopped" in out


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "verifier", "sqlite")
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


def _importable(python: Path, modules: list[str], cwd: Path) -> list[str]:
    code = (
        "import importlib.util, sys; "
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None))"
    )
    return _ok(_run([python, "-c", code, *modules], cwd=cwd)).split()


def test_an_agent_host_installs_without_the_verifier_and_attests_against_one(
    agent_bin: Path, verifier: LiveServer, elsewhere: Path
) -> None:
    assert _importable(agent_bin / "python", [*SERVER_STACK, "joserfc"], elsewhere) == []
    assert _importable(agent_bin / "python", ["agent", "contract", "cryptography"], elsewhere) == [
        "agent",
        "contract",
        "cryptography",
    ]
    refused = _run([agent_bin / "veu-server", "serve"], cwd=elsewhere)
    assert refused.returncode == 2
    assert "pip install 'veu-attest[server]'" in refused.stderr
    assert "Traceback" not in refused.stderr

    fleet = make_fleet(verifier)
    agent = agent_bin / "veu-agent"
    state = elsewhere / "state"
    _ok(_run([agent, "init", "--state-dir", state], cwd=elsewhere))
    envelope = elsewhere / "snapshot.json"
    _ok(_run([agent, "snapshot", "--state-dir", state, *HGX, "--out", envelope], cwd=elsewhere))
    verified = _ok(_run([agent, "verify", envelope, "--state-dir", state], cwd=elsewhere))
    assert "valid signature" in verified
    _ok(
        _run(
            [
                agent,
                "enroll",
                "--state-dir",
                state,
                "--server",
                verifier.url,
                "--token",
                fleet.token(),
            ],
            cwd=elsewhere,
        )
    )
    attested = _run([agent, "attest", "--state-dir", state, *HGX], cwd=elsewhere)
    assert attested.returncode in (0, 1, 2), attested.stderr  # a verdict, whichever it is
    assert "Verdict:" in attested.stdout

    def head_seq() -> int:
        hosts = httpx.get(
            f"{verifier.url}/v1/hosts",
            headers={"Authorization": f"Bearer {fleet.auditor_key}"},
        ).json()["items"]
        return max(int((h["chain_head"] or {}).get("seq", 0)) for h in hosts)

    before = head_seq()
    assert before >= 1
    intervals = ["--check-in-interval", "1s", "--report-interval", "2s"]
    daemon = _start([agent, "run", "--state-dir", state, *HGX, *intervals], elsewhere)
    try:
        deadline = time.monotonic() + 120
        while head_seq() <= before:
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline, "the daemon delivered nothing"
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=90)
    assert daemon.returncode == 0, out
