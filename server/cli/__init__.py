"""``veu-server``: run the verifier and manage its records; one parser, one module per command
group (serve, admin, compliance, policy, report, retention, log, devtools).

Exit codes and the error line: server/cli/_common.py (0 done; 1 checked and found broken; 3 not
found; 4 bad usage or input; 5 the database or a file failed; 6 conflict). Errors print one line
``error[<code>]: <detail>`` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from contract import __version__
from contract.display import visible_streams
from server.cli._common import EXIT_DB, Parser, exit_code, say
from server.config import ENV_DATA_DIR, ENV_DATABASE_URL, ConfigError
from server.errors import VeuError


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

    from server.cli import admin, devtools, retention, serve
    from server.cli import compliance as compliance_cli
    from server.cli import licence as licence_cli
    from server.cli import log as log_cli
    from server.cli import policy as policy_cli
    from server.cli import report as report_cli

    serve.register(sub, common)
    site, org = admin.register(sub, common)
    compliance_cli.register(sub, common, site, org)
    policy_cli.register(sub)
    licence_cli.register(sub)
    report_cli.register(sub)
    devtools.register_demo(sub)
    devtools.register_simulate(sub)
    retention.register(sub)
    log_cli.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with visible_streams():  # host- and agent-controlled text reaches the terminal escaped
        return _run(args)


def _run(args: argparse.Namespace) -> int:
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
