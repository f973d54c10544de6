"""``veu-server`` record keeping: ``db upgrade``, ``org``, ``site``, ``enroll-token``, ``apikey``,
``agent list|revoke`` and ``audit verify``. Commands that create a secret print it once, as their
last line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from contract.durations import timedelta_flag_type
from server.cli._common import (
    EXIT_BROKEN,
    EXIT_OK,
    Parser,
    Subcommands,
    add_command,
    open_services,
    settings_of,
)


def _now() -> datetime:
    return datetime.now(UTC)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from server.store.migrate import current_revision, upgrade

    settings = settings_of(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = settings.resolved_database_url()
    upgrade(url)
    print(f"database at revision {current_revision(url)}")
    return EXIT_OK


def cmd_org_add(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.write() as s:
        org = repo.add_org(s, args.name, args.veu, args.hq, args.parent_hq, _now())
        print(f"organization {org.name} ({org.veu} VEU, HQ {org.hq_country})")
        print(org.id)
    return EXIT_OK


def cmd_org_list(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.read() as s:
        for org in repo.list_orgs(s):
            parent = org.parent_hq_country or "-"
            print(f"{org.id}\t{org.name}\t{org.veu}\thq={org.hq_country}\tparent_hq={parent}")
    return EXIT_OK


def cmd_site_add(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.write() as s:
        site = repo.add_site(
            s,
            args.org,
            args.name,
            args.country,
            args.authorized_tpp,
            args.authorization,
            args.test_site,
            _now(),
        )
        print(f"site {site.name} in {site.country}, authorized TPP {site.authorized_tpp:g}")
        print(site.id)
    return EXIT_OK


def cmd_site_list(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.read() as s:
        cursor: str | None = None
        while True:
            page = repo.list_sites(s, limit=500, cursor=cursor)
            for site in page:
                print(
                    f"{site.id}\t{site.name}\t{site.country}\ttpp={site.authorized_tpp:g}\t"
                    f"org={site.org_id}\tauth={site.authorization_ref or '-'}"
                    + ("\ttest-site" if site.test_site else "")
                )
            if len(page) < 500:
                break
            cursor = page[-1].id
    return EXIT_OK


def cmd_enroll_token(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.write() as s:
        token, row = repo.create_enroll_token(s, args.site, args.ttl, _now())
        print(f"single-use enrollment token for site {row.site_id}, expires {row.expires_at}")
        print(token)
    return EXIT_OK


def cmd_apikey_create(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.write() as s:
        key, row = repo.create_api_key(s, args.role, args.name, _now())
        print(f"{row.role} API key {row.id}; it is shown once and stored only as a hash")
        print(key)
    return EXIT_OK


def cmd_agent_list(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.read() as s:
        cursor: str | None = None
        while True:
            page = repo.list_hosts(s, site_id=args.site, limit=500, cursor=cursor)
            for host, head in page:
                seq = head.seq if head is not None else 0
                print(
                    f"{host.key_id}\t{host.status}\tsite={host.site_id}\t"
                    f"host={host.hostname or '-'}\tseq={seq}"
                )
            if len(page) < 500:
                break
            cursor = page[-1][0].key_id
    return EXIT_OK


def cmd_agent_revoke(args: argparse.Namespace) -> int:
    from server.store import repo

    db = open_services(args).db
    with db.write() as s:
        host = repo.revoke_host(s, args.key_id, _now(), "cli")
        print(f"host {host.key_id} is {host.status}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from server.store import repo
    from server.store.audit import verify_audit

    db = open_services(args).db
    with db.read() as s:
        broken = verify_audit(s)
        total = repo.row_counts(s, ["audit_log"])["audit_log"]
    if broken is not None:
        print(f"audit log BROKEN at row {broken.seq}: {broken.reason}", file=sys.stderr)
        return EXIT_BROKEN
    print(f"audit log intact: {total} rows")
    return EXIT_OK


def _country(text: str) -> str:
    from server.store.iso3166 import is_country

    code = text.strip().upper()
    if not is_country(code):
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 3166-1 alpha-2 country code")
    return code


def _tpp(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError("authorized TPP must be a finite number >= 0")
    return value


def register(sub: Subcommands, common: Parser) -> tuple[Subcommands, Subcommands]:
    """Add the record-keeping commands; answers the ``site`` and ``org`` groups (other modules
    add commands to them)."""

    def add(
        group: Subcommands, name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        return add_command(group, name, func, help_text, common)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db", required=True)
    add(db, "upgrade", cmd_db_upgrade, "apply the database migrations")

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="org", required=True)
    p = add(org, "add", cmd_org_add, "add an organization holding a VEU authorization")
    p.add_argument("name")
    p.add_argument("--veu", choices=["universal", "national"], required=True)
    p.add_argument("--hq", type=_country, required=True, help="headquarters country")
    p.add_argument("--parent-hq", type=_country, help="ultimate parent's headquarters country")
    add(org, "list", cmd_org_list, "list organizations")

    site = sub.add_parser("site", help="sites").add_subparsers(dest="site", required=True)
    p = add(site, "add", cmd_site_add, "add a data-center site")
    p.add_argument("org", help="organization id or name")
    p.add_argument("name")
    p.add_argument("--country", type=_country, required=True)
    p.add_argument("--authorized-tpp", type=_tpp, required=True)
    p.add_argument("--authorization", help="authorization reference")
    p.add_argument("--test-site", action="store_true")
    add(site, "list", cmd_site_list, "list sites")

    token = sub.add_parser("enroll-token", help="enrollment tokens").add_subparsers(
        dest="token", required=True
    )
    p = add(token, "create", cmd_enroll_token, "create a single-use enrollment token")
    p.add_argument("site", help="site id or name")
    p.add_argument("--ttl", type=timedelta_flag_type("--ttl"), default=timedelta(hours=24))

    apikey = sub.add_parser("apikey", help="API keys").add_subparsers(dest="apikey", required=True)
    p = add(apikey, "create", cmd_apikey_create, "create an API key (printed once)")
    p.add_argument("--role", choices=["admin", "auditor"], required=True)
    p.add_argument("--name")

    agent = sub.add_parser("agent", help="enrolled hosts").add_subparsers(
        dest="agent", required=True
    )
    p = add(agent, "list", cmd_agent_list, "list enrolled hosts")
    p.add_argument("--site")
    p = add(agent, "revoke", cmd_agent_revoke, "revoke a host key")
    p.add_argument("key_id")

    audit = sub.add_parser("audit", help="audit log").add_subparsers(dest="audit", required=True)
    add(audit, "verify", cmd_audit_verify, "prove the audit hash chain unbroken")
    return site, org
