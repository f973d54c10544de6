"""``veu-server retention apply``: prune old raw envelopes and closed findings now."""

from __future__ import annotations

import argparse
from typing import Any

from server.cli._common import open_services
from server.errors import Invalid
from server.store import retention


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not (0 <= value < 1e6):
        raise argparse.ArgumentTypeError("days must be >= 0")
    return value


def register(subparsers: Any) -> None:
    """``veu-server retention apply``: wire into server/cli/__init__.py's subparsers."""
    group = subparsers.add_parser("retention", help="prune old raw envelopes and closed findings")
    sub = group.add_subparsers(dest="retention", required=True)
    p = sub.add_parser(
        "apply",
        help="apply the retention settings now (in batches)",
        description=(retention.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--data-dir", help="data directory (env VEU_DATA_DIR)")
    p.add_argument("--database-url", help="PostgreSQL URL (env VEU_DATABASE_URL)")
    p.add_argument("--envelopes-days", type=_days, help="drop raw envelopes older than N days")
    p.add_argument("--findings-days", type=_days, help="delete findings closed over N days ago")
    p.add_argument("--batch", type=int, default=1000, help="rows per transaction")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.envelopes_days is None and args.findings_days is None:
        raise Invalid("usage", "give --envelopes-days and/or --findings-days")
    if args.batch < 1:
        raise Invalid("usage", "--batch must be at least 1")
    db = open_services(args).db
    try:
        result = retention.apply(
            db,
            envelopes_days=args.envelopes_days,
            findings_days=args.findings_days,
            batch=args.batch,
            actor="cli",
        )
    finally:
        db.dispose()
    mib = result.envelope_bytes_dropped / 2**20
    print(
        f"retention: {result.envelopes_pruned} raw envelopes pruned ({mib:.1f} MiB), "
        f"{result.findings_deleted} closed findings deleted, in {result.batches} batches"
    )
    return 0
