#!/usr/bin/env python3
"""Fleet simulator / load generator for the fleet benchmarks (issue 7).

The engine is :mod:`server.devtools.simulate` (also ``veu-server simulate``); this module adds
what the benchmarks share: start a real ``veu-server serve`` (SQLite or PostgreSQL, N workers),
make a throwaway PostgreSQL database, enroll a fleet and drive it, and sample CPU and memory of
process trees with psutil.

Run on its own it starts a server on SQLite in a temporary directory and drives it::

    .venv/bin/python bench/fleet.py --hosts 200 --seconds 20 --rate 100
    .venv/bin/python bench/fleet.py --url http://127.0.0.1:8443 --data-dir /var/lib/veu ...
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from server.cli.devtools import add_arguments  # noqa: E402
from server.cli.devtools import run_simulate as simulate_run  # noqa: E402
from server.devtools.simulate import (  # noqa: E402
    Report,
    SimHost,
    Traffic,
    drive,
    enroll_all,
    make_hosts,
    make_site,
    make_tokens,
    run_async,
)
from tests.server.conftest import LiveServer, start_server, stop_server  # noqa: E402

__all__ = [
    "Fleet",
    "LiveServer",
    "Report",
    "SimHost",
    "Traffic",
    "cpu_by_pid",
    "cpu_seconds",
    "cpu_since",
    "drive",
    "enroll_fleet",
    "pg_create",
    "pg_drop",
    "postgres_pids",
    "rss_mb",
    "run_async",
    "start_server",
    "stop_server",
    "tree_pids",
]


@dataclass
class Fleet:
    site_id: str
    hosts: list[SimHost]
    enroll: Report


def enroll_fleet(
    server: LiveServer, hosts: int, *, site_id: str | None = None, concurrency: int = 8
) -> Fleet:
    """Make a site (unless given), tokens in the database, and enroll ``hosts`` over HTTP."""
    db_url = server.database_url
    site = site_id or make_site(db_url)
    fleet = make_hosts(site, hosts)
    tokens = make_tokens(db_url, site, hosts)
    report = run_async(enroll_all(server.url, fleet, tokens, concurrency))
    if report.errors:
        raise RuntimeError(f"enrollment failed: {report.error_samples[:3]}")
    return Fleet(site, fleet, report)


def pg_create(admin_url: str) -> tuple[str, str]:
    """A fresh PostgreSQL database with a random name: (url, name)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from server.config import normalize_database_url

    admin_url = normalize_database_url(admin_url)
    name = f"veu_fleet_{secrets.token_hex(5)}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def pg_drop(admin_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    from server.config import normalize_database_url

    engine = create_engine(normalize_database_url(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's supervisor and its workers)."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def postgres_pids() -> list[int]:
    """Every process named postgres (the cluster's backends; shared with other users' work)."""
    out = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            out.append(proc.pid)
    return out


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of those processes that still exists."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[pid] = t.user + t.system
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of those processes (children that exited are not counted)."""
    return sum(cpu_by_pid(pids).values())


def cpu_since(before: dict[int, float], pids: list[int]) -> float:
    """CPU used by ``pids`` since ``before`` (a :func:`cpu_by_pid`); a process started since
    counts from zero, one that exited meanwhile is not counted."""
    return sum(used - before.get(pid, 0.0) for pid, used in cpu_by_pid(pids).items())


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    url_action = next(a for a in parser._actions if a.dest == "url")
    url_action.required = False
    url_action.help = "a running verifier (default: start one on SQLite in a temp dir)"
    args = parser.parse_args(argv)
    args.json = True
    if args.url:
        return simulate_run(args)
    with tempfile.TemporaryDirectory(prefix="veu-fleet-") as tmp:
        data = Path(tmp) / "data"
        server = start_server(data, f"sqlite:///{data / 'veu.sqlite3'}")
        try:
            args.url, args.data_dir, args.database_url = server.url, str(data), None
            os.environ.pop("VEU_DATABASE_URL", None)
            code = simulate_run(args)
        finally:
            stop_server(server)
    return code


if __name__ == "__main__":
    _ = json
    sys.exit(main())
