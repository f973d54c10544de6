"""``veu-server`` commands for the compliance team's records and on-demand attestation:
``shipment add|list``, ``model add|list``, ``site authorize``, ``site status``, ``org status``,
``findings``, and ``attest-request SITE|HOST [--wait]``.

They work on the database directly (like ``org add``), in one transaction each, audited.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from contract.durations import flag_type
from server.cli._common import Parser, Subcommands, add_command, open_services
from server.errors import Invalid

ACTOR = "cli"


def _now() -> datetime:
    return datetime.now(UTC)


def _print(value: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(value, indent=2, default=str) if as_json else text(value))


def _digests(values: list[str], files: list[Path]) -> list[str]:
    """Digests given directly, or computed from weight files (the contract's file digest)."""
    from contract.digests import file_sha256

    out = [v.lower() for v in values]
    for path in files:
        try:
            out.append(file_sha256(path))
        except OSError as exc:
            raise Invalid("unreadable", f"cannot read {path}: {exc.strerror}") from exc
    return out


# --------------------------------------------------------------------------- commands


def cmd_shipment_add(args: argparse.Namespace) -> int:
    from server.compliance import ledger

    opened = open_services(args)

    db, policy = opened.db, opened.policy
    data = {
        "shipped_on": args.date,
        "site": args.site,
        "destination_country": args.country,
        "consignee": args.consignee,
        "license_exception": args.license_exception,
        "end_user": args.end_user,
        "chip_model": args.chip_model,
        "quantity": args.quantity,
        "uuids": args.uuid,
        "serials": args.serial,
        "lab_test": args.lab_test,
    }
    with db.write() as session:
        out = ledger.add_shipment(session, policy, data, now=_now(), actor=ACTOR)
    for warning in out["warnings"]:
        print(
            f"warning[{warning['code']}]: {warning['detail']} ({warning['citation']})",
            file=sys.stderr,
        )
    print(f"shipment of {out['chip_model']}: {out['tpp']:,} TPP", file=sys.stderr)
    print(out["id"])
    return 0


def cmd_shipment_list(args: argparse.Namespace) -> int:
    from server.compliance import ledger

    db = open_services(args).db
    with db.read() as session:
        items = ledger.list_shipments(session, site=args.site, limit=args.limit)
    _print(
        items,
        args.json,
        lambda rows: (
            "\n".join(
                f"{r['id']}\t{r['shipped_on']}\t{r['site_id'] or '-'}\t{r['destination_country']}\t"
                f"{r['chip_model']} x{r['quantity']}\t{r['tpp']:,} TPP\t{r['license_exception']}"
                for r in rows
            )
            or "no shipments"
        ),
    )
    return 0


def cmd_model_add(args: argparse.Namespace) -> int:
    from server.compliance import ledger

    opened = open_services(args)

    db, policy = opened.db, opened.policy
    data = {
        "name": args.name,
        "training_ops": args.training_ops,
        "published": args.published,
        "derived_from": args.derived_from,
        "derived_from_published": args.derived_from_published,
        "added_training_ops": args.added_training_ops,
        "less_capable_than_published": args.less_capable_than_published,
        "digests": _digests(args.digest, args.file),
    }
    with db.write() as session:
        out = ledger.add_model(session, policy, data, now=_now(), actor=ACTOR)
    control = "controlled" if out["controlled"] else "not controlled"
    print(f"{out['name']}: {out['classification']} ({control}) — {out['reason']}", file=sys.stderr)
    print(out["id"])
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from server.compliance import ledger

    opened = open_services(args)

    db, policy = opened.db, opened.policy
    with db.read() as session:
        items = ledger.list_models(session, policy, _now().date())
    _print(
        items,
        args.json,
        lambda rows: (
            "\n".join(
                f"{r['id']}\t{r['name']}\t{r['classification']}\tfiles={r['files']}\t{r['reason']}"
                for r in rows
            )
            or "no models"
        ),
    )
    return 0


def cmd_reference_add(args: argparse.Namespace) -> int:
    from server.compliance import references
    from server.store import repo

    db = open_services(args).db
    with db.write() as session:
        site = repo.find_site(session, args.site)
        added = references.add_from_host(session, site.id, args.from_host, now=_now(), actor=ACTOR)
    print(json.dumps({"site_id": site.id, "added": added}))
    return 0


def cmd_reference_list(args: argparse.Namespace) -> int:
    from server.compliance import references
    from server.store import repo

    db = open_services(args).db
    with db.read() as session:
        site = repo.find_site(session, args.site)
        known = references.site_references(session, site.id)
    out = {str(pcr): sorted(v.hex() for v in values) for pcr, values in sorted(known.items())}
    print(json.dumps({"site_id": site.id, "sha256": out}))
    return 0


def cmd_site_authorize(args: argparse.Namespace) -> int:
    from server.compliance import ledger
    from server.store import repo

    db = open_services(args).db
    with db.write() as session:
        site = repo.find_site(session, args.site)
        out = ledger.set_authorization(
            session,
            site.id,
            {
                "allowed_models": args.allow_model or None,
                "may_store_controlled_weights": args.may_store_controlled_weights,
                "minimum_assurance": args.minimum_assurance,
            },
            now=_now(),
            actor=ACTOR,
        )
    print(json.dumps(out))
    return 0


def cmd_site_status(args: argparse.Namespace) -> int:
    from server.compliance import ledger
    from server.compliance.findings import finding_of
    from server.compliance.settle import ComplianceConfig, settle_pending
    from server.store import repo

    opened = open_services(args)

    settings, db, policy = opened.settings, opened.db, opened.policy
    config = ComplianceConfig(max_host_age=settings.max_host_age)
    settle_pending(db, policy, config, _now)
    with db.read() as session:
        site = repo.find_site(session, args.site)
        status = ledger.site_status(session, policy, site.id, _now(), config)
        assert status is not None
        rows = status.pop("finding_rows")
        status["findings"] = [finding_of(r).to_json() for r in rows]
    _print(status, args.json, _site_text)
    return {"affirming": 0, "warning": 0}.get(status["status"], 1)


def _site_text(s: dict[str, Any]) -> str:
    lines = [
        f"site {s['name']} ({s['site_id']}, {s['country']}): {s['status'].upper()}",
        f"  installed {s['installed_tpp']:,} TPP of {s['authorized_tpp']:,} authorized "
        f"({s['accelerators']} accelerators, {s['hosts_reporting']} hosts reporting)",
        f"  assurance {s['assurance'] or 'unknown'} (its weakest host's)",
    ]
    if s["stale_hosts"]:
        lines.append(f"  stale hosts: {', '.join(h[:16] for h in s['stale_hosts'])}")
    for f in s["findings"]:
        lines.append(f"  [{f['severity']}] {f['condition_id']}: {f['message']}")
        if f.get("citation"):
            lines.append(f"      citation: {f['citation']}")
    return "\n".join(lines)


def cmd_org_status(args: argparse.Namespace) -> int:
    from server.compliance import ledger
    from server.compliance.findings import finding_of
    from server.compliance.settle import ComplianceConfig, settle_pending
    from server.store import repo

    opened = open_services(args)

    settings, db, policy = opened.settings, opened.db, opened.policy
    settle_pending(db, policy, ComplianceConfig(max_host_age=settings.max_host_age), _now)
    with db.read() as session:
        org = repo.find_org(session, args.org)
        status = ledger.org_status(session, policy, org.id, _now())
        assert status is not None
        status["findings"] = [finding_of(r).to_json() for r in status.pop("finding_rows")]
    _print(status, args.json, _org_text)
    return {"affirming": 0, "warning": 0}.get(status["status"], 1)


def _org_text(s: dict[str, Any]) -> str:
    dist = s["distribution"]
    lines = [
        f"organization {s['name']} ({s['veu']} VEU, HQ {s['hq_country']}): {s['status'].upper()}"
    ]
    if dist:
        lines.append(f"  denominator: {dist['denominator']}")
        lines.append(
            f"  total {dist['total_tpp']:,} TPP; Tier 1 {dist['tier1_share']:.1%}; "
            f"U.S. {dist['us_share']:.1%}"
        )
        for c in dist["countries"]:
            tier = "Tier 1" if c["tier1"] else ("D:5" if c["embargoed"] else "Tier 2")
            lines.append(f"    {c['code']}  {c['tpp']:>15,} TPP  {c['share']:6.1%}  {tier}")
    for f in s["findings"]:
        lines.append(f"  [{f['severity']}] {f['condition_id']}: {f['message']}")
    return "\n".join(lines)


def cmd_attest_request(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from server.compliance import ledger
    from server.store import repo
    from server.store.models import Host

    opened = open_services(args)

    settings, db = opened.settings, opened.db
    with db.write() as session:
        is_host = session.scalar(select(Host.key_id).where(Host.key_id == args.target))
        if is_host is None:
            repo.find_site(session, args.target)  # a clear not-found error otherwise
        challenges = ledger.request_attestation(
            session,
            site=None if is_host else args.target,
            host=args.target if is_host else None,
            actor=ACTOR,
            now=_now(),
            ttl=settings.challenge_ttl,
        )
    if not challenges:
        print("no active hosts to ask", file=sys.stderr)
        return 1
    print(f"requested fresh evidence from {len(challenges)} host(s)", file=sys.stderr)
    if not args.wait:
        for c in challenges:
            print(f"{c['host_id']}\t{c['nonce']}\t{c['expires_at']}")
        return 0
    deadline = time.monotonic() + args.timeout
    nonces = {c["nonce"]: c["host_id"] for c in challenges}
    answered: dict[str, bool] = {}
    while time.monotonic() < deadline:
        with db.read() as session:
            answered = ledger.challenge_answers(session, list(nonces))
        done = sum(answered.values())
        print(f"\r{done}/{len(nonces)} hosts answered", end="", file=sys.stderr, flush=True)
        if done == len(nonces):
            print(file=sys.stderr)
            print(f"all {len(nonces)} hosts answered")
            return 0
        time.sleep(1.0)
    print(file=sys.stderr)
    missing = [h for n, h in nonces.items() if not answered.get(n)]
    print(f"{len(nonces) - len(missing)}/{len(nonces)} hosts answered; no answer from:")
    for host in missing:
        print(f"  {host}")
    return 1


# --------------------------------------------------------------------------- parser


def register(
    sub: Subcommands,
    common: Parser,
    site_group: Subcommands,
    org_group: Subcommands,
) -> None:
    def add(
        group: Subcommands, name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        return add_command(group, name, func, help_text, common)

    shipment = sub.add_parser("shipment", help="the shipment ledger").add_subparsers(
        dest="shipment", required=True
    )
    p = add(shipment, "add", cmd_shipment_add, "record a shipment of chips")
    p.add_argument("--date", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    p.add_argument("--site", help="destination site id or name")
    p.add_argument("--country", help="destination country (default: the site's)")
    p.add_argument("--consignee", required=True)
    p.add_argument(
        "--license-exception", default="VEU", choices=["VEU", "LPP", "AIA", "ACM", "license"]
    )
    p.add_argument("--end-user", default="veu", choices=["veu", "non-veu"])
    p.add_argument("--chip-model", required=True, help="catalog id or reported name")
    p.add_argument("--quantity", type=int, help="default: the number of UUIDs/serials given")
    p.add_argument("--uuid", action="append", default=[], help="shipped GPU UUID (repeatable)")
    p.add_argument("--serial", action="append", default=[], help="shipped serial (repeatable)")
    p.add_argument(
        "--lab-test",
        metavar="REF",
        help="the U.S. third-party lab test record of the shipped chips (91 FR 1684)",
    )
    p = add(shipment, "list", cmd_shipment_list, "list shipments")
    p.add_argument("--site")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")

    model = sub.add_parser("model", help="the model registry").add_subparsers(
        dest="model", required=True
    )
    p = add(model, "add", cmd_model_add, "register a model and the digests of its files")
    p.add_argument("name")
    p.add_argument("--training-ops", type=float, help="total training operations, e.g. 3e26")
    p.add_argument("--published", action="store_true", help="its weights are published")
    p.add_argument("--derived-from", help="base model name")
    p.add_argument("--derived-from-published", action="store_true")
    p.add_argument("--added-training-ops", type=float)
    p.add_argument("--less-capable-than-published", action="store_true")
    p.add_argument("--digest", action="append", default=[], help="SHA-256 of a weight file")
    p.add_argument(
        "--file", action="append", default=[], type=Path, help="a weight file to hash (repeatable)"
    )
    p = add(model, "list", cmd_model_list, "list models with their 4E091 classification")
    p.add_argument("--json", action="store_true")

    p = add(site_group, "authorize", cmd_site_authorize, "set a site's authorization terms")
    p.add_argument("site")
    p.add_argument(
        "--allow-model",
        action="append",
        default=[],
        help="chip catalog id the authorization allows (repeatable; none: any)",
    )
    p.add_argument("--may-store-controlled-weights", action="store_true")
    p.add_argument(
        "--minimum-assurance",
        metavar="LEVEL",
        default=None,
        help="the weakest assurance level a host at the site must reach (e.g. tpm-quoted)",
    )
    reference = sub.add_parser(
        "reference", help="known-good TPM PCR values per site (tpm-quoted)"
    ).add_subparsers(dest="reference", required=True)
    p = add(
        reference,
        "add",
        cmd_reference_add,
        "record PCRs 0-7 of a known-good host's latest verified quote for its site",
    )
    p.add_argument("site")
    p.add_argument("--from-host", required=True, metavar="KEY_ID", help="a TPM-enrolled host")
    p = add(reference, "list", cmd_reference_list, "a site's known-good PCR values")
    p.add_argument("site")
    p = add(site_group, "status", cmd_site_status, "a site's status and open findings")
    p.add_argument("site")
    p.add_argument("--json", action="store_true")
    p = add(org_group, "status", cmd_org_status, "an organization's distribution and findings")
    p.add_argument("org")
    p.add_argument("--json", action="store_true")

    p = add(sub, "attest-request", cmd_attest_request, "ask a site's hosts for fresh evidence")
    p.add_argument("target", help="site id or name, or a host key id")
    p.add_argument("--wait", action="store_true", help="wait until every host has answered")
    p.add_argument(
        "--timeout",
        type=flag_type("--timeout"),
        default=180.0,
        help="how long to wait, e.g. 180, 3m (default 180s)",
    )
