"""Smoke run of bench/bench_attest.py so the benchmark never rots (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_attest_bench_smoke_runs_and_reports_both_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_attest.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "veu-agent attest" in done.stdout and "veu-agent snapshot" in done.stdout
