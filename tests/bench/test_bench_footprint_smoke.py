"""The agent footprint benchmark still runs (5 s, 50 files), so it cannot rot between full runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_footprint_bench_smoke_measures_the_daemon_and_one_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_agent_footprint.py"),
            "--smoke",
            "--data-dir",
            str(data),
            "--json",
            str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| resident memory of `veu-agent run`",
        "| average CPU of `veu-agent run` over 5 s",
        "| start-up: imports, first snapshot (50 files hashed), first delivery",
        "| one full snapshot, 8 GPUs + 50 weight files, hash cache warm",
        "| same, hash cache cold (every file hashed)",
    ]
    assert all("(smoke: not judged)" in row for row in rows[:2])
    raw = json.loads(figures.read_text())
    assert raw["daemon"]["rss_peak_mb"] > 0 and raw["daemon"]["deliveries"] >= 1
    assert raw["snapshot"]["files"] == 50 and raw["snapshot"]["gpus"] == 8
    assert not data.exists()  # generated data is deleted afterwards
