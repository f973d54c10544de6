"""Fixtures for the fault-injection tests: an enrolled agent and its verifier, real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import AgentProcess, VerifierProcess


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[VerifierProcess]:
    process = VerifierProcess(tmp_path / "server")
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def agent(tmp_path: Path, verifier: VerifierProcess) -> Iterator[AgentProcess]:
    """An agent enrolled at a running verifier (the test decides what runs next)."""
    token = verifier.setup_site()
    verifier.start()
    process = AgentProcess(tmp_path / "agent" / "state")
    process.state_dir.parent.mkdir(parents=True)
    process.enroll(verifier.url, token)
    try:
        yield process
    finally:
        process.kill()
