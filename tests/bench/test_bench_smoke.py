"""The weight-scan benchmark still runs (tiny sizes), so it cannot rot between full runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_scan_bench_smoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_scan.py"), "--smoke", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| cold scan, 8 files, 8 MiB, page cache warm",
        "| rescan, 300 unchanged files, cache warm",
        "| peak RSS, one 16 MiB file",
    ]
    assert all("(smoke: not judged)" in row for row in table[2:])
    assert not data.exists()  # generated data is deleted afterwards
