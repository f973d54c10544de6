"""Fault injection with real processes on loopback: the agent never loses or duplicates evidence.

Each test runs a real ``veu-server serve`` (SQLite in a temporary directory) and a real
``veu-agent run`` (intervals of a fraction of a second, an inventory file instead of hardware),
breaks something, and ends with :func:`assert_nothing_lost`: every seq the agent's chain produced
is held by the verifier or still in the spool, none twice, and the verifier's chain has no gap.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import signal
import threading
import time

import pytest

from agent.spool import Spool
from tests.faults.harness import (
    AgentProcess,
    VerifierProcess,
    assert_nothing_lost,
    ledger,
    wait_for,
)
from tests.faults.proxy import Fault, FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def held(verifier: VerifierProcess, agent: AgentProcess) -> list[int]:
    return [int(s["seq"]) for s in verifier.snapshots(agent.key_id)]


def findings(verifier: VerifierProcess, agent: AgentProcess) -> dict[int, str]:
    return {int(s["seq"]): json.dumps(s["findings"]) for s in verifier.snapshots(agent.key_id)}


def drain_and_stop(verifier: VerifierProcess, agent: AgentProcess, timeout: float = 60.0) -> None:
    """Wait until the verifier holds the agent's whole chain, then SIGTERM it (exit 0)."""
    wait_for(
        lambda: len(agent.events("started")) >= agent.runs,
        timeout=timeout,
        what="the agent to start",
    )
    wait_for(
        lambda: not agent.spooled() and max(held(verifier, agent), default=0) >= agent.head_seq(),
        timeout=timeout,
        what="the verifier to hold the agent's whole chain",
        step=0.1,
    )
    assert agent.terminate() == 0, "SIGTERM must end the daemon cleanly (exit 0)"


def test_snapshots_taken_while_the_verifier_is_down_arrive_once_in_order_without_a_gap(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    verifier.stop()
    agent.start()
    wait_for(lambda: len(agent.spooled()) >= 6, timeout=60, what="6 snapshots spooled")
    taken_while_down = agent.spooled()
    verifier.start()
    drain_and_stop(verifier, agent)
    seqs = assert_nothing_lost(verifier, agent)
    assert set(taken_while_down) <= set(seqs)
    assert seqs[: len(taken_while_down)] == taken_while_down
    assert not any("chain.gap" in f for f in findings(verifier, agent).values())
    assert agent.quarantined("rejected") == [] and agent.quarantined("corrupt") == []


def test_agent_killed_at_random_points_of_its_send_loop_loses_and_duplicates_nothing(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    rng = random.Random(5)
    kills = 0
    for run in range(1, 51):
        agent.start()
        wait_for(
            lambda n=run: len(agent.events("started")) >= n,  # type: ignore[misc]
            timeout=30,
            what=f"agent run {run} to start",
            step=0.02,
        )
        time.sleep(rng.uniform(0.0, 0.6))
        agent.kill()
        kills += 1
        assert_nothing_lost(verifier, agent)
    assert kills >= 50
    delivered = agent.events("delivered")
    assert len(delivered) >= 25, "the kills must land while the agent is delivering"
    agent.report = "1h"
    agent.start()
    drain_and_stop(verifier, agent)
    seqs = assert_nothing_lost(verifier, agent, fully_delivered=True)
    assert seqs == list(range(1, agent.head_seq() + 1))
    assert agent.quarantined("rejected") == [] and agent.quarantined("corrupt") == []


def test_every_acknowledged_envelope_survives_the_verifier_being_killed_during_ingest(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    rng = random.Random(11)
    agent.start()
    for _ in range(5):
        before = len(agent.events("delivered"))
        wait_for(
            lambda b=before: len(agent.events("delivered")) >= b + 3,  # type: ignore[misc]
            timeout=60,
            what="more deliveries",
            step=0.05,
        )
        time.sleep(rng.uniform(0.0, 0.3))
        verifier.kill()
        acknowledged = {int(e["seq"]) for e in agent.events("delivered")}
        verifier.start()
        missing = acknowledged - set(held(verifier, agent))
        assert not missing, f"acknowledged but gone after a verifier crash: {sorted(missing)}"
    drain_and_stop(verifier, agent)
    assert_nothing_lost(verifier, agent)


def test_everything_is_delivered_through_5xx_timeouts_resets_and_slow_answers(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    kinds = [
        Fault.PASS,
        Fault.ERROR_503,
        Fault.PASS,
        Fault.ERROR_AFTER,
        Fault.RESET,
        Fault.PASS,
        Fault.RESET_AFTER,
        Fault.SLOW,
        Fault.PASS,
        Fault.HANG,
    ]
    schedule = itertools.cycle(kinds)
    lock = threading.Lock()

    def choose(method: str, path: str) -> Fault:
        with lock:
            return next(schedule)

    with FaultProxy(verifier.port, choose=choose, retry_after=0.3, hang_s=2.5) as proxy:
        agent.server_url = proxy.url
        agent.report = "0.5s"
        agent.start()
        wait_for(
            lambda: min(proxy.counts[f] for f in kinds) >= 2 and len(held(verifier, agent)) >= 8,
            timeout=120,
            what="every kind of fault twice and 8 deliveries",
            step=0.2,
        )
        proxy.choose = lambda method, path: Fault.PASS
        drain_and_stop(verifier, agent)
    seqs = assert_nothing_lost(verifier, agent)
    assert len(seqs) >= 8
    assert agent.quarantined("rejected") == []
    submitted_twice = [
        d for d, n in _post_counts(proxy).items() if n > 1
    ]  # lost acknowledgements were resent and answered as duplicates, not stored twice
    assert submitted_twice, "the schedule drops acknowledgements, so some envelopes went twice"


def test_an_envelope_answered_2xx_without_a_signed_result_stays_until_one_comes_back(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    with FaultProxy(
        verifier.port,
        choose=lambda method, path: (
            Fault.NO_RESULT_AFTER if path == "/v1/snapshots" else Fault.PASS
        ),
    ) as proxy:
        agent.server_url = proxy.url
        agent.report = "1h"
        agent.start()
        wait_for(
            lambda: proxy.counts[Fault.NO_RESULT_AFTER] >= 3,
            timeout=60,
            what="three submissions answered without a result",
        )
        # The verifier holds seq 1, but the agent has seen no result for it: it stays spooled.
        assert held(verifier, agent) == [1]
        assert agent.spooled() == [1]
        status, code = agent.status()
        assert status["last_error"]["code"] == "no_result" and code == 1
        assert agent.events("no_result")
        proxy.choose = lambda method, path: Fault.PASS
        drain_and_stop(verifier, agent)  # the resend is answered as a duplicate, with its result
    assert_nothing_lost(verifier, agent, fully_delivered=True)
    assert agent.quarantined("rejected") == []
    assert max(_post_counts(proxy).values()) >= 4


def _post_counts(proxy: FaultProxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, path, digest, _fault in proxy.requests:
        if method == "POST" and path == "/v1/snapshots":
            counts[digest] = counts.get(digest, 0) + 1
    return counts


def test_envelopes_rejected_for_a_revoked_key_are_set_aside_reported_and_not_retried(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    with FaultProxy(verifier.port) as proxy:
        agent.server_url = proxy.url
        agent.start()
        wait_for(lambda: len(held(verifier, agent)) >= 2, timeout=60, what="2 deliveries")
        verifier.revoke(agent.key_id)
        wait_for(
            lambda: len(agent.quarantined("rejected")) >= 3,
            timeout=60,
            what="3 rejected envelopes",
        )
        time.sleep(1.0)  # time enough for many retries, were there any
        assert agent.running(), "a permanent rejection must not stop the daemon"
        rejected = agent.quarantined("rejected")
        posts = _post_counts(proxy)
        folder = agent.state_dir / "spool" / "rejected"
        for path in folder.glob("*.dsse.json"):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert posts.get(digest) == 1, f"{path.name} was sent {posts.get(digest)} times"
        reasons = [json.loads(p.read_text()) for p in folder.glob("*.reason.json")]
        assert {r["code"] for r in reasons} == {"revoked_key"}
        status, code = agent.status()
        assert code == 1
        assert status["spool"]["rejected"] >= len(rejected)
        assert status["recent_rejections"][-1]["code"] == "revoked_key"
        assert any(e.get("code_from_verifier") == "revoked_key" for e in agent.events("rejected"))
        assert agent.terminate() == 0


def test_a_full_spool_stops_new_snapshots_loudly_without_corruption_and_recovers(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    verifier.stop()
    agent.start()
    wait_for(lambda: len(agent.spooled()) >= 1, timeout=60, what="a first snapshot")
    size = (agent.state_dir / "spool" / f"{1:020d}.dsse.json").stat().st_size
    agent.spool_max_bytes = size * 3 + size // 2  # room for three envelopes
    agent.write_config()
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: bool(agent.events("config_reloaded")), timeout=30, what="SIGHUP reload")
    wait_for(lambda: bool(agent.events("spool_full")), timeout=60, what="spool_full")
    time.sleep(1.0)
    assert agent.running()
    assert agent.spooled() == [1, 2, 3], "nothing dropped, nothing beyond the bound"
    assert all(e["level"] == "error" for e in agent.events("spool_full"))
    spool_dir = agent.state_dir / "spool"
    assert sorted(p.name for p in spool_dir.iterdir() if p.is_file()) == [
        f"{n:020d}.dsse.json" for n in (1, 2, 3)
    ], "no partial or temporary files"
    check = Spool(spool_dir, 1 << 30)
    for seq in (1, 2, 3):
        check.read(seq)  # each a valid envelope for its seq
    status, code = agent.status()
    assert status["spool"]["full"] is True and code == 1
    assert status["next_snapshot_at"] is None
    verifier.start()
    wait_for(lambda: len(held(verifier, agent)) >= 5, timeout=60, what="recovery")
    drain_and_stop(verifier, agent)
    seqs = assert_nothing_lost(verifier, agent)
    assert seqs[:5] == [1, 2, 3, 4, 5]
    assert not any("chain.gap" in f for f in findings(verifier, agent).values())
    assert agent.status()[0]["spool"]["full"] is False


def test_a_truncated_or_forged_spool_file_is_quarantined_and_the_rest_delivered(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    verifier.stop()
    agent.start()
    wait_for(lambda: len(agent.spooled()) >= 4, timeout=60, what="4 snapshots spooled")
    assert agent.terminate() == 0
    spool_dir = agent.state_dir / "spool"
    truncated = spool_dir / f"{2:020d}.dsse.json"
    truncated.write_bytes(truncated.read_bytes()[:200])
    forged = spool_dir / f"{3:020d}.dsse.json"
    envelope = json.loads(forged.read_bytes())
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(64)).decode()
    forged.write_text(json.dumps(envelope))
    spooled = agent.spooled()
    verifier.start()
    agent.report = "1h"
    agent.start()
    wait_for(lambda: agent.spooled() == [], timeout=60, what="the spool to drain")
    assert agent.terminate() == 0
    assert agent.quarantined("corrupt") == [2, 3]
    for seq in (2, 3):
        note = json.loads((spool_dir / "corrupt" / f"{seq:020d}.reason.json").read_text())
        assert note["code"] == "spool_corrupt" and note["reason"]
    seqs = assert_nothing_lost(verifier, agent, missing_ok=frozenset({2, 3}))
    assert set(spooled) - {2, 3} <= set(seqs)
    assert "chain.gap" in findings(verifier, agent)[4], "the verifier reports the missing evidence"
    status, code = agent.status()
    assert status["spool"]["corrupt"] == 2 and code == 1
    assert any(e.get("seq") in (2, 3) for e in agent.events("spool_corrupt"))
    held_seqs, _, _ = ledger(verifier, agent)
    assert 2 not in held_seqs and 3 not in held_seqs
