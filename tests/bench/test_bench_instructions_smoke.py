"""The instruction benchmark still runs end to end under callgrind (a tiny load, this checkout),
so it cannot rot; without valgrind it says why and measures nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_instructions  # noqa: E402


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_instructions.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_counts_the_ingest_loop_of_this_checkout_under_callgrind() -> None:
    missing = bench_instructions.missing_tools("valgrind")
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the instruction benchmark: {missing}")
        pytest.skip(missing)
    result = run("--smoke", "--label", "this checkout", timeout=840)
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| this checkout"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3:5] == ["4", "0"]  # 2 hosts x 2 snapshots, no errors
    loop = int(cells[5].replace(",", ""))
    # Counted for the loop only: a few tens of millions per snapshot, where the whole process
    # (interpreter start, imports, set-up, enrollment) runs to billions.
    assert 4 * 1_000_000 < loop < 1_000_000_000
    assert cells[6] == f"**{loop / 4 / 1e6:.2f} M**"
    assert cells[7] == "1.000"  # the only tree is its own reference


def test_without_valgrind_it_says_so_and_fails() -> None:
    result = run("--smoke", "--valgrind", "/nonexistent/valgrind", timeout=120)
    assert result.returncode == bench_instructions.UNAVAILABLE
    assert "cannot measure: valgrind not found ('/nonexistent/valgrind')" in result.stderr
    assert result.stdout == ""


def test_the_total_is_read_from_the_totals_line(tmp_path: Path) -> None:
    # What callgrind 3.19 writes when instrumentation starts switched off: summary 0 in the
    # header, the collected count on the totals line at the end.
    out = tmp_path / "callgrind.out"
    out.write_text(
        "# callgrind format\nversion: 1\npositions: line\nevents: Ir\nsummary: 0\n\n"
        "fn=(1) f\n16 5\n\ntotals: 170799259\n"
    )
    assert bench_instructions.total_instructions(out) == 170_799_259
    out.write_text("events: Ir\nsummary: 42\n")
    assert bench_instructions.total_instructions(out) == 42


def test_a_tree_over_the_tolerance_fails_the_run() -> None:
    def measured(label: str, instructions: int) -> bench_instructions.Measured:
        tree = bench_instructions.Tree(Path("/x") / label, label, "0")
        return bench_instructions.Measured(tree, instructions, 100, 0, "api")

    base = measured("before", 1_169_000_000)
    within = measured("after", int(1_169_000_000 * 1.019))
    beyond = measured("worse", int(1_169_000_000 * 1.021))
    assert bench_instructions.over_tolerance([base, within], 0.02) == []
    [line] = bench_instructions.over_tolerance([base, within, beyond], 0.02)
    assert line.startswith("worse: 11.94 M instructions per snapshot, +2.1% against before")
