"""``veu-server log``: the transparency log from the command line.

- ``log verify``: the whole log against the database (server/log/check.py); names the first
  discrepancy and exits 1, else prints what it checked.
- ``log integrate``: integrate every pending leaf and sign a checkpoint now (a verifier whose
  processes run with ``VEU_LOG_INTERVAL_MS=0``, or a maintenance window).
- ``log key``: the note key to pin (``<origin>+<key id>+<base64 key>``), as ``GET /v1/log/key``.
"""

from __future__ import annotations

import argparse
import sys

from contract.errors import ResultError
from server.cli._common import (
    EXIT_BROKEN,
    EXIT_OK,
    Opened,
    Parser,
    Subcommands,
    add_command,
    open_services,
)
from server.errors import Invalid
from server.log.check import verify_log
from server.log.integrate import Log
from server.log.note import LogKey, load_log_key


def register(sub: Subcommands, common: Parser) -> None:
    """Add ``log verify|integrate|key`` to the top-level subcommands."""
    group = sub.add_parser("log", help="the transparency log").add_subparsers(
        dest="log", required=True
    )
    add_command(group, "verify", cmd_verify, "check the whole log against the database", common)
    add_command(
        group, "integrate", cmd_integrate, "integrate pending leaves and sign a checkpoint", common
    )
    add_command(group, "key", cmd_key, "print the log's note key (pin it to verify)", common)


def _key(opened: Opened) -> LogKey:
    s = opened.settings
    try:
        return load_log_key(s.log_key_path, s.effective_log_origin)
    except ResultError as exc:  # a key file others can read, or not a key
        opened.close()
        raise Invalid(exc.code, exc.detail) from None


def cmd_verify(args: argparse.Namespace) -> int:
    opened = open_services(args)
    key = _key(opened)
    try:
        report = verify_log(opened.db, key)
    finally:
        opened.close()
    if report.problem is not None:
        print(f"log BROKEN: {report.problem}", file=sys.stderr)
        return EXIT_BROKEN
    print(
        f"log intact: {report.leaves} leaves ({report.accepted} accepted snapshots, each in it "
        f"and matching its row), {report.checkpoints} checkpoints, latest of size "
        f"{report.checkpoint_size}; {report.leaves - report.integrated} not yet integrated"
    )
    return EXIT_OK


def cmd_integrate(args: argparse.Namespace) -> int:
    opened = open_services(args)
    log = Log(opened.db, _key(opened))
    try:
        row = log.integrate_all()
    finally:
        opened.close()
    assert row is not None  # integrate_all waits for the lock
    print(f"log: checkpoint of size {row.size}")
    print(row.note, end="")
    return EXIT_OK


def cmd_key(args: argparse.Namespace) -> int:
    opened = open_services(args)
    key = _key(opened)
    opened.close()
    print(key.verifier_key)
    return EXIT_OK
