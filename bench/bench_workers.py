#!/usr/bin/env python3
"""Ingest on PostgreSQL, 1 worker vs 2 workers (issue 7), with the same load generator.

For each layout (``--sites`` sites of hosts, and all hosts in one site) a fresh PostgreSQL
database and a real ``veu-server serve --workers N``; ``--hosts`` hosts enrolled through the API
(bench/fleet.py), then ``--count`` snapshots as fast as ``--concurrency`` keep-alive connections
allow (no pacing). Reported per run: snapshots/s, p50/p95/p99, errors, and the CPU seconds of the
load generator (this process), of the server workers (the uvicorn process tree) and of
PostgreSQL (every ``postgres`` process, deltas) — all on the same cores.

``--smoke``: 8 hosts, 40 snapshots per run, one layout. ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleet import (  # noqa: E402
    SimHost,
    Traffic,
    cpu_by_pid,
    cpu_seconds,
    cpu_since,
    drive,
    enroll_fleet,
    pg_create,
    pg_drop,
    postgres_pids,
    run_async,
    start_server,
    stop_server,
    tree_pids,
)


def one_run(admin_url: str, workers: int, sites: int, args: argparse.Namespace) -> dict[str, Any]:
    url, name = pg_create(admin_url)
    try:
        with tempfile.TemporaryDirectory(prefix="veu-workers-") as tmp:
            server = start_server(Path(tmp) / "data", url, "--workers", str(workers))
            try:
                hosts: list[SimHost] = []
                per_site = max(1, args.hosts // sites)
                for _ in range(sites):
                    hosts += enroll_fleet(server, per_site, concurrency=args.concurrency).hosts
                # interleave sites so each connection's hosts span all of them
                hosts = [hosts[i * per_site + j] for j in range(per_site) for i in range(sites)]
                server_pids = tree_pids(server.process.pid)
                s0, p0, g0 = (
                    cpu_seconds(server_pids),
                    cpu_by_pid(postgres_pids()),
                    time.process_time(),
                )
                traffic = Traffic(
                    rate=0.0,
                    count=args.count,
                    seconds=args.max_seconds,
                    concurrency=args.concurrency,
                    change_rate=0.01,
                    challenge_rate=0.0,
                )
                report = run_async(drive(server.url, hosts, traffic))
                gen_cpu = time.process_time() - g0
                server_cpu = cpu_seconds(server_pids) - s0
                pg_cpu = cpu_since(p0, postgres_pids())
            finally:
                stop_server(server)
    finally:
        pg_drop(admin_url, name)
    summary = report.summary()
    return {
        "workers": workers,
        "sites": sites,
        "hosts": len(hosts),
        **{k: summary[k] for k in ("accepted", "errors", "seconds", "snapshots_per_s")},
        **{k: summary[k] for k in ("p50_ms", "p95_ms", "p99_ms")},
        "cpu_s": {
            "load_generator": round(gen_cpu, 1),
            "server_workers": round(server_cpu, 1),
            "postgresql": round(pg_cpu, 1),
        },
        "cpu_cores_busy": round((gen_cpu + server_cpu + pg_cpu) / summary["seconds"], 2)
        if summary["seconds"]
        else None,
        "error_samples": summary["error_samples"],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=os.environ.get("VEU_TEST_PG_URL"))
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.pg_url:
        print("bench_workers needs PostgreSQL: --pg-url or VEU_TEST_PG_URL", file=sys.stderr)
        return 2
    layouts = [args.sites, 1]
    if args.smoke:
        args.hosts, args.count, args.max_seconds, layouts = 8, 40, 60.0, [2]
    runs = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    for sites in layouts:
        for workers in (1, 2):
            run = one_run(args.pg_url, workers, sites, args)
            runs.append(run)
            c = run["cpu_s"]
            print(
                f"{workers} worker(s), {run['hosts']} hosts in {sites} site(s): "
                f"{run['accepted']} in {run['seconds']} s = {run['snapshots_per_s']}/s, "
                f"p50 {run['p50_ms']} p95 {run['p95_ms']} p99 {run['p99_ms']} ms, "
                f"errors {run['errors']}; CPU s: load generator {c['load_generator']}, "
                f"server {c['server_workers']}, PostgreSQL {c['postgresql']} "
                f"({run['cpu_cores_busy']} cores busy); load {run['load_after']}",
                flush=True,
            )
    ratios = {}
    for sites in layouts:
        one = next(r for r in runs if r["sites"] == sites and r["workers"] == 1)
        two = next(r for r in runs if r["sites"] == sites and r["workers"] == 2)
        if one["snapshots_per_s"]:
            ratios[f"{sites}_sites"] = round(two["snapshots_per_s"] / one["snapshots_per_s"], 2)
    print(f"ratio 2 workers / 1 worker: {ratios}; load before {load_before}")
    if args.json:
        args.json.write_text(
            json.dumps({"runs": runs, "ratios": ratios, "load_before": load_before}, indent=2)
        )
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
