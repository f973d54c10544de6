"""``veu-agent``: the command line of the attester.

Exit codes are part of the interface:

- ``attest``: 0 affirming, 1 warning, 2 contraindicated, 3 could not attest, 4 usage.
- ``verify``: 0 valid, 1 signature or digest invalid, 2 malformed input.
- everything else: 0 success, 1 failure (with an error code and a message), 4 usage.
- any command whose stdout reader goes away (``| head``): 141, quietly (as if ended by SIGPIPE).

Errors are printed as ``error[code]: message`` on stderr; no traceback for anything a user did.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from agent import keys
from agent.config import AgentConfig, ConfigError, load_config
from contract import __version__
from contract.display import visible_streams
from contract.errors import EXIT_USAGE, error_line
from contract.keys import key_id as compute_key_id
from contract.keys import load_host_public_pem


class UsageError(Exception):
    pass


class AgentCommandError(Exception):
    def __init__(self, code: str, detail: str, exit_code: int = 1) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(error_line("usage", message), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, help="state directory (key, chain head, caches)")
    p.add_argument("--config", type=Path, help="TOML config (default /etc/veu-agent/agent.toml)")


def _add_collect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", dest="site_id", help="site id the evidence is for")
    p.add_argument(
        "--weights",
        dest="weight_roots",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="a model-weight root to scan (repeatable)",
    )
    p.add_argument(
        "--inventory",
        type=Path,
        help="declared accelerator list (JSON/YAML) replacing hardware probes (demos, tests)",
    )
    p.add_argument("--sys-root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--proc-root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--nvml-replay", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--hash-workers", type=int, help="parallel hashing threads (default: CPUs)")


def _duration_flag(flag: str) -> Any:
    """An argparse ``type`` for a duration flag (:mod:`contract.durations`)."""
    from contract.durations import flag_type

    return flag_type(flag)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="veu-agent",
        description="VEU Attest agent: signed, hash-chained inventory snapshots of AI "
        "accelerators and model-weight storage.",
    )
    parser.add_argument("--version", action="version", version=f"veu-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("init", help="create the host key (in the TPM when there is one)")
    _add_common(p)
    p.add_argument("--force", action="store_true", help="replace an existing key")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--tpm",
        dest="tpm",
        action="store_const",
        const=True,
        default=None,
        help="keep the host key in the TPM; fail if there is none (default: when one is present)",
    )
    g.add_argument(
        "--no-tpm", dest="tpm", action="store_const", const=False, help="keep the key in a file"
    )

    p = sub.add_parser("snapshot", help="collect, sign and chain one snapshot")
    _add_common(p)
    _add_collect(p)
    p.add_argument(
        "--out",
        type=Path,
        help="write the envelope here ('-' or absent: stdout); a regular file is replaced "
        "atomically, a device or FIFO written through",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable summary; without --out, one JSON object on stdout holding the "
        "summary and the envelope",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="collect and sign, but do not advance the chain or queue it (the verifier refuses "
        "such an envelope)",
    )

    p = sub.add_parser("verify", help="check an envelope's signature and show its contents")
    p.add_argument("file", type=Path, help="envelope file ('-' for stdin)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pubkey", type=Path, help="PEM public key of the signer")
    g.add_argument("--state-dir", type=Path, help="use this state directory's agent.pub")
    p.add_argument("--json", action="store_true", help="print the statement as JSON")

    p = sub.add_parser("enroll", help="register this host with a verifier")
    _add_common(p)
    p.add_argument("--server", required=True, help="verifier URL, e.g. https://verifier:8443")
    p.add_argument("--token", required=True, help="single-use enrollment token")
    p.add_argument("--ca-file", type=Path, help="CA bundle for the verifier's TLS certificate")
    p.add_argument("--allow-insecure-http", action="store_true", default=None)

    p = sub.add_parser("attest", help="fresh nonce-bound attestation and the verdict")
    _add_common(p)
    _add_collect(p)
    p.add_argument("--json", action="store_true", help="signed result and decoded claims")
    p.add_argument(
        "--timeout",
        type=_duration_flag("--timeout"),
        default=60.0,
        help="overall time, e.g. 60, 90s, 2m (default 60s)",
    )

    p = sub.add_parser("run", help="the daemon: check in, snapshot, deliver")
    _add_common(p)
    _add_collect(p)
    p.add_argument("--server", dest="server_url", help="verifier URL (default: from enroll)")
    p.add_argument("--check-in-interval", help="e.g. 60, 30s (default 60s)")
    p.add_argument("--report-interval", help="e.g. 900, 15m (default 15m)")
    p.add_argument("--spool-max-bytes", help="outbox bound, e.g. 256MiB")

    p = sub.add_parser("status", help="key, chain head, spool and last delivery")
    _add_common(p)
    p.add_argument("--json", action="store_true")
    return parser


def _config(args: argparse.Namespace) -> AgentConfig:
    overrides: dict[str, Any] = {}
    for name in (
        "state_dir",
        "site_id",
        "weight_roots",
        "inventory",
        "sys_root",
        "proc_root",
        "nvml_replay",
        "hash_workers",
        "server_url",
        "check_in_interval",
        "report_interval",
        "spool_max_bytes",
        "ca_file",
        "allow_insecure_http",
    ):
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    return load_config(getattr(args, "config", None), overrides)


# --------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    config = _config(args)
    key, said = keys.initialize(config.state_dir, tpm=args.tpm, force=args.force)
    print(said, file=sys.stderr)
    print(compute_key_id(key.public_key()))
    return 0


#: File error codes that mean the bytes could not be read (the rest describe bad content).
UNREADABLE_CODES = {"read_error", "unreadable", "changed_while_hashing", "internal_error"}


def summarize(snapshot: Any) -> dict[str, Any]:
    by_model = Counter(
        (a.model or f"unknown {a.pci_vendor_id}:{a.pci_device_id}") for a in snapshot.accelerators
    )
    files = [f for root in snapshot.storage for f in root.files]
    listed = [u for root in snapshot.storage for u in root.unidentified]
    file_errors = [
        f"{f.path}: {f.error.code}: {f.error.detail}" for f in [*files, *listed] if f.error
    ]
    unreadable = sum(1 for f in [*files, *listed] if f.error and f.error.code in UNREADABLE_CODES)
    unreadable += sum(1 for e in snapshot.errors if e.code == "file_unreadable")
    return {
        "seq": snapshot.seq,
        "site_id": snapshot.site_id,
        "key_id": snapshot.agent.key_id,
        "collected_at": snapshot.collected_at,
        "dry_run": snapshot.extensions.get("dry_run") is True,
        "accelerators": dict(sorted(by_model.items())),
        "weight_roots": [
            {
                "root": r.root,
                "encryption": r.encryption.status,
                "encryption_method": r.encryption.method,
                "weight_files": len(r.files),
                "weight_bytes": sum(f.size for f in r.files),
                "unidentified_files": r.unidentified_count,
                "unidentified_bytes": r.unidentified_bytes,
                "unidentified_listed": len(r.unidentified),
            }
            for r in snapshot.storage
        ],
        "weight_files": len(files),
        "weight_bytes": sum(f.size for f in files),
        "unidentified_files": sum(r.unidentified_count or 0 for r in snapshot.storage),
        "unidentified_bytes": sum(r.unidentified_bytes or 0 for r in snapshot.storage),
        "unreadable_files": unreadable,
        "file_errors": file_errors,
        "errors": [f"{e.collector}: {e.code}: {e.detail}" for e in snapshot.errors],
    }


def _bytes(n: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _print_summary(summary: dict[str, Any], digest: str, stream: Any) -> None:
    dry = "  (dry run: never chained, refused by the verifier)" if summary["dry_run"] else ""
    print(f"snapshot seq {summary['seq']}  digest {digest}{dry}", file=stream)
    accs = summary["accelerators"]
    total = sum(accs.values())
    print(f"accelerators: {total}", file=stream)
    for model, count in accs.items():
        print(f"  {count} x {model}", file=stream)
    if summary["weight_roots"]:
        print(f"weight roots: {len(summary['weight_roots'])}", file=stream)
    for root in summary["weight_roots"]:
        how = root["encryption"] + (
            f" ({root['encryption_method']})" if root["encryption_method"] else ""
        )
        line = f"  {root['root']}: {how}; {root['weight_files']} weight files"
        if root["unidentified_files"] is not None:
            line += (
                f"; {root['unidentified_files']} unidentified files, "
                f"{_bytes(root['unidentified_bytes'] or 0)}"
                f" ({root['unidentified_listed']} listed with digests)"
            )
        print(line, file=stream)
    print(
        f"weight files: {summary['weight_files']} ({summary['weight_bytes']:,} bytes)", file=stream
    )
    print(
        f"unidentified files: {summary['unidentified_files']} "
        f"({_bytes(summary['unidentified_bytes'])})",
        file=stream,
    )
    print(f"unreadable files: {summary['unreadable_files']}", file=stream)
    if summary["file_errors"]:
        print(f"file errors: {len(summary['file_errors'])}", file=stream)
        for line in summary["file_errors"][:20]:
            print(f"  {line}", file=stream)
        if len(summary["file_errors"]) > 20:
            print(f"  ... and {len(summary['file_errors']) - 20} more", file=stream)
    if summary["errors"]:
        print(f"collector errors: {len(summary['errors'])}", file=stream)
        for line in summary["errors"]:
            print(f"  {line}", file=stream)
    elif summary["unreadable_files"] or summary["file_errors"]:
        print("collector errors: 0 (but see the file errors above)", file=stream)
    else:
        print("collector errors: none", file=stream)


def check_weight_roots(roots: list[Path]) -> None:
    """Refuse ``--weights`` paths that do not exist or cannot be read (an operator's typo must
    not become an empty inventory). The daemon reports such roots as collector errors instead."""
    for root in roots:
        try:
            st = root.stat()
        except FileNotFoundError as exc:
            raise AgentCommandError(
                "weights_not_found", f"--weights {root}: no such file or directory", EXIT_USAGE
            ) from exc
        except OSError as exc:
            raise AgentCommandError(
                "weights_unreadable", f"--weights {root}: {exc.strerror}", EXIT_USAGE
            ) from exc
        need = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
        if not os.access(root, need):
            raise AgentCommandError(
                "weights_unreadable", f"--weights {root}: permission denied", EXIT_USAGE
            )


def cmd_snapshot(args: argparse.Namespace) -> int:
    from agent import enrollment as enrollment_mod
    from agent.snapshot import take_snapshot
    from contract.fsutil import OutputError, write_output

    config = _config(args)
    check_weight_roots(args.weight_roots)
    key = keys.load_signer(config.state_dir)
    enrolled = enrollment_mod.load(config.state_dir)
    site_id = config.site_id
    outbox = None
    if enrolled is not None:
        if site_id is not None and site_id != enrolled.site_id:
            raise AgentCommandError(
                "site_mismatch",
                f"this host is enrolled at site {enrolled.site_id}; --site {site_id} would be "
                "refused by the verifier",
            )
        site_id = enrolled.site_id
        if not args.dry_run:
            from agent.attest import SPOOL_DIR
            from agent.spool import Spool

            outbox = Spool(
                config.state_dir / SPOOL_DIR,
                config.spool_max_bytes,
                public_key=key.public_key(),
                key_id=compute_key_id(key.public_key()),
            )
    taken = take_snapshot(
        config,
        key,
        progress=sys.stderr.isatty(),
        outbox=outbox,
        site_id=site_id,
        dry_run=args.dry_run,
    )
    summary = summarize(taken.snapshot)
    to_stdout = args.out is None or str(args.out) == "-"
    if args.json and to_stdout:
        envelope = json.loads(taken.raw)
        print(json.dumps({"digest": taken.digest, **summary, "envelope": envelope}, indent=2))
    else:
        if to_stdout:
            sys.stdout.buffer.write(taken.raw + b"\n")
            sys.stdout.flush()
        else:
            try:
                write_output(args.out, taken.raw, state_dir=config.state_dir)
            except OutputError as exc:
                raise AgentCommandError(exc.code, exc.detail) from exc
            except OSError as exc:
                raise AgentCommandError(
                    "out_unwritable", f"cannot write {args.out}: {exc.strerror}"
                ) from exc
        if args.json:
            print(json.dumps({"digest": taken.digest, **summary}, indent=2))
        else:
            _print_summary(summary, taken.digest, sys.stderr)
    if args.dry_run:
        print("dry run: the chain did not advance and nothing was queued.", file=sys.stderr)
    elif outbox is not None:
        print(
            f"queued seq {taken.snapshot.seq} for delivery (the daemon or the next "
            "`veu-agent attest` sends it)",
            file=sys.stderr,
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from contract import EvidenceError, SignatureError, envelope_digest, open_envelope

    try:
        data = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    except OSError as exc:
        raise AgentCommandError(
            "unreadable", f"cannot read {args.file}: {exc.strerror}", 2
        ) from exc
    if args.pubkey is not None:
        pem = args.pubkey.read_bytes()
    else:
        state_dir = args.state_dir or load_config(None, {}).state_dir
        try:
            pem = (state_dir / keys.PUBLIC_NAME).read_bytes()
        except FileNotFoundError as exc:
            raise AgentCommandError(
                "no_pubkey", f"no {keys.PUBLIC_NAME} in {state_dir}; pass --pubkey FILE", 2
            ) from exc
    public = load_host_public_pem(pem)
    try:
        envelope, _, statement, snapshot = open_envelope(
            data.strip(), {compute_key_id(public): public}
        )
    except SignatureError as exc:
        raise AgentCommandError(exc.code, exc.detail, 1) from exc
    except EvidenceError as exc:
        raise AgentCommandError(exc.code, exc.detail, 2) from exc
    digest = envelope_digest(envelope)
    if args.json:
        print(
            json.dumps(
                {"valid": True, "digest": digest, "statement": statement.model_dump(by_alias=True)},
                indent=2,
            )
        )
    else:
        print(f"valid signature by {snapshot.agent.key_id}")
        _print_summary(summarize(snapshot), digest, sys.stdout)
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from agent.enroll import enroll

    config = _config(args)
    enrollment = enroll(
        config,
        server=args.server,
        token=args.token,
        ca_file=args.ca_file,
        allow_insecure_http=bool(args.allow_insecure_http),
    )
    print(f"Enrolled at {enrollment.server_url} for site {enrollment.site_id}.", file=sys.stderr)
    print(enrollment.host_id)
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    from agent.attest import attest

    config = _config(args)
    check_weight_roots(args.weight_roots)
    return attest(config, as_json=args.json, timeout=args.timeout)


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    from agent import daemon

    config = _config(args)
    return daemon.run(config, stop_event=threading.Event(), config_path=args.config, overrides=args)


def cmd_status(args: argparse.Namespace) -> int:
    from agent import status

    config = _config(args)
    text, code = status.render(config.state_dir, args.json)
    print(text)
    return code


COMMANDS = {
    "init": cmd_init,
    "snapshot": cmd_snapshot,
    "verify": cmd_verify,
    "enroll": cmd_enroll,
    "attest": cmd_attest,
    "run": cmd_run,
    "status": cmd_status,
}


def _error_code(exc: BaseException) -> tuple[str, str] | None:
    code = getattr(exc, "code", None)
    detail = getattr(exc, "detail", None)
    if isinstance(code, str) and isinstance(detail, str):
        return code, detail
    return None


#: Exit status when the reader of stdout went away (``veu-agent verify ... | head``): what a
#: shell reports for a command ended by SIGPIPE (128 + 13), never a verification verdict.
EXIT_BROKEN_PIPE = 141


def _reader_went_away() -> int:
    """End quietly: point stdout at /dev/null so the interpreter's final flush cannot raise."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with visible_streams():  # verifier- and host-controlled text reaches the terminal escaped
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return status
    except BrokenPipeError:
        return _reader_went_away()
    except AgentCommandError as exc:
        print(error_line(exc.code, exc.detail), file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(error_line(exc.code, exc.detail), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        coded = _error_code(exc)
        if coded is None:
            raise
        code, detail = coded
        print(error_line(code, detail), file=sys.stderr)
        return 3 if args.command == "attest" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
