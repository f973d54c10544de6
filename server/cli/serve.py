"""``veu-server serve``: the verifier's HTTP API (uvicorn; ``--workers N`` with one socket per
worker), with the policy packs recorded for every worker at start and on SIGHUP."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import uvicorn

from server.cli._common import EXIT_OK, Parser, Subcommands, add_command, settings_of
from server.config import ENV_DATA_DIR, ENV_DATABASE_URL, Settings
from server.errors import Invalid


def is_loopback(host: str) -> bool:
    """Whether ``--host`` only listens on this machine (``localhost`` or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def _now() -> datetime:
    return datetime.now(UTC)


def _pack_recorder(settings: Settings) -> Callable[..., None]:
    """Record the packs of ``VEU_POLICIES_DIR`` for every worker (server/compliance/policy_sync.py):
    at start only when they differ from the recorded ones; a bad pack is a usage error."""
    from server.compliance.policy_sync import reload_from_disk
    from server.policy import PackError
    from server.store.db import Database, engine_for

    def record(actor: str, *, at_start: bool = False) -> None:
        db = Database(engine_for(settings))
        try:
            reload_from_disk(
                db,
                settings.policies_dir,
                settings.data_dir,
                actor=actor,
                now=_now(),
                unless_recorded=at_start,
            )
        except PackError as exc:
            raise Invalid("bad_policy_pack", str(exc)) from None
        finally:
            db.dispose()

    return record


def _reload_on_hup(record: Callable[..., None]) -> None:
    """SIGHUP to ``serve --workers N``: record the packs on disk; each worker loads them at its
    next check. A pack that does not load changes nothing (logged)."""
    log = logging.getLogger("veu.policy")
    try:
        record("signal:SIGHUP")
        log.info("SIGHUP: policy packs recorded; every worker loads them at its next check")
    except Invalid as exc:
        log.error("SIGHUP: policy packs not reloaded: %s", exc.detail)
    except Exception:  # the supervisor must survive (a database outage)
        log.exception("SIGHUP: policy packs not reloaded")


def cmd_serve(args: argparse.Namespace) -> int:
    from contract.jsonlog import dict_config
    from server.log.note import load_log_key
    from server.results import load_or_create_key
    from server.store.migrate import upgrade

    settings = settings_of(args)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise Invalid("usage", "--tls-cert and --tls-key go together")
    if args.tls_cert is None and not is_loopback(args.host):
        if not args.allow_plain_http:
            raise Invalid(
                "plain_http_public",
                f"--host {args.host} is not a loopback address and no --tls-cert is given: "
                "enrollment tokens, API keys and session cookies would cross the network in "
                "clear. Give --tls-cert/--tls-key, or --allow-plain-http if a TLS-terminating "
                "proxy is the only client",
            )
        print(
            f"WARNING: serving plain HTTP on {args.host} (--allow-plain-http): only a "
            "TLS-terminating proxy may reach this port",
            file=sys.stderr,
            flush=True,
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.resolved_database_url())
    load_or_create_key(settings.verifier_key_path)  # before workers race to create it
    load_log_key(settings.log_key_path, settings.effective_log_origin)  # the same
    if settings.database_url is None and args.workers > 1:
        raise Invalid(
            "usage", "--workers > 1 needs PostgreSQL (--database-url); SQLite has one writer"
        )
    reload_packs = _pack_recorder(settings)
    reload_packs("veu-server serve", at_start=True)
    os.environ[ENV_DATA_DIR] = str(settings.data_dir)
    if settings.database_url:
        os.environ[ENV_DATABASE_URL] = settings.database_url
    else:
        os.environ.pop(ENV_DATABASE_URL, None)
    os.environ["VEU_NO_MIGRATE"] = "1"
    scheme = "https" if args.tls_cert else "http"
    print(f"veu-server listening on {scheme}://{args.host}:{args.port}", flush=True)
    from server.api.limits import ConnectionLimits, ServerConfig

    config = ServerConfig(
        "server.api.app:create_app_from_env",
        limits=ConnectionLimits.of(settings),
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
        **({"forwarded_allow_ips": ",".join(args.trusted_proxy)} if args.trusted_proxy else {}),
    )
    if args.workers > 1:
        from server.api.workers import supervisor

        try:
            workers = supervisor(config, on_hup=lambda: _reload_on_hup(reload_packs))
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


def register(sub: Subcommands, common: Parser) -> None:
    def add(
        group: Subcommands, name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        return add_command(group, name, func, help_text, common)

    serve = add(sub, "serve", cmd_serve, "run the verifier's HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument(
        "--allow-plain-http",
        action="store_true",
        help="serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        metavar="ADDRESS",
        help="a proxy whose X-Forwarded-Proto/-For are believed (repeatable; default 127.0.0.1)",
    )
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--access-log", action="store_true")
    serve.add_argument("--log-level", default="warning")
