"""The TPM evidence benchmark still runs (a few rounds), so it cannot rot between full runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tpm_bench_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_tpm.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| quote check")]
    assert len(rows) == 1 and "(smoke: not judged)" in rows[0]
