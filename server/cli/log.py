"""``veu-server log``: the transparency log from the command line.

- ``log verify``: the whole log against the database (server/log/check.py); names the first
  discrepancy and exits 1, else prints what it checked.
- ``log integrate``: integrate every pending leaf and sign a checkpoint now (a verifier whose
  processes run with ``VEU_LOG_INTERVAL_MS=0``, or a maintenance window).
- ``log key``: the note key to pin (``<origin>+<key id>+<base64 key>``), as ``GET /v1/log/key``.
- ``log witness --url URL --log-key KEY --name NAME [--once | --interval S]``: follow another
  verifier's log, cosign each consistent checkpoint, and exit 1 with the evidence on a split view
  (server/log/witness.py). The witness key is ``witness.key`` (0600) in the data directory; its
  cosignature key (type 0x04) is printed first.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from contract.errors import EvidenceError, ResultError
from contract.tlog import parse_verifier_key
from server.cli._common import (
    EXIT_BROKEN,
    EXIT_OK,
    Opened,
    Parser,
    Subcommands,
    add_command,
    open_services,
    settings_of,
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
    w = add_command(
        group, "witness", cmd_witness, "follow another verifier's log and cosign it", common
    )
    w.add_argument("--url", required=True, help="the verifier whose log to follow")
    w.add_argument("--log-key", required=True, help="its pinned note key (veu-server log key)")
    w.add_argument("--name", required=True, help="this witness's name in its cosignatures")
    w.add_argument("--state-dir", type=Path, help="default: <data dir>/witness/<log origin>")
    w.add_argument("--once", action="store_true", help="one round, then exit")
    w.add_argument("--interval", type=float, default=10.0, help="seconds between rounds")


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


def cmd_witness(args: argparse.Namespace) -> int:
    from server.log.witness import SplitView, Witness
    from server.results import load_or_create_private

    try:
        log_key = parse_verifier_key(args.log_key)
    except EvidenceError as exc:
        raise Invalid(exc.code, f"--log-key: {exc.detail}") from None
    if not 0.1 <= args.interval <= 86400:
        raise Invalid("usage", "--interval is seconds, from 0.1 to 86400")
    settings = settings_of(args)
    try:
        key = load_or_create_private(settings.data_dir / "witness.key", kind="witness")
    except EvidenceError as exc:
        raise Invalid(exc.code, exc.detail) from None
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", log_key.name)[:100]
    state = args.state_dir or settings.data_dir / "witness" / safe
    witness = Witness(args.url, log_key, key, args.name, state)
    print(f"witness key: {witness.verifier_key}", flush=True)
    while True:
        try:
            done = witness.round()
        except SplitView as exc:
            print(f"log SPLIT VIEW: {exc.detail}", file=sys.stderr)
            return EXIT_BROKEN
        print(f"cosigned {log_key.name} at size {done.checkpoint.size}", flush=True)
        if args.once:
            print(done.cosigned, end="")
            return EXIT_OK
        time.sleep(args.interval)


def cmd_key(args: argparse.Namespace) -> int:
    opened = open_services(args)
    key = _key(opened)
    opened.close()
    print(key.verifier_key)
    return EXIT_OK
