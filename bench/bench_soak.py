#!/usr/bin/env python3
"""Soak (issue 7): 10,000 simulated hosts at one snapshot per host per minute, for a wall time.

A real ``veu-server serve`` (SQLite by default; ``--pg-url`` for PostgreSQL with ``--workers``),
``--hosts`` hosts enrolled through the API, then ``bench/fleet.py`` traffic at
``hosts / 60 * --compression`` snapshots/s for ``--minutes``. Judged at the end:

- zero errors (any non-2xx answer or transport failure after the simulator's retries);
- every acknowledged snapshot is in the database: the snapshot rows of the site are counted and
  every acknowledged digest is looked up;
- the server's resident memory (all its processes, sampled every ``--sample-s``) is flat after
  warm-up: the largest sample after the first ``--warmup`` fraction of the run is within 10% of
  the first sample after it.

``--smoke``: 50 hosts for 20 s at 60x compression (50 snapshots/s), for CI.
``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleet import (  # noqa: E402
    Traffic,
    cpu_seconds,
    drive,
    enroll_fleet,
    pg_create,
    pg_drop,
    rss_mb,
    run_async,
    start_server,
    stop_server,
    tree_pids,
)


def count_present(database_url: str, site_id: str, digests: list[str]) -> tuple[int, int]:
    """(snapshot rows of the site, acknowledged digests found among them)."""
    from sqlalchemy import func, select

    from server.store.db import Database, make_engine
    from server.store.models import Snapshot

    engine = make_engine(database_url)
    try:
        with Database(engine).read() as s:
            rows = int(
                s.scalar(
                    select(func.count()).select_from(Snapshot).where(Snapshot.site_id == site_id)
                )
                or 0
            )
            stored = set(s.scalars(select(Snapshot.digest).where(Snapshot.site_id == site_id)))
    finally:
        engine.dispose()
    return rows, sum(1 for d in digests if d in stored)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--compression", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction of the run")
    parser.add_argument("--pg-url", help="PostgreSQL admin URL (default: SQLite)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.hosts, args.minutes, args.compression, args.sample_s = 50, 20 / 60, 60.0, 1.0
    rate = args.hosts / 60.0 * args.compression
    seconds = args.minutes * 60
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="veu-soak-") as tmp:
        data = Path(tmp) / "data"
        pg_name = None
        if args.pg_url:
            db_url, pg_name = pg_create(args.pg_url)
            server = start_server(data, db_url, "--workers", str(args.workers))
        else:
            db_url = f"sqlite:///{data / 'veu.sqlite3'}"
            server = start_server(data, db_url)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        try:
            t_enroll = time.perf_counter()
            fleet = enroll_fleet(server, args.hosts, concurrency=args.concurrency)
            enroll_s = time.perf_counter() - t_enroll
            pids = tree_pids(server.process.pid)
            cpu0 = cpu_seconds(pids)
            begin = time.monotonic()

            def sampler() -> None:
                while not stop.wait(args.sample_s):
                    samples.append(
                        (time.monotonic() - begin, rss_mb(tree_pids(server.process.pid)))
                    )

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            traffic = Traffic(
                rate=rate,
                count=int(rate * seconds * 1.1) + 10,
                seconds=seconds,
                concurrency=args.concurrency,
                keep_digests=True,
            )
            gen0 = time.process_time()
            report = run_async(drive(server.url, fleet.hosts, traffic))
            gen_cpu = time.process_time() - gen0
            stop.set()
            thread.join(timeout=10)
            server_cpu = cpu_seconds(tree_pids(server.process.pid)) - cpu0
            rows, present = count_present(db_url, fleet.site_id, report.digests)
            db_bytes = (
                sum(p.stat().st_size for p in data.glob("veu.sqlite3*")) if not pg_name else None
            )
        finally:
            stop.set()
            stop_server(server)
            if pg_name and args.pg_url:
                pg_drop(args.pg_url, pg_name)

    after = [mb for t, mb in samples if t >= seconds * args.warmup]
    base = after[0] if after else float("nan")
    peak = max(after) if after else float("nan")
    growth = (peak / base - 1) * 100 if after else float("nan")
    flat = bool(after) and peak <= base * 1.10
    figures = {
        "hosts": args.hosts,
        "database": "postgresql" if args.pg_url else "sqlite",
        "workers": args.workers,
        "target_rate": round(rate, 2),
        "compression": args.compression,
        "wall_s": round(report.seconds, 1),
        "simulated_minutes": round(report.seconds / 60 * args.compression, 1),
        "enroll_s": round(enroll_s, 1),
        "traffic": report.summary(),
        "rows_in_db": rows,
        "acknowledged": len(report.digests),
        "acknowledged_present": present,
        "rss_mb_first_after_warmup": round(base, 1),
        "rss_mb_peak_after_warmup": round(peak, 1),
        "rss_mb_first": round(samples[0][1], 1) if samples else None,
        "rss_mb_last": round(samples[-1][1], 1) if samples else None,
        "rss_growth_after_warmup_pct": round(growth, 1),
        "rss_samples": [(round(t, 1), round(mb, 1)) for t, mb in samples],
        "server_cpu_s": round(server_cpu, 1),
        "loadgen_cpu_s": round(gen_cpu, 1),
        "db_bytes": db_bytes,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    ok = (
        report.errors == 0
        and rows == report.accepted == len(report.digests) == present
        and (flat or args.smoke)
    )
    figures["passed"] = ok
    figures["memory_flat"] = flat
    t = figures["traffic"]
    assert isinstance(t, dict)
    print(
        f"soak: {args.hosts} hosts, {figures['wall_s']} s wall ({figures['simulated_minutes']} "
        f"simulated min), {t['accepted']} accepted at {t['snapshots_per_s']}/s "
        f"(target {rate:.1f}/s, max lag {t['max_lag_s']} s), p50 {t['p50_ms']} ms, "
        f"p95 {t['p95_ms']} ms, p99 {t['p99_ms']} ms, errors {t['errors']}; rows in db {rows}, "
        f"acknowledged present {present}/{len(report.digests)}; server RSS after warm-up "
        f"{base:.1f} -> peak {peak:.1f} MB ({growth:+.1f}%); server CPU {server_cpu:.0f} s, "
        f"load generator CPU {gen_cpu:.0f} s; load {figures['load_before']} -> "
        f"{figures['load_after']}; {'PASS' if ok else 'FAIL'}"
    )
    for sample in report.error_samples:
        print(f"  error: {sample}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
