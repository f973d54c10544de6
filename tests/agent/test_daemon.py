"""The daemon's loop, tick by tick, with a fake verifier and clock and a real chain and spool."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.chain import Chain
from agent.config import AgentConfig
from agent.daemon import (
    MAX_RETRY_AFTER,
    Daemon,
    DeliveryError,
    Identity,
    SnapshotFailed,
    SnapshotInterrupted,
    Spooled,
    Verifier,
    backoff_bounds,
    backoff_delay,
    snapshot_in_child,
)
from agent.spool import CORRUPT, REJECTED, Spool, SpoolFull, file_name
from agent.status import render
from contract import (
    AgentInfo,
    HostInfo,
    Posture,
    SnapshotV1,
    format_timestamp,
    parse_envelope,
    parse_statement,
)
from contract.keys import key_id as compute_key_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_800_000_000.0

    def mono(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


class FakeVerifier:
    """Accepts envelopes in chain order; scripted failures pop from ``failures`` first."""

    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.digests: set[str] = set()
        self.failures: list[DeliveryError] = []
        self.checkin_failures: list[DeliveryError] = []
        self.challenge: str | None = None
        self.checkins = 0
        self.on_submit: Callable[[], None] | None = None
        self.nonces: list[str | None] = []

    def checkin(self) -> str | None:
        self.checkins += 1
        if self.checkin_failures:
            raise self.checkin_failures.pop(0)
        return self.challenge

    def submit(self, envelope: bytes) -> None:
        if self.on_submit is not None:
            self.on_submit()
        if self.failures:
            raise self.failures.pop(0)
        parsed = parse_envelope(envelope)
        _, snapshot = parse_statement(parsed.payload_bytes())
        digest = parsed.payload_bytes()
        key = digest.hex()
        if key in self.digests:
            return  # idempotent duplicate
        self.digests.add(key)
        self.accepted.append(snapshot.seq)
        self.nonces.append(snapshot.nonce)


class Host:
    """A daemon on a tmp state dir with a real chain and spool and counters for the fakes."""

    def __init__(self, tmp_path: Path, *, max_bytes: int = 1_000_000, **config: object) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.key_id = compute_key_id(self.key.public_key())
        base = AgentConfig(
            state_dir=tmp_path / "state",
            check_in_interval=60.0,
            report_interval=900.0,
            spool_max_bytes=max_bytes,
        )
        self.config = replace(base, **config)  # type: ignore[arg-type]
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(self.config.state_dir / "spool", max_bytes)
        self.clock = Clock()
        self.verifier = FakeVerifier()
        self.fingerprint = "fp-1"
        self.taken = 0
        self.daemon = self.new_daemon()

    def take(self, config: AgentConfig, nonce: str | None) -> Spooled:
        def build(seq: int, prev: str | None) -> SnapshotV1:
            return SnapshotV1(
                agent=AgentInfo(key_id=self.key_id, version="test"),
                site_id="site-1",
                host=HostInfo(hostname="h1"),
                seq=seq,
                prev=prev,
                nonce=nonce,
                collected_at=format_timestamp(datetime.now(UTC)),
                accelerators=[],
                storage=[],
                posture=Posture(),
                errors=[],
            )

        taken = Chain(config.state_dir, self.key, outbox=self.spool).advance(build)
        self.taken += 1
        return Spooled(taken.snapshot.seq, taken.digest, len(taken.raw))

    def new_daemon(self) -> Daemon:
        def factory(config: AgentConfig) -> Verifier:
            return self.verifier

        return Daemon(
            self.config,
            identity=Identity(self.key_id, "site-1", "host-1", "http://127.0.0.1:1"),
            spool=self.spool,
            take=self.take,
            fingerprint=lambda config: self.fingerprint,
            verifier_factory=factory,
            clock=self.clock.mono,
            wall=self.clock.time,
            rng=random.Random(7),
        )

    def tick(self, stop: threading.Event | None = None) -> float:
        return self.daemon.tick(stop or threading.Event())

    def status(self) -> dict[str, object]:
        loaded = json.loads((self.config.state_dir / "status.json").read_text())
        assert isinstance(loaded, dict)
        return loaded


def transient(code: str = "unavailable", retry_after: float | None = None) -> DeliveryError:
    return DeliveryError(code, "verifier answered 503", transient=True, retry_after=retry_after)


def test_first_tick_takes_a_snapshot_and_delivers_it(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.tick()
    assert host.verifier.accepted == [1]
    assert host.spool.depth == 0
    status = host.status()
    assert status["chain_head"] == {"seq": 1, "digest": host.daemon.state.head["digest"]}  # type: ignore[index]
    assert status["last_success"]["seq"] == 1  # type: ignore[index]


def test_snapshots_follow_the_report_interval(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=60.0, report_interval=300.0)
    host.tick()
    for _ in range(10):
        host.clock.advance(60.0)
        host.tick()
    assert host.taken == 3  # at 0 s, ~300 s and ~600 s
    assert host.verifier.accepted == [1, 2, 3]


def test_the_wait_returned_is_the_time_to_the_next_check_in(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=60.0)
    delay = host.tick()
    assert 54.0 <= delay <= 66.0  # interval with +-10 % jitter


def test_envelopes_spooled_during_an_outage_go_out_in_order_exactly_once(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=10.0, report_interval=10.0)
    host.verifier.failures = [transient() for _ in range(5)]
    host.verifier.checkin_failures = [transient() for _ in range(5)]
    for _ in range(5):
        host.tick()
        host.clock.advance(11.0)
    assert host.verifier.accepted == []
    assert host.spool.depth == 5
    for _ in range(5):
        host.tick()
        host.clock.advance(11.0)
    accepted = host.verifier.accepted
    assert accepted == sorted(accepted) and len(accepted) == len(set(accepted))
    assert accepted[:5] == [1, 2, 3, 4, 5]
    assert host.spool.depth == 0


def test_transient_failure_keeps_the_envelope_and_backs_off(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.verifier.failures = [transient(), transient()]
    host.verifier.challenge = None
    host.tick()
    assert host.spool.pending() == [1]
    first = host.daemon.seconds_until_due()
    assert 0.5 <= first <= 1.0  # base 1 s at the default interval, jittered into [0.5, 1]
    host.clock.advance(first)
    host.tick()
    assert host.spool.pending() == [1]
    assert host.daemon.state.failures == 2
    status = host.status()
    assert status["consecutive_failures"] == 2
    assert "retry in" in status["last_error"]["detail"]  # type: ignore[index]
    host.clock.advance(host.daemon.seconds_until_due())
    host.tick()
    assert host.verifier.accepted == [1] and host.spool.depth == 0
    assert host.daemon.state.failures == 0


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    base, cap = backoff_bounds(60.0)
    assert (base, cap) == (1.0, 300.0)
    delays = [backoff_delay(n, base=base, cap=cap, rng=rng, retry_after=None) for n in range(1, 15)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(cap, base * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= cap


def test_short_intervals_give_short_backoff_for_tests_and_demos() -> None:
    base, cap = backoff_bounds(0.2)
    assert base == pytest.approx(0.05) and cap == pytest.approx(1.0)


def test_retry_after_is_honoured_but_bounded() -> None:
    rng = random.Random(1)
    assert backoff_delay(1, base=1, cap=300, rng=rng, retry_after=120) == 120
    assert backoff_delay(1, base=1, cap=300, rng=rng, retry_after=1e9) == MAX_RETRY_AFTER


def test_a_check_in_does_not_cut_a_retry_after_short(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=10.0)
    host.verifier.failures = [transient(retry_after=100.0)]
    host.tick()
    for _ in range(5):  # check-ins every ~10 s succeed, but the verifier asked for 100 s
        host.clock.advance(11.0)
        host.tick()
    assert host.verifier.accepted == []
    host.clock.advance(50.0)
    host.tick()
    assert host.verifier.accepted == [1]


def test_a_successful_check_in_retries_delivery_at_once(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=60.0)
    host.verifier.failures = [transient() for _ in range(8)]
    for _ in range(8):  # backoff grows to minutes
        host.clock.advance(host.daemon.seconds_until_due())
        host.tick()
    host.verifier.failures = []
    host.clock.advance(61.0)
    host.tick()
    assert host.verifier.accepted == [1]


def test_permanent_rejection_moves_the_envelope_to_rejected_and_reports_it(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path, report_interval=60.0, check_in_interval=60.0)
    host.verifier.failures = [
        DeliveryError("revoked_key", "host key was revoked", transient=False, status=403)
    ]
    host.tick()
    assert host.verifier.accepted == []
    assert host.spool.depth == 0
    rejected = host.spool.quarantined(REJECTED)
    assert [(r.seq, r.code) for r in rejected] == [(1, "revoked_key")]
    status = host.status()
    assert status["recent_rejections"][0]["code"] == "revoked_key"  # type: ignore[index]
    assert status["last_error"]["code"] == "rejected"  # type: ignore[index]
    submits_before = len(host.verifier.digests)
    host.clock.advance(61.0)
    host.tick()  # the rejected envelope is not sent again; the next snapshot is
    assert host.verifier.accepted == [2]
    assert len(host.verifier.digests) == submits_before + 1
    text, code = render(host.config.state_dir, as_json=False)
    assert code == 1 and "rejected" in text and "revoked_key" in text


def test_a_rejection_does_not_hold_back_the_envelopes_after_it(tmp_path: Path) -> None:
    host = Host(tmp_path, report_interval=10.0, check_in_interval=10.0)
    host.verifier.checkin_failures = [transient() for _ in range(3)]
    host.verifier.failures = [transient() for _ in range(3)]
    for _ in range(3):
        host.tick()
        host.clock.advance(11.0)
    assert host.spool.pending() == [1, 2, 3]
    host.verifier.failures = [DeliveryError("fork", "second child", transient=False)]
    host.tick()
    assert [r.seq for r in host.spool.quarantined(REJECTED)] == [1]
    assert host.verifier.accepted == [2, 3, 4]


def test_corrupt_spool_file_is_quarantined_and_the_rest_delivered(tmp_path: Path) -> None:
    host = Host(tmp_path, report_interval=10.0, check_in_interval=10.0)
    host.verifier.failures = [transient() for _ in range(3)]
    host.verifier.checkin_failures = [transient() for _ in range(3)]
    for _ in range(3):
        host.tick()
        host.clock.advance(11.0)
    damaged = host.spool.directory / file_name(2)
    damaged.write_bytes(damaged.read_bytes()[:50])
    host.tick()
    assert host.verifier.accepted == [1, 3, 4]
    assert [q.seq for q in host.spool.quarantined(CORRUPT)] == [2]
    status = host.status()
    assert status["spool"]["corrupt"] == 1  # type: ignore[index]
    assert status["last_error"]["code"] == "spool_corrupt"  # type: ignore[index]


def test_a_pending_challenge_gets_one_nonce_bound_snapshot_at_once(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=60.0, report_interval=900.0)
    host.tick()
    host.verifier.challenge = "nonce-abc"
    host.clock.advance(61.0)
    host.tick()
    assert host.verifier.accepted == [1, 2]
    assert host.verifier.nonces == [None, "nonce-abc"]
    host.clock.advance(61.0)
    host.tick()  # the verifier still lists it (e.g. slow to update): not answered twice
    assert host.taken == 2


def test_an_accelerator_change_triggers_a_snapshot_between_reports(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=60.0, report_interval=900.0)
    host.tick()
    host.clock.advance(61.0)
    host.tick()
    assert host.taken == 1
    host.fingerprint = "fp-2"
    host.clock.advance(61.0)
    host.tick()
    assert host.taken == 2
    assert host.status()["last_snapshot"]["reason"] == "accelerators_changed"  # type: ignore[index]
    host.clock.advance(61.0)
    host.tick()
    assert host.taken == 2


def test_full_spool_stops_snapshots_loudly_and_recovers_when_deliveries_make_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Host(tmp_path / "probe")
    probe.tick()
    one = probe.daemon._last_size
    host = Host(tmp_path / "real", max_bytes=one * 3 + one // 2, report_interval=10.0)
    host.config.check_in_interval = 10.0
    host.verifier.failures = [transient() for _ in range(100)]
    host.verifier.checkin_failures = [transient() for _ in range(100)]
    for _ in range(8):
        host.tick()
        host.clock.advance(11.0)
    assert host.spool.pending() == [1, 2, 3]  # nothing dropped, nothing new beyond the bound
    assert host.taken == 3
    status = host.status()
    assert status["spool"]["full"] is True  # type: ignore[index]
    assert status["next_snapshot_at"] is None
    assert any(r.getMessage() == "spool_full" and r.levelname == "ERROR" for r in caplog.records)
    text, code = render(host.config.state_dir, as_json=False)
    assert "SPOOL FULL" in text and code == 1
    host.verifier.failures = []
    host.verifier.checkin_failures = []
    for _ in range(3):
        host.clock.advance(11.0)
        host.tick()
    assert host.verifier.accepted[:3] == [1, 2, 3]
    assert host.verifier.accepted == sorted(host.verifier.accepted)
    assert host.status()["spool"]["full"] is False  # type: ignore[index]
    assert host.taken > 3


def test_stop_lets_the_current_send_finish_and_sends_no_more(tmp_path: Path) -> None:
    host = Host(tmp_path, report_interval=10.0, check_in_interval=10.0)
    host.verifier.failures = [transient() for _ in range(3)]
    host.verifier.checkin_failures = [transient() for _ in range(3)]
    for _ in range(3):
        host.tick()
        host.clock.advance(11.0)
    stop = threading.Event()
    host.verifier.on_submit = stop.set
    host.daemon._drain(stop)
    assert host.verifier.accepted == [1]
    assert host.spool.pending() == [2, 3]


def test_a_restart_within_the_report_interval_does_not_snapshot_again(tmp_path: Path) -> None:
    host = Host(tmp_path, report_interval=900.0)
    host.tick()
    host.clock.advance(100.0)
    host.daemon = host.new_daemon()
    host.tick()
    assert host.taken == 1
    host.clock.advance(801.0)
    host.tick()
    assert host.taken == 2


def test_reload_applies_new_intervals_and_spool_limit(tmp_path: Path) -> None:
    host = Host(tmp_path, report_interval=900.0)
    host.tick()
    host.daemon.reconfigure(replace(host.config, report_interval=120.0, spool_max_bytes=4096))
    assert host.spool.max_bytes == 4096
    host.clock.advance(121.0)
    host.tick()
    assert host.taken == 2


def test_a_failing_snapshot_is_reported_and_retried_later(tmp_path: Path) -> None:
    host = Host(tmp_path, check_in_interval=60.0)
    real = host.take
    calls = {"n": 0}

    def flaky(config: AgentConfig, nonce: str | None) -> Spooled:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("collector exploded")
        return real(config, nonce)

    host.daemon._take = flaky
    host.tick()
    assert host.status()["last_error"]["code"] == "snapshot_failed"  # type: ignore[index]
    host.clock.advance(61.0)
    host.tick()
    assert host.verifier.accepted == [1]


def test_status_json_names_key_site_verifier_head_spool_and_schedule(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.tick()
    text, code = render(host.config.state_dir, as_json=True)
    status = json.loads(text)
    assert status["key_id"] == host.key_id
    assert status["site_id"] == "site-1"
    assert status["verifier"] == "http://127.0.0.1:1"
    assert status["chain_head"]["seq"] == 1
    assert status["spool"]["depth"] == 0 and status["spool"]["bytes"] == 0
    assert status["last_success"]["seq"] == 1
    assert status["next_snapshot_at"] and status["next_checkin_at"]
    assert status["state"] == "running" and code == 0


def test_status_without_any_agent_state_says_what_to_do(tmp_path: Path) -> None:
    text, code = render(tmp_path, as_json=False)
    assert code == 3 and "veu-agent init" in text


def test_status_with_a_damaged_public_key_file_still_renders(tmp_path: Path) -> None:
    from agent import keys

    keys.create(tmp_path)
    (tmp_path / keys.PUBLIC_NAME).write_text("not a key")
    text, _ = render(tmp_path, as_json=True)
    assert json.loads(text)["code"] == "no_status"  # as without a key, not a crash


def test_a_snapshot_taken_in_a_child_process_reaches_the_parent_spool(tmp_path: Path) -> None:
    host = Host(tmp_path)
    parent = Spool(host.spool.directory, 1_000_000)
    done = snapshot_in_child(lambda: host.take(host.config, None), threading.Event())
    assert done.seq == 1 and done.size > 0
    assert parent.pending() == []  # written by another process: the parent must look again
    parent.refresh()
    assert parent.pending() == [1]
    assert parent.bytes_used == done.size


def test_a_full_spool_in_the_child_is_a_full_spool_in_the_parent() -> None:
    def full() -> Spooled:
        raise SpoolFull("spool is full (test)")

    with pytest.raises(SpoolFull, match="full"):
        snapshot_in_child(full, threading.Event())


def test_a_failing_or_dying_snapshot_child_is_reported_with_a_code() -> None:
    def boom() -> Spooled:
        raise RuntimeError("collector exploded")

    with pytest.raises(SnapshotFailed) as info:
        snapshot_in_child(boom, threading.Event())
    assert info.value.code == "snapshot_failed" and "collector exploded" in info.value.detail

    def die() -> Spooled:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    with pytest.raises(SnapshotFailed) as died:
        snapshot_in_child(die, threading.Event())
    assert died.value.code == "snapshot_worker_died" and "signal 9" in died.value.detail


def test_stopping_interrupts_a_snapshot_child() -> None:
    def slow() -> Spooled:
        time.sleep(30)
        raise AssertionError("not interrupted")

    stop = threading.Event()
    stop.set()
    with pytest.raises(SnapshotInterrupted):
        snapshot_in_child(slow, stop, poll_s=0.01)
