#!/usr/bin/env python3
"""Agent footprint (issue 5, "Footprint"); results go to stdout as Markdown.

1. ``veu-agent run`` against a local ``veu-server serve`` at the default intervals (check-in 60 s,
   report 15 min), on a host of 8 H100 GPUs (inventory file) and 1,000 weight files. After its
   start-up snapshot is delivered, the daemon is watched for ``--duration`` seconds (default 75,
   so that at least one jittered check-in falls inside): resident memory (psutil, sampled every
   second; peak and last) and average CPU (user+system CPU time of the daemon and its snapshot
   children over the window, divided by the window). Targets: under 60 MB and under 1 %.
   The start-up itself (interpreter, imports, first snapshot, first delivery) is reported apart.
2. The CPU cost of one full snapshot of the same host, in this process: cold (empty hash cache)
   and with the 1,000 weight files cached (best of 3), CPU time (all threads) and wall time.

``--smoke`` runs 5 s with 50 files so CI can check the script still works. Data goes under
``bench/.data/`` (gitignored) and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import sys
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.faults.harness import (  # noqa: E402
    INVENTORY,
    AgentProcess,
    VerifierProcess,
    wait_for,
)

MB = 1_000_000
MiB = 1024 * 1024


def make_weights(root: Path, count: int) -> None:
    """``count`` small, distinct safetensors files in 10 directories."""
    for i in range(count):
        folder = root / f"model-{i % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = i.to_bytes(8, "little") * 8
        header = json.dumps(
            {"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}},
            separators=(",", ":"),
        ).encode()
        header += b" " * (-len(header) % 8)
        (folder / f"shard-{i:05d}.safetensors").write_bytes(
            struct.pack("<Q", len(header)) + header + data
        )


def _cpu(process: psutil.Process) -> float:
    """User + system CPU seconds of the daemon and its reaped snapshot children."""
    t = process.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def measure_daemon(
    data: Path, weights: Path, duration: float, check_in: str, report: str
) -> dict[str, Any]:
    verifier = VerifierProcess(data / "server")
    agent = AgentProcess(data / "agent" / "state", check_in=check_in, report=report)
    agent.weight_roots = (weights,)
    agent.state_dir.parent.mkdir(parents=True)
    try:
        token = verifier.setup_site()
        verifier.start()
        agent.enroll(verifier.url, token)
        started = time.monotonic()
        agent.start()
        assert agent.proc is not None
        wait_for(lambda: bool(agent.events("delivered")), timeout=300, what="first delivery")
        process = psutil.Process(agent.proc.pid)
        startup_s = time.monotonic() - started
        startup_rss = process.memory_info().rss
        cpu_before = _cpu(process)
        checkins_before = agent.status()[0].get("checkins", 0)
        t0 = time.monotonic()
        samples: list[int] = []
        while time.monotonic() - t0 < duration:
            samples.append(process.memory_info().rss)
            time.sleep(min(1.0, max(0.0, duration - (time.monotonic() - t0))))
        cpu_after = _cpu(process)
        window = time.monotonic() - t0
        samples.append(process.memory_info().rss)
        status, _ = agent.status()
        assert agent.terminate() == 0
        return {
            "window_s": window,
            "cpu_pct": 100.0 * (cpu_after - cpu_before) / window,
            "checkins": status.get("checkins", 0) - checkins_before,
            "rss_peak_mb": max(samples) / MB,
            "rss_last_mb": samples[-1] / MB,
            "startup_s": startup_s,
            "startup_cpu_s": cpu_before,
            "startup_rss_mb": startup_rss / MB,
            "snapshots": len(agent.events("snapshot_taken")),
            "deliveries": len(agent.events("delivered")),
            "last_checkin_at": status.get("last_checkin_at"),
        }
    finally:
        agent.kill()
        verifier.kill()


def measure_snapshot(data: Path, weights: Path, repeats: int) -> dict[str, float]:
    from agent import keys
    from agent.config import AgentConfig
    from agent.snapshot import take_snapshot

    state = data / "snapshot-state"
    key = keys.create(state)
    config = AgentConfig(
        state_dir=state, inventory=INVENTORY, weight_roots=[weights], nvml=False, site_id="bench"
    )

    def one() -> tuple[float, float, int, int]:
        cpu, wall = time.process_time(), time.perf_counter()
        taken = take_snapshot(config, key, low_priority=False)
        files = sum(len(root.files) for root in taken.snapshot.storage)
        return time.process_time() - cpu, time.perf_counter() - wall, files, len(taken.raw)

    cold_cpu, cold_wall, files, size = one()
    warm = [one() for _ in range(repeats)]
    best = min(warm, key=lambda r: r[0])
    return {
        "files": files,
        "gpus": len(json.loads(INVENTORY.read_text())["accelerators"]),
        "envelope_bytes": size,
        "cold_cpu_ms": cold_cpu * 1000,
        "cold_wall_ms": cold_wall * 1000,
        "warm_cpu_ms": best[0] * 1000,
        "warm_wall_ms": best[1] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="5 s, 50 files: checks it runs")
    parser.add_argument("--duration", type=float, help="seconds to watch the daemon (75)")
    parser.add_argument("--files", type=int, help="weight files (1000)")
    parser.add_argument("--check-in-interval", default="60s")
    parser.add_argument("--report-interval", default="15m")
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench" / ".data" / "footprint")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.smoke else 75.0)
    files = args.files or (50 if args.smoke else 1000)
    if not args.smoke and duration < 60:
        parser.error("a judged run watches the daemon for at least 60 s (or pass --smoke)")

    data: Path = args.data_dir
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    load_before = os.getloadavg()
    try:
        weights = data / "weights"
        make_weights(weights, files)
        daemon = measure_daemon(
            data, weights, duration, args.check_in_interval, args.report_interval
        )
        snapshot = measure_snapshot(data, weights, 1 if args.smoke else 3)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    load_after = os.getloadavg()

    def judged(ok: bool) -> str:
        return "(smoke: not judged)" if args.smoke else ("yes" if ok else "NO")

    print("## Agent footprint (issue 5)\n")
    print(
        f"- Machine: {platform.machine()}, {psutil.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average before "
        f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    print(
        f"- Daemon: check-in {args.check_in_interval}, report {args.report_interval}, 8 GPUs "
        f"(inventory file), {files} weight files; watched {daemon['window_s']:.0f} s after its "
        f"start-up snapshot was delivered ({daemon['checkins']} check-in(s) in the window; "
        f"{daemon['snapshots']} snapshot(s) and {daemon['deliveries']} delivery(ies) in all)\n"
    )
    print("| measurement | result | target | met |")
    print("| --- | --- | --- | --- |")
    print(
        f"| resident memory of `veu-agent run` | peak **{daemon['rss_peak_mb']:.1f} MB**, "
        f"last {daemon['rss_last_mb']:.1f} MB | < 60 MB | {judged(daemon['rss_peak_mb'] < 60)} |"
    )
    print(
        f"| average CPU of `veu-agent run` over {daemon['window_s']:.0f} s | "
        f"**{daemon['cpu_pct']:.3f} %** of one core | < 1 % | {judged(daemon['cpu_pct'] < 1)} |"
    )
    print(
        f"| start-up: imports, first snapshot ({files} files hashed), first delivery | "
        f"{daemon['startup_cpu_s']:.2f} s CPU, {daemon['startup_s']:.2f} s wall, "
        f"{daemon['startup_rss_mb']:.1f} MB RSS | - | - |"
    )
    print(
        f"| one full snapshot, {snapshot['gpus']:.0f} GPUs + {snapshot['files']:.0f} weight "
        f"files, hash cache warm | **{snapshot['warm_cpu_ms']:.0f} ms CPU** "
        f"({snapshot['warm_wall_ms']:.0f} ms wall), envelope "
        f"{snapshot['envelope_bytes'] / 1024:.0f} KiB | - | - |"
    )
    print(
        f"| same, hash cache cold (every file hashed) | {snapshot['cold_cpu_ms']:.0f} ms CPU "
        f"({snapshot['cold_wall_ms']:.0f} ms wall) | - | - |"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"daemon": daemon, "snapshot": snapshot}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
