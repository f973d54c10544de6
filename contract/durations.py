"""The one duration syntax of both command lines, both config files and every environment setting.

A duration is a non-negative decimal number with an optional unit: ``90`` (the setting's own
unit, seconds unless it says otherwise), ``250ms``, ``90s``, ``15m``, ``1.5h``, ``7d``, ``1w``.
Whitespace around it and between number and unit is allowed; signs, exponents and other units
are not. Errors name the setting and where its value came from (a file, a flag, a variable), so
that a person can find the line to fix.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta

_SYNTAX = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$")
UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
EXAMPLES = "90, 90s, 15m, 1.5h, 7d, 1w"


class DurationError(ValueError):
    """A value that is not a duration; ``code`` is stable, ``detail`` names setting and source."""

    code = "bad_duration"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_duration(
    value: str | float | int,
    *,
    setting: str = "duration",
    source: str | None = None,
    default_unit: str = "s",
    allow_zero: bool = False,
) -> float:
    """Seconds from a duration (see the module docstring). ``setting`` and ``source`` (e.g.
    ``"/etc/veu-agent/agent.toml"``, ``"environment"``, ``"command line"``) go into the error;
    ``default_unit`` is the unit of a bare number; zero is refused unless ``allow_zero``."""
    where = f"{setting} ({source})" if source else setting
    if isinstance(value, bool):
        raise DurationError(f"{where}: {value!r} is not a duration; use e.g. {EXAMPLES}")
    if isinstance(value, int | float):
        seconds = float(value) * UNITS[default_unit]
        shown = repr(value)
    else:
        match = _SYNTAX.match(value)
        if match is None:
            raise DurationError(
                f"{where}: {value[:40]!r} is not a duration; use e.g. {EXAMPLES} "
                f"(a bare number is in {_unit_name(default_unit)})"
            )
        seconds = float(match.group(1)) * UNITS[match.group(2) or default_unit]
        shown = repr(value.strip()[:40])
    if not seconds == seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        raise DurationError(f"{where}: {shown} is not a finite, non-negative duration")
    if seconds == 0 and not allow_zero:
        raise DurationError(f"{where}: {shown} must be longer than zero")
    return seconds


def parse_timedelta(
    value: str, *, setting: str = "duration", source: str | None = None
) -> timedelta:
    """:func:`parse_duration` as a :class:`~datetime.timedelta` (positive)."""
    return timedelta(seconds=parse_duration(value, setting=setting, source=source))


def _unit_name(unit: str) -> str:
    return {"ms": "milliseconds", "s": "seconds"}.get(unit, unit)


def flag_type(flag: str) -> Callable[[str], float]:
    """An argparse ``type`` for a duration flag of either command line (seconds)."""

    def parse(text: str) -> float:
        try:
            return parse_duration(text, setting=flag, source="command line")
        except DurationError as exc:
            raise argparse.ArgumentTypeError(exc.detail) from exc

    return parse


def timedelta_flag_type(flag: str) -> Callable[[str], timedelta]:
    """:func:`flag_type` answering a :class:`~datetime.timedelta`."""
    seconds = flag_type(flag)
    return lambda text: timedelta(seconds=seconds(text))
