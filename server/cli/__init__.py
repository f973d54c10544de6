"""``veu-server``: run the verifier and manage its records.

Exit codes: 0 done; 1 ``audit verify`` found a broken chain; 2 bad usage or invalid input;
3 not found; 4 conflict (already exists, already used); 5 the database or data directory failed.
Errors print one line ``error: <code>: <detail>`` on stderr, never a traceback. Commands that
create a secret print it once, as their last line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from contract import __version__
from server.cli._common import (
    EXIT_BROKEN,
    EXIT_DB,
    EXIT_OK,
    Parser,
    Subcommands,
    add_command,
    exit_code,
    open_services,
    say,
    settings_of,
)
from server.config import ENV_DATA_DIR, ENV_DATABASE_URL, ConfigError
from server.errors import Invalid, VeuError

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 24h, 7d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from contract.jsonlog import dict_config
    from server.log.note import load_log_key
    from server.results import load_or_create_key
    from server.store.migrate import upgrade

    settings = settings_of(args)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise Invalid("usage", "--tls-cert and --tls-key go together")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.resolved_database_url())
    load_or_create_key(settings.verifier_key_path)  # before workers race to create it
    load_log_key(settings.log_key_path, settings.effective_log_origin)  # the same
    if settings.database_url is None and args.workers > 1:
        raise Invalid(
            "usage", "--workers > 1 needs PostgreSQL (--database-url); SQLite has one writer"
        )
    os.environ[ENV_DATA_DIR] = str(settings.data_dir)
    if settings.database_url:
        os.environ[ENV_DATABASE_URL] = settings.database_url
    else:
        os.environ.pop(ENV_DATABASE_URL, None)
    os.environ["VEU_NO_MIGRATE"] = "1"
    scheme = "https" if args.tls_cert else "http"
    print(f"veu-server listening on {scheme}://{args.host}:{args.port}", flush=True)
    config = uvicorn.Config(
        "server.api.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        access_log=args.access_log,
        log_level=args.log_level,
        log_config=dict_config(args.log_level),
        timeout_graceful_shutdown=10,
    )
    if args.workers > 1:
        from server.api.workers import supervisor

        try:
            workers = supervisor(config)
        except OSError as exc:
            raise Invalid(
                "cannot_listen",
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
                " (is another process on that port? choose one with --port)",
            ) from None
        workers.run()
    else:
        uvicorn.Server(config).run()
    return EXIT_OK


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


# --------------------------------------------------------------------------- parser


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


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--data-dir", help=f"data directory (env {ENV_DATA_DIR})")
    common.add_argument(
        "--database-url",
        help=f"PostgreSQL URL; default SQLite in the data dir ({ENV_DATABASE_URL})",
    )
    parser = Parser(prog="veu-server", description="VEU Attest verifier")
    parser.add_argument("--version", action="version", version=f"veu-server {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        group: Subcommands, name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        return add_command(group, name, func, help_text, common)

    serve = add(sub, "serve", cmd_serve, "run the verifier's HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--access-log", action="store_true")
    serve.add_argument("--log-level", default="warning")

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
    p.add_argument("--ttl", type=parse_duration, default=timedelta(hours=24))

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

    from server.cli import compliance as compliance_cli
    from server.cli import log as log_cli
    from server.cli import policy as policy_cli
    from server.cli import report as report_cli
    from server.cli import retention
    from server.devtools import demo, simulate

    compliance_cli.register(sub, common, site, org)
    policy_cli.register(sub)
    report_cli.register(sub)
    demo.register(sub)
    simulate.register(sub)
    retention.register(sub)
    log_cli.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except (VeuError, ConfigError) as exc:
        say(exc.code, exc.detail)
        return exit_code(exc)
    except SQLAlchemyError as exc:
        say("database", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return EXIT_DB
    except OSError as exc:
        say("os", f"{type(exc).__name__}: {exc}")
        return EXIT_DB
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
