"""The ``veu-server`` console script: checks the verifier's dependencies are installed, then runs
:func:`server.cli.main`.

A data-center host installs ``veu-attest`` without the ``[server]`` extra to run the agent only;
there ``veu-server`` must say what to install instead of failing with an import traceback. This
module therefore imports nothing of the server, nor any of its dependencies, before the check.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

#: Top-level modules of the ``[server]`` extra's distributions (a test keeps this list and
#: pyproject.toml in step).
SERVER_MODULES = (
    "alembic",
    "cel",
    "fastapi",
    "fpdf",
    "httptools",
    "jinja2",
    "joserfc",
    "multipart",
    "prometheus_client",
    "psycopg",
    "psycopg_pool",
    "sqlalchemy",
    "uvicorn",
)
#: The exit status when the extra is missing: the server's usage / invalid-input status.
EXIT_NOT_INSTALLED = 2
INSTALL_HINT = "pip install 'veu-attest[server]'"


def missing_modules() -> list[str]:
    return [name for name in SERVER_MODULES if find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    missing = missing_modules()
    if missing:
        if args == ["--version"]:
            from contract import __version__

            print(f"veu-server {__version__}")
            return 0
        print(
            f"error: server_not_installed: the verifier's dependencies are not installed "
            f"(missing: {', '.join(missing)}); install them with {INSTALL_HINT} "
            "(a host that only runs veu-agent does not need them)",
            file=sys.stderr,
        )
        return EXIT_NOT_INSTALLED
    from server.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
