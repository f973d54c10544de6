"""The ingest benchmark still runs end to end (a tiny load on SQLite), so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ingest_bench_smoke_drives_a_real_server_without_errors() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_ingest.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| HTTP ingest, SQLite, 1 worker | 20 |" in result.stdout
    assert "floor: open_envelope" in result.stdout
    # The server's CPU per snapshot is read from /proc (SQLite has no separate database CPU).
    row = next(line for line in result.stdout.splitlines() if "SQLite, 1 worker" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[7]) > 0 and cells[8] == "n/a"
