"""On-demand and change-driven snapshots with real processes: the daemon answers within seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.harness import INVENTORY, AgentProcess, VerifierProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_a_challenge_requested_by_an_admin_is_answered_once_with_its_nonce(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    agent.report = "1h"
    agent.start()
    wait_for(lambda: len(verifier.snapshots(agent.key_id)) >= 1, timeout=60, what="first snapshot")
    answer = verifier.api("POST", "/v1/challenges", {"host": agent.key_id})
    nonce = answer["challenges"][0]["nonce"]

    def answered() -> list[int]:
        return [int(s["seq"]) for s in verifier.snapshots(agent.key_id) if s["nonce"] == nonce]

    wait_for(lambda: bool(answered()), timeout=30, what="the nonce-bound snapshot")
    wait_for(lambda: agent.status()[0].get("checkins", 0) >= 5, timeout=30, what="more check-ins")
    assert len(answered()) == 1, "one challenge, one answer"
    reasons = [e["reason"] for e in agent.events("snapshot_taken")]
    assert reasons.count("challenge") == 1
    assert agent.terminate() == 0


def test_a_changed_accelerator_inventory_is_reported_before_the_next_scheduled_snapshot(
    verifier: VerifierProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.json"
    declared = json.loads(INVENTORY.read_text())
    inventory.write_text(json.dumps(declared))
    agent.inventory = inventory
    agent.report = "1h"
    agent.start()
    wait_for(lambda: len(verifier.snapshots(agent.key_id)) >= 1, timeout=60, what="first snapshot")
    declared["accelerators"] = declared["accelerators"][:7]  # a GPU was pulled
    inventory.write_text(json.dumps(declared))
    wait_for(
        lambda: any(e["reason"] == "accelerators_changed" for e in agent.events("snapshot_taken")),
        timeout=30,
        what="a snapshot for the changed inventory",
    )
    wait_for(lambda: len(verifier.snapshots(agent.key_id)) >= 2, timeout=30, what="its delivery")
    assert agent.terminate() == 0


def test_attest_request_wait_reports_when_every_host_of_the_site_answered(
    verifier: VerifierProcess, agent: AgentProcess
) -> None:
    agent.report = "1h"
    agent.start()
    wait_for(lambda: len(verifier.snapshots(agent.key_id)) >= 1, timeout=60, what="first snapshot")
    last = verifier.cli("attest-request", agent.key_id, "--wait", "--timeout", "60")
    assert last == "all 1 hosts answered"
    assert any(s["nonce"] for s in verifier.snapshots(agent.key_id))
    assert agent.terminate() == 0
