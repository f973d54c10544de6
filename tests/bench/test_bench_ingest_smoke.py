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
    # The same work in process, and the bound on this machine derived from it.
    lines = result.stdout.splitlines()
    local = next(line for line in lines if "in process, no HTTP, SQLite" in line)
    cells = [cell.strip() for cell in local.strip("|").split("|")]
    assert cells[1] == "20" and cells[5] == "0" and float(cells[7]) > 0
    assert "snapshots/s at most**" in result.stdout


def test_write_puts_the_new_run_first_and_keeps_the_earlier_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import bench_ingest

    (tmp_path / "bench").mkdir()
    results = tmp_path / "bench" / "RESULTS.md"
    results.write_text(
        "## Ingest (issue 3)\n\nold intro\n\n### Run of yesterday\n\nold table\n\n"
        "### History\n\nrows\n\n## Policy evaluation (issue 4)\n\nkept\n"
    )
    monkeypatch.setattr(bench_ingest, "REPO", tmp_path)
    bench_ingest.write_section("## Ingest (issue 3)\n\nnew intro\n\n### Latest run (today)\n\nt\n")
    assert results.read_text() == (
        "## Ingest (issue 3)\n\nnew intro\n\n### Latest run (today)\n\nt\n\n"
        "### Run of yesterday\n\nold table\n\n### History\n\nrows\n\n"
        "## Policy evaluation (issue 4)\n\nkept\n"
    )
