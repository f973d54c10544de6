"""``veu-server report``: write a signed semi-annual inventory report, or check one.

- ``report --org ORG --period 2026H1 --format pdf|csv|json [--out FILE]`` writes the report and
  ``FILE.sig`` (a detached Ed25519 signature by the verifier over the file's SHA-256 digest) and
  prints both paths, the report last.
- ``report verify FILE SIG [--pubkey PEM] [--log-key KEY]`` checks a report against the
  verifier's public key (``--pubkey``, e.g. saved from ``GET /v1/verifier-key``; default: this
  data directory's key); with ``--log-key`` (the pinned log key, ``veu-server log key``) also the
  JSON report's transparency-log checkpoint and the inclusion proof of every snapshot it counts.

Exit codes: 0 written / signature valid; 1 signature invalid; otherwise server/cli/errors.py.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.cli._common import EXIT_BROKEN, EXIT_OK, settings_of
from server.errors import Invalid, NotFound


def register(subparsers: Any) -> None:
    """Add ``report`` (and ``report verify``) to a parent parser's subparsers."""
    p = subparsers.add_parser(
        "report",
        help="semi-annual inventory report (signed); 'report verify' checks one",
        description="Write a signed semi-annual inventory report for an organization.",
    )
    p.set_defaults(func=run, report_command="create")
    _storage_flags(p)
    p.add_argument("--org", help="organization id or name")
    p.add_argument("--period", help="half year, e.g. 2026H1 or 2026H2")
    p.add_argument("--format", choices=["pdf", "csv", "json"], default="pdf")
    p.add_argument("--out", type=Path, help="output file (default: <data dir>/reports/...)")
    p.add_argument(
        "--policies",
        type=Path,
        help="policy packs directory (default: VEU_POLICIES_DIR, else the shipped packs)",
    )
    sub = p.add_subparsers(dest="report_sub", required=False)
    v = sub.add_parser("verify", help="check a report's detached signature")
    v.set_defaults(func=run, report_command="verify")
    _storage_flags(v)
    v.add_argument("file", type=Path)
    v.add_argument("sig", type=Path)
    v.add_argument("--pubkey", type=Path, help="the verifier's public key (PEM)")
    v.add_argument("--log-key", help="the log's note key: also check the JSON report's log proofs")


def _storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="data directory (VEU_DATA_DIR)")
    p.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="PostgreSQL URL (VEU_DATABASE_URL)"
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "report_command", "create") == "verify":
        return _verify(args)
    return _create(args)


def _now() -> datetime:
    return datetime.now(UTC)


def _create(args: argparse.Namespace) -> int:
    from server import reports
    from server.compliance.settle import ComplianceConfig, settle_pending
    from server.policy import load_policy_set
    from server.results import load_or_create_key
    from server.store.db import Database, engine_for
    from server.store.migrate import upgrade

    if not args.org or not args.period:
        raise Invalid("usage", "give --org ORG and --period 2026H1 (or: report verify FILE SIG)")
    settings = settings_of(args)
    policy = load_policy_set(args.policies or settings.policies_dir)
    upgrade(settings.resolved_database_url())
    db = Database(engine_for(settings))
    try:
        settle_pending(db, policy, ComplianceConfig(max_host_age=settings.max_host_age), _now)
        key = load_or_create_key(settings.verifier_key_path)
        out_dir = settings.data_dir / "reports"
        if args.out is None:
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = None
        if args.format == "json":  # the machine-checkable format carries the log's proofs
            from server.log.integrate import Log
            from server.log.note import load_log_key

            log = Log(db, load_log_key(settings.log_key_path, settings.effective_log_origin))
        written = reports.write_signed(
            db,
            policy,
            key,
            args.org,
            args.period,
            args.format,
            out_dir,
            datetime.now(UTC),
            out=args.out,
            log=log,
        )
    finally:
        db.dispose()
    print(f"signature: {written.signature}")
    print(written.path)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from server.reports import verify_report

    for path in (args.file, args.sig):
        if not path.is_file():
            raise NotFound("not_found", f"{path} does not exist")
    if args.pubkey is not None:
        from contract import KeyFormatError, load_public_pem

        try:
            public = load_public_pem(args.pubkey.read_bytes())
        except KeyFormatError as exc:
            raise Invalid("bad_pubkey", f"{args.pubkey}: {exc}") from None
    else:
        settings = settings_of(args)
        if not settings.verifier_key_path.exists():
            raise Invalid(
                "no_key", "give --pubkey (the verifier's public key) or --data-dir of the verifier"
            )
        from server.results import load_or_create_key

        public = load_or_create_key(settings.verifier_key_path).public
    if not verify_report(args.file.read_bytes(), args.sig.read_bytes(), public):
        print(f"INVALID: the signature does not match {args.file}", file=sys.stderr)
        return EXIT_BROKEN
    print(f"valid: {args.file} is signed by the verifier key")
    if args.log_key is None:
        return EXIT_OK
    from contract.errors import EvidenceError
    from contract.tlog import parse_verifier_key
    from server.reports import verify_report_log

    try:
        pinned = parse_verifier_key(args.log_key)
    except EvidenceError as exc:
        raise Invalid(exc.code, f"--log-key: {exc.detail}") from None
    try:
        proven, size = verify_report_log(args.file.read_bytes(), pinned)
    except EvidenceError as exc:
        print(f"INVALID: the report's log evidence: {exc.detail} ({exc.code})", file=sys.stderr)
        return EXIT_BROKEN
    print(f"valid: {proven} cited snapshots are in the log's signed checkpoint of size {size}")
    return EXIT_OK
