"""What every ``veu-server`` command shares: the parser class, the one table from the verifier's
error families to exit codes, and the one way an error is printed: ``error[code]: detail`` on
stderr (the same line as ``veu-agent``).

Exit codes: 0 done; 1 checked and found broken (``audit verify``, ``report verify``); 3 not
found; 4 bad usage or input (the same code as ``veu-agent``'s usage errors; argparse's own
errors too); 5 the database or a file could not be used; 6 conflicts with what is recorded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeAlias

from contract.errors import EXIT_USAGE, error_line
from server.config import ConfigError, Settings
from server.errors import Conflict, NotFound, VeuError
from server.policy import PolicySet, load_policy_set
from server.store.db import Database, engine_for
from server.store.migrate import upgrade

EXIT_OK, EXIT_BROKEN, EXIT_NOT_FOUND, EXIT_DB, EXIT_CONFLICT = 0, 1, 3, 5, 6

#: Family -> exit code; an error takes the entry of the first class of its MRO listed here.
FAMILY_EXIT: dict[type[Exception], int] = {
    VeuError: EXIT_USAGE,
    ConfigError: EXIT_USAGE,
    NotFound: EXIT_NOT_FOUND,
    Conflict: EXIT_CONFLICT,
}


def exit_code(error: Exception) -> int:
    for base in type(error).__mro__:
        code = FAMILY_EXIT.get(base)
        if code is not None:
            return code
    return EXIT_USAGE


def say(code: str, detail: str) -> None:
    print(error_line(code, detail), file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """argparse with this CLI's usage line and exit code for its own errors."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        say("usage", message)
        raise SystemExit(EXIT_USAGE)


#: The subcommand groups of :class:`Parser` (every level of the command tree is one).
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def add_command(
    group: Subcommands,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help_text: str,
    common: Parser,
) -> argparse.ArgumentParser:
    """A subcommand with the shared storage flags (``common``) that runs ``func``."""
    p = group.add_parser(name, parents=[common], help=help_text, description=help_text)
    p.set_defaults(func=func)
    return p


@dataclass
class Opened:
    """What a command works on: its settings, the migrated database and (on first use) the
    policy packs."""

    settings: Settings
    db: Database
    _policy: PolicySet | None = None

    @property
    def policy(self) -> PolicySet:
        if self._policy is None:
            self._policy = load_policy_set(self.settings.policies_dir)
        return self._policy

    def close(self) -> None:
        self.db.dispose()


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by ``--data-dir`` / ``--database-url``."""
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None), database_url=getattr(args, "database_url", None)
    )


def open_services(args: argparse.Namespace) -> Opened:
    """The data directory (created 0700), the database migrated to the newest schema."""
    settings = settings_of(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    upgrade(settings.resolved_database_url())
    return Opened(settings, Database(engine_for(settings)))
