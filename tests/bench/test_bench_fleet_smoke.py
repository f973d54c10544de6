"""The fleet benchmarks of issue 7 still run end to end (tiny loads), so they cannot rot:
bench/fleet.py (the simulator), bench_soak.py, bench_scale.py, bench_workers.py (PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_simulate_registers_a_subcommand_that_runs_the_simulator() -> None:
    from server.cli import build_parser, devtools

    args = build_parser().parse_args(["simulate", "--url", "http://127.0.0.1:1", "--hosts", "5"])
    assert args.func is devtools.run_simulate and args.hosts == 5 and args.concurrency == 8


@pytest.mark.slow
def test_the_fleet_simulator_enrolls_hosts_and_keeps_every_chain_with_changes_and_challenges(
    tmp_path: Path,
) -> None:
    result = _bench(
        str(REPO / "bench" / "fleet.py"),
        "--hosts",
        "20",
        "--seconds",
        "4",
        "--rate",
        "20",
        "--change-rate",
        "0.3",
        "--challenge-rate",
        "0.2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["hosts"] == 20 and report["enroll"]["errors"] == 0
    traffic = report["traffic"]
    assert traffic["errors"] == 0 and traffic["accepted"] >= 20
    assert traffic["inventory_changes"] > 0 and traffic["challenges"] > 0
    assert traffic["p50_ms"] <= traffic["p95_ms"] <= traffic["p99_ms"]


@pytest.mark.slow
def test_soak_smoke_counts_every_acknowledged_snapshot_and_samples_server_memory(
    tmp_path: Path,
) -> None:
    out = tmp_path / "soak.json"
    result = _bench(str(REPO / "bench" / "bench_soak.py"), "--smoke", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    figures = json.loads(out.read_text())
    assert figures["traffic"]["errors"] == 0
    assert figures["rows_in_db"] == figures["acknowledged"] == figures["acknowledged_present"]
    assert figures["acknowledged"] > 0 and len(figures["rss_samples"]) >= 5


@pytest.mark.slow
def test_scale_smoke_times_the_site_update_reads_and_bytes_at_two_sizes(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    result = _bench(str(REPO / "bench" / "bench_scale.py"), "--smoke", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    for size in ("sqlite_small", "sqlite_big"):
        assert figures[size]["site_status_update"]["n"] == 6
        assert figures[size]["bytes_per_snapshot_steady"]["total"] >= 0
        assert figures[size]["ingest_post_first_link"]["n"] == 5
        assert figures[size]["status_api"]["n"] == figures[size]["dashboard_page"]["n"] == 2
    assert figures["sqlite_big"]["status_accelerators"] >= 100 * 8 - 6


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_smoke_compares_one_and_two_workers_on_postgresql(tmp_path: Path) -> None:
    if not os.environ.get("VEU_TEST_PG_URL"):
        pytest.skip("VEU_TEST_PG_URL is not set")
    out = tmp_path / "workers.json"
    result = _bench(str(REPO / "bench" / "bench_workers.py"), "--smoke", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert [r["workers"] for r in figures["runs"]] == [1, 2]
    assert all(r["errors"] == 0 and r["accepted"] == 40 for r in figures["runs"])
    assert all(
        set(r["cpu_s"]) == {"load_generator", "server_workers", "postgresql"}
        for r in figures["runs"]
    )
