"""``veu-server demo`` and ``veu-server simulate``: the command lines of the developer tools
(server/devtools/: the demo fleet, the fleet load simulator)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from server.devtools import demo, simulate
from server.devtools.demo import run_demo
from server.devtools.simulate import (
    Traffic,
    drive,
    enroll_all,
    make_hosts,
    make_site,
    make_tokens,
    run_async,
)
from server.errors import Invalid


def register_demo(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a demo fleet with deliberate problems and open the dashboard",
        description=(demo.__doc__ or "").split("\n\n")[0] or None,
    )
    p.add_argument("--data-dir", type=Path, default=None, help="fresh directory (default: temp)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--hosts-per-site", type=int, default=3)
    p.add_argument("--report-interval", default="20s")
    p.set_defaults(func=_run_args)


def _run_args(args: argparse.Namespace) -> int:
    return run_demo(
        args.data_dir,
        args.port,
        hosts_per_site=args.hosts_per_site,
        report_interval=args.report_interval,
    )


def register_simulate(subparsers: Any) -> None:
    """``veu-server simulate``: wire into server/cli/__init__.py's subparsers."""
    p = subparsers.add_parser(
        "simulate",
        help="drive a simulated fleet of hosts against a running verifier",
        description=(simulate.__doc__ or "").split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=run_simulate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", required=True, help="the verifier's base URL, e.g. http://127.0.0.1:8443"
    )
    p.add_argument("--data-dir", help="the verifier's data directory (SQLite) for tokens")
    p.add_argument("--database-url", help="the verifier's database URL (PostgreSQL)")
    p.add_argument("--site", help="site id to enroll into (default: create one)")
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--rate", type=float, help="snapshots/s for the fleet (default hosts/60)")
    p.add_argument(
        "--compression",
        type=float,
        default=1.0,
        help="simulated minutes per wall minute (multiplies the default rate)",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    p.add_argument("--count", type=int, default=1_000_000, help="stop after this many snapshots")
    p.add_argument("--concurrency", type=int, default=8, help="HTTP connections")
    p.add_argument("--change-rate", type=float, default=0.01)
    p.add_argument("--challenge-rate", type=float, default=0.005)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def database_url_of(args: argparse.Namespace) -> str:
    from server.config import Settings

    return Settings.from_env(
        data_dir=args.data_dir, database_url=args.database_url
    ).resolved_database_url()


def run_simulate(args: argparse.Namespace) -> int:
    """Enroll ``--hosts`` hosts and drive traffic; exit 1 on any error."""
    if args.hosts < 1 or args.seconds <= 0 or args.count < 1:
        raise Invalid("usage", "--hosts, --seconds and --count must be positive")
    db_url = database_url_of(args)
    site_id = args.site or make_site(db_url)
    hosts = make_hosts(site_id, args.hosts)
    tokens = make_tokens(db_url, site_id, len(hosts))
    enrolled = run_async(enroll_all(args.url, hosts, tokens, args.concurrency))
    if enrolled.errors:
        print(json.dumps({"enroll": enrolled.summary()}, indent=2))
        return 1
    rate = args.rate if args.rate else args.hosts / 60.0 * args.compression
    traffic = Traffic(
        rate=rate,
        count=args.count,
        seconds=args.seconds,
        concurrency=args.concurrency,
        change_rate=args.change_rate,
        challenge_rate=args.challenge_rate,
    )
    report = run_async(drive(args.url, hosts, traffic))
    out = {
        "site_id": site_id,
        "hosts": len(hosts),
        "target_rate": rate,
        "enroll": {k: v for k, v in enrolled.summary().items() if k != "statuses"},
        "traffic": report.summary(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        t = report.summary()
        print(
            f"site {site_id}: {len(hosts)} hosts enrolled in {enrolled.seconds:.1f} s; "
            f"{t['accepted']} snapshots accepted in {t['seconds']} s "
            f"({t['snapshots_per_s']}/s, target {rate:.1f}/s), p50 {t['p50_ms']} ms, "
            f"p95 {t['p95_ms']} ms, p99 {t['p99_ms']} ms, errors {t['errors']}, "
            f"inventory changes {t['inventory_changes']}, challenges {t['challenges']}, "
            f"statuses {t['statuses']}"
        )
        for sample in report.error_samples:
            print(f"  error: {sample}", file=sys.stderr)
    return 1 if report.errors else 0
