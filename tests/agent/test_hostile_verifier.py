"""A malicious or broken verifier must not hurt the host: real agent, real (hostile) server.

Each test points ``veu-agent`` (the console script, or its client in process) at
:class:`tests.agent.hostile_verifier.HostileVerifier` and asserts on what the agent read, kept and
reported: bytes sent by the server, files in the state directory, exit codes, the status file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.client import RESPONSE_CAPS, ClientError, VerifierClient
from agent.spool import REJECTED, Spool
from contract.keys import key_id
from server.results import VerifierKey, sign_result
from tests.agent.hostile_verifier import (
    Behaviour,
    HostileVerifier,
    Reply,
    Request,
    Stream,
    Trickle,
    enroll_agent,
    state_bytes,
    wait_exit,
    wait_until,
)

BIN = Path(sys.executable).parent
INVENTORY = Path(__file__).resolve().parents[1] / "fixtures" / "inventory" / "h100-sxm-8.json"
#: The kernel's socket buffers on loopback hold a few MiB that the server counts as sent.
SOCKET_SLACK = 16 * 1024 * 1024


@pytest.fixture
def verifier() -> Iterator[HostileVerifier]:
    with HostileVerifier() as server:
        yield server


@pytest.fixture
def state(tmp_path: Path, verifier: HostileVerifier) -> Path:
    state_dir = tmp_path / "state"
    enroll_agent(state_dir, verifier)
    return state_dir


def config_file(state_dir: Path, check_in: str = "0.2s", report: str = "0.3s") -> Path:
    path = state_dir.parent / "agent.toml"
    path.write_text(
        f'state_dir = "{state_dir}"\ninventory = "{INVENTORY}"\n'
        f'check_in_interval = "{check_in}"\nreport_interval = "{report}"\nnvml = false\n'
    )
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEU_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def attest(state_dir: Path, *args: str, wait: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "veu-agent"), "attest", "--config", str(config_file(state_dir)), *args],
        capture_output=True,
        text=True,
        timeout=wait,
        env=_env(),
    )


def start_daemon(state_dir: Path, **intervals: str) -> subprocess.Popen[bytes]:
    log = open(state_dir.parent / "agent.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "veu-agent"), "run", "--config", str(config_file(state_dir, **intervals))],
        stdout=log,
        stderr=log,
        env=_env(),
    )
    log.close()
    return proc


def events(state_dir: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in (state_dir.parent / "agent.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def spooled(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "spool").glob("*.dsse.json"))


def status(state_dir: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((state_dir / "status.json").read_bytes())
    return value


def last_error_code(state_dir: Path) -> str | None:
    try:
        error = status(state_dir).get("last_error") or {}
    except (OSError, ValueError):
        return None
    return str(error.get("code"))


# --------------------------------------------------------------------------- response bodies


def test_attest_reads_at_most_the_cap_of_an_endless_nonce_and_keeps_nothing_of_it(
    verifier: HostileVerifier, state: Path
) -> None:
    endless = Stream(prefix=b'{"nonce": "', total=64 * 1024 * 1024)
    verifier.routes["POST /v1/challenges"] = lambda r: endless
    before = state_bytes(state)
    done = attest(state, "--timeout", "30")
    assert done.returncode == 3, done.stderr
    assert "error[response_too_large]" in done.stderr
    assert verifier.bytes_sent("POST /v1/challenges") < RESPONSE_CAPS["challenge"] + SOCKET_SLACK
    assert not (state / "journal.dsse.json").exists()
    assert not (state / "head.json").exists()
    assert state_bytes(state) - before < 4096  # the spool directory, no evidence


@pytest.mark.parametrize(
    ("call", "route"),
    [
        ("enroll", "POST /v1/enroll"),
        ("challenge", "POST /v1/challenges"),
        ("checkin", "GET /v1/checkin"),
        ("submit", "POST /v1/snapshots"),
        ("verifier_key", "GET /v1/verifier-key"),
    ],
)
@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "declared"])
def test_every_answer_is_capped_before_it_is_read_whole(
    verifier: HostileVerifier, call: str, route: str, declared: bool
) -> None:
    verifier.routes[route] = lambda r: Stream(
        prefix=b'{"x": "', total=96 * 1024 * 1024, declare_length=declared
    )
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    calls = {
        "enroll": lambda c: c.enroll("veu_et_x", key),
        "challenge": lambda c: c.challenge(key, kid),
        "checkin": lambda c: c.checkin(key, kid),
        "submit": lambda c: c.submit(b"{}"),
        "verifier_key": lambda c: c.verifier_key(),
    }
    with VerifierClient(verifier.url, timeout=30) as client, pytest.raises(ClientError) as err:
        calls[call](client)
    assert err.value.code == "response_too_large" and err.value.transient
    assert verifier.bytes_sent(route) < RESPONSE_CAPS[call] + SOCKET_SLACK


# --------------------------------------------------------------------------- nonces


@pytest.mark.parametrize(
    "nonce",
    ["", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "../../etc/passwd", "a" * 4096, 7, None],
    ids=["empty", "upper", "non-hex", "short", "long", "path", "huge", "number", "null"],
)
def test_a_nonce_not_in_the_verifiers_form_is_refused_before_any_snapshot(
    verifier: HostileVerifier, state: Path, nonce: object
) -> None:
    verifier.routes["POST /v1/challenges"] = lambda r: Reply.json(
        201, {"nonce": nonce, "expires_at": "2030-01-01T00:00:00Z"}
    )
    done = attest(state)
    assert done.returncode == 3
    assert "error[bad_nonce]" in done.stderr
    assert not (state / "journal.dsse.json").exists() and not (state / "head.json").exists()
    assert not verifier.seen("POST /v1/snapshots")


def test_the_daemon_ignores_a_malformed_challenge_and_never_writes_it(
    verifier: HostileVerifier, state: Path
) -> None:
    bad = "Z" * 8000  # under the answer cap: read, then refused for its form
    verifier.routes["GET /v1/checkin"] = lambda r: Reply.json(
        200, {"server_time": "x", "pending_challenge": {"nonce": bad, "expires_at": "x"}}
    )
    proc = start_daemon(state, check_in="0.2s", report="1h")
    try:
        assert wait_until(lambda: len(verifier.seen("GET /v1/checkin")) >= 3, 30)
        assert wait_until(lambda: (state / "status.json").exists(), 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 20) == 0
    assert not events(state, "challenge_received")
    assert events(state, "bad_nonce")
    for path in state.parent.rglob("*"):
        if path.is_file():
            assert b"ZZZZZZZZ" not in path.read_bytes(), path
    assert len(spooled(state)) + len(verifier.seen("POST /v1/snapshots")) <= 1  # the start one


# --------------------------------------------------------------------------- deadlines, SIGTERM


def test_attest_timeout_is_a_total_deadline_against_a_trickling_verifier(
    verifier: HostileVerifier, state: Path
) -> None:
    verifier.routes["POST /v1/challenges"] = lambda r: Trickle(every_s=0.5)
    done = attest(state, "--timeout", "3", wait=40)  # the trickle would last for hours
    assert done.returncode == 3
    assert "error[timeout]" in done.stderr
    assert verifier.trickling.is_set()


@pytest.mark.parametrize("route", ["GET /v1/checkin", "POST /v1/snapshots"])
def test_the_daemon_honours_sigterm_while_a_verifier_trickles(
    verifier: HostileVerifier, state: Path, route: str
) -> None:
    verifier.routes[route] = lambda r: Trickle(every_s=1.0)
    # Check-ins every 10 s: each read may wait 30 s, so the trickle never trips a read timeout.
    proc = start_daemon(state, check_in="10s", report="15m")
    try:
        assert wait_until(verifier.trickling.is_set, 60), "the daemon never called"
        assert wait_until(lambda: len(verifier.seen(route)) >= 1, 5)
        proc.send_signal(signal.SIGTERM)
        code = wait_exit(proc, 20)  # the trickle would hold it for hours
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert code == 0
    assert events(state, "stopped")
    if route == "POST /v1/snapshots":
        assert spooled(state)  # cut off mid-send: still there for the next start


# --------------------------------------------------------------------------- rejections


def test_rejection_details_are_truncated_counted_and_keep_the_status_small(
    verifier: HostileVerifier, state: Path
) -> None:
    detail = "x" * (1024 * 1024)  # under the answer cap: read, then cut
    verifier.routes["POST /v1/snapshots"] = lambda r: Reply.json(
        409, {"code": "fork", "detail": detail}
    )
    proc = start_daemon(state, check_in="0.2s", report="0.3s")
    rejected = state / "spool" / REJECTED
    try:
        assert wait_until(lambda: len(list(rejected.glob("*.reason.json"))) >= 3, 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 20) == 0
    for note in rejected.glob("*.reason.json"):
        assert note.stat().st_size < 4096
        assert json.loads(note.read_bytes())["code"] == "fork"
    assert (state / "status.json").stat().st_size < 64 * 1024
    shown = status(state)
    rejections = shown["recent_rejections"]
    assert isinstance(rejections, list) and rejections
    assert all(len(r["detail"]) < 2048 for r in rejections)
    spool = Spool(state / "spool", 1 << 30)
    aside = sum(p.stat().st_size for p in rejected.iterdir())
    assert spool.quarantined_bytes == aside


# --------------------------------------------------------------------------- 2xx without a result


def _bad_answers(verifier: HostileVerifier) -> dict[str, Behaviour]:
    forger = Ed25519PrivateKey.generate()
    forged = VerifierKey(private=forger, key_id=key_id(forger.public_key()))

    def about_another_envelope(request: Request) -> Reply:
        # Signed with the right key, but for an envelope the agent did not send (a replay).
        token = sign_result(
            verifier.key,
            verifier_id="hostile-test",
            issued_at=datetime.now(UTC),
            findings=[],
            digest="0" * 64,
            host_key_id="k",
            site_id="s",
            seq=1,
            nonce=None,
        )
        return Reply.json(200, {"duplicate": True, "result": token})

    return {
        "no_result": lambda r: Reply.json(200, {"status": "affirming"}),
        "result_invalid": lambda r: Reply.json(
            200, {"result": verifier.result_for(r.body, key=forged)}
        ),
        "garbage": lambda r: Reply.json(202, {"result": "not.a.jwt"}),
        "result_mismatch": about_another_envelope,
    }


@pytest.mark.parametrize("answer", ["no_result", "result_invalid", "garbage", "result_mismatch"])
def test_attest_keeps_the_envelope_when_a_2xx_carries_no_valid_result(
    verifier: HostileVerifier, state: Path, answer: str
) -> None:
    verifier.routes["POST /v1/snapshots"] = _bad_answers(verifier)[answer]
    done = attest(state)
    assert done.returncode == 3
    code = "result_invalid" if answer == "garbage" else answer
    assert f"error[{code}]" in done.stderr and "stays in the spool" in done.stderr
    assert spooled(state) == [f"{1:020d}.dsse.json"]
    verifier.routes["POST /v1/snapshots"] = verifier.honest_submit
    again = attest(state)
    assert again.returncode == 0, again.stderr
    assert spooled(state) == []  # the backlog went first, then the new one
    assert len(verifier.seen("POST /v1/snapshots")) == 3


@pytest.mark.parametrize("answer", ["no_result", "result_invalid", "result_mismatch"])
def test_the_daemon_keeps_retrying_an_envelope_answered_2xx_without_a_valid_result(
    verifier: HostileVerifier, state: Path, answer: str
) -> None:
    verifier.routes["POST /v1/snapshots"] = _bad_answers(verifier)[answer]
    proc = start_daemon(state, check_in="0.2s", report="1h")
    try:
        assert wait_until(lambda: len(verifier.seen("POST /v1/snapshots")) >= 3, 60)
        assert spooled(state) == [f"{1:020d}.dsse.json"]
        assert wait_until(lambda: last_error_code(state) == answer, 30)
        assert not list((state / "spool").glob(f"{REJECTED}/*"))
        verifier.routes["POST /v1/snapshots"] = verifier.honest_submit
        assert wait_until(lambda: spooled(state) == [], 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 20) == 0
    assert events(state, answer)  # logged under its code
    assert events(state, "delivered")
