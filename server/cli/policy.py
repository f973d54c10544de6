"""``veu-server policy test [PACK]`` and ``veu-server policy eval SNAPSHOT`` (offline what-if).

``eval`` does not check the envelope's signature: it answers "what would the policy say about
this evidence", not "is this evidence authentic" — the verifier's pipeline does that.
"""

from __future__ import annotations

import argparse
import base64
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from contract import EvidenceError, SnapshotV1, parse_json_strict, parse_statement
from contract.errors import EXIT_USAGE
from server.cli._common import say
from server.config import resolve_policies_dir
from server.findings import status_of
from server.policy.aggregate import SiteAggregate
from server.policy.engine import load_policy_set
from server.policy.errors import PackError
from server.policy.facts import HostContext, SiteFacts, snapshot_digests
from server.policy.testing import run_pack_tests


def register(subparsers: Any) -> None:
    """Add ``policy test`` and ``policy eval`` to a parent parser's subparsers."""
    policy = subparsers.add_parser("policy", help="policy packs: run fixtures, judge a snapshot")
    policy.set_defaults(func=run)
    sub = policy.add_subparsers(dest="policy_command", required=True)
    test = sub.add_parser("test", help="run each pack's fixtures (exit 0 when all pass)")
    test.add_argument("pack", nargs="?", help="pack folder name (default: every pack)")
    test.add_argument(
        "--policies",
        type=Path,
        help="policy packs directory (default: VEU_POLICIES_DIR, else the shipped packs)",
    )
    ev = sub.add_parser("eval", help="judge a snapshot envelope offline (signature not checked)")
    ev.add_argument("snapshot", type=Path)
    ev.add_argument(
        "--site",
        default=None,
        help="judge as at this enrolled site (id or name, from --data-dir/--database-url): "
        "its country, authorized TPP, test flag and weight-storage authorization, and the "
        "model registry",
    )
    ev.add_argument("--site-country", help="or a hypothetical site in this country, e.g. DE")
    ev.add_argument("--data-dir", help="verifier data directory (env VEU_DATA_DIR)")
    ev.add_argument("--database-url", help="verifier database (env VEU_DATABASE_URL)")
    ev.add_argument("--authorized-tpp", type=int, default=None)
    ev.add_argument("--test-site", action="store_true")
    ev.add_argument("--may-store-weights", action="store_true")
    ev.add_argument(
        "--date", type=date.fromisoformat, default=None, help="judge as of (default today)"
    )
    ev.add_argument(
        "--policies",
        type=Path,
        help="policy packs directory (default: VEU_POLICIES_DIR, else the shipped packs)",
    )
    ev.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        if args.policy_command == "test":
            return _test(args)
        return _eval(args)
    except PackError as exc:
        say(exc.code, str(exc))
        return EXIT_USAGE
    except EvidenceError as exc:
        say(exc.code, str(exc))
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        say("invalid_input", str(exc))
        return EXIT_USAGE


def _test(args: argparse.Namespace) -> int:
    root = resolve_policies_dir(args.policies)
    dirs = [root / args.pack] if args.pack else sorted(p.parent for p in root.glob("*/pack.yaml"))
    if not dirs:
        say("no_packs", f"no packs under {root}")
        return 2
    ok = True
    for d in dirs:
        report = run_pack_tests(d)
        print("\n".join(report.lines()))
        ok = ok and report.ok
    return 0 if ok else 1


def _load_snapshot(path: Path) -> SnapshotV1:
    value = parse_json_strict(path.read_bytes())
    if isinstance(value, dict) and "payload" in value:
        return parse_statement(base64.b64decode(value["payload"]))[1]
    if isinstance(value, dict) and "predicate" in value:
        return SnapshotV1.model_validate(value["predicate"])
    return SnapshotV1.model_validate(value)


def _enrolled_site_context(
    args: argparse.Namespace, snapshot: SnapshotV1
) -> tuple[HostContext, int]:
    """The context the verifier would use for this site, read from its database."""
    from server.compliance.registry import model_registry
    from server.config import Settings
    from server.store import repo
    from server.store.compliance_models import SiteAuthorization
    from server.store.db import Database, engine_for

    settings = Settings.from_env(data_dir=args.data_dir, database_url=args.database_url)
    db = Database(engine_for(settings))
    try:
        with db.read() as session:
            site = repo.find_site(session, args.site)
            auth = session.get(SiteAuthorization, site.id)
            digests = snapshot_digests(snapshot)
            ctx = HostContext(
                site_id=site.id,
                site_country=site.country,
                site_is_test=site.test_site or args.test_site,
                site_may_store_controlled_weights=bool(
                    (auth and auth.may_store_controlled_weights) or args.may_store_weights
                ),
                models=model_registry(session, digests),
            )
            return ctx, int(site.authorized_tpp)
    finally:
        db.dispose()


def _eval(args: argparse.Namespace) -> int:
    on: date = args.date or datetime.now(UTC).date()
    policy = load_policy_set(resolve_policies_dir(args.policies))
    snapshot = _load_snapshot(args.snapshot)
    if args.site_country:
        ctx = HostContext(
            site_id=args.site or "what-if",
            site_country=args.site_country.upper(),
            site_is_test=args.test_site,
            site_may_store_controlled_weights=args.may_store_weights,
        )
    elif args.site:
        ctx, authorized = _enrolled_site_context(args, snapshot)
        if args.authorized_tpp is None:
            args.authorized_tpp = authorized
    else:
        raise ValueError("give --site (an enrolled site) or --site-country (a hypothetical one)")
    findings = policy.evaluate_host(snapshot, ctx, on)
    if args.authorized_tpp is not None:
        agg = SiteAggregate()
        agg.apply(None, policy.contribution(snapshot, on, country=ctx.site_country))
        facts = SiteFacts(ctx.site_id, ctx.site_country, args.authorized_tpp, agg, host_count=1)
        findings += policy.evaluate_site(facts, on)
    status = status_of(findings)
    if args.json:
        out = {
            "status": status,
            "date": on.isoformat(),
            "policy_digest": policy.digest,
            "packs": [
                {"id": p.id, "version": p.version, "status": p.status}
                for p in policy.active_packs(on)
            ],
            "findings": [f.to_json() for f in findings],
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(f"status: {status}  (as of {on}, policy digest {policy.digest[:16]}…)")
        for p in policy.active_packs(on):
            print(f"pack {p.id} {p.version}: {p.status}")
        for f in findings:
            tags = ",".join(f.confidence)
            print(f"- [{f.severity}] {f.condition_id} {f.subject}: {f.message}")
            print(f"    expected {f.expected}; seen {f.seen}; {f.citation} [{tags}]")
    return 1 if status in ("contraindicated", "none") else 0
