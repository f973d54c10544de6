"""Text from hosts and verifiers shown to a person safely: control and bidirectional-formatting
characters become visible escapes.

Hostnames, paths, serials and error details are controlled by an agent (or a verifier) and reach
dashboards, reports and terminals. Raw, U+202E makes ``…\\u202egnp.exe`` read as another name, and
ESC/BEL/OSC sequences reach the operator's terminal (colour, titles, clipboard writes). Both the
verifier and the agent show such text through :func:`visible`; the CLIs wrap their standard
streams in :class:`VisibleStream`. Data is stored as received: only what is shown changes.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

#: Kept as they are: line structure, not a way to hide or move text.
_KEEP = frozenset("\n\t")


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _shown_raw(ch: str) -> bool:
    if ch in _KEEP:
        return True
    # Cc: C0/C1 controls (ESC, BEL, CSI...); Cf: format characters (bidi overrides and
    # isolates, zero-width joiners, the BOM); Zl/Zp: line and paragraph separators.
    return unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")


def visible(text: str) -> str:
    """``text`` with every control or formatting character written as a ``\\xNN``/``\\uNNNN``
    escape; newlines and tabs are kept."""
    if text.isprintable():
        return text  # the common case costs one C-level scan
    out = []
    for ch in text:
        out.append(ch if _shown_raw(ch) else _escape(ch))
    return "".join(out)


def visible_json(text: str) -> str:
    """JSON text with its control and formatting characters (only possible inside strings:
    ``json.dumps`` writes no others) as ``\\uNNNN`` escapes: the same data, shown visibly."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if _shown_raw(ch):
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:  # a UTF-16 surrogate pair, as JSON spells a character outside the BMP
            code = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


def visible_value(value: Any) -> Any:
    """:func:`visible` for strings, anything else unchanged (for template finalizers)."""
    return visible(value) if isinstance(value, str) else value


class VisibleStream:
    """A text stream whose writes go through :func:`visible` (for ``sys.stdout``/``stderr``)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(visible(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextmanager
def visible_streams() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` through :class:`VisibleStream` for the block (a CLI's
    ``main``); binary writes to their ``buffer`` are unchanged."""
    saved = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, VisibleStream(saved[0]))
    sys.stderr = cast(TextIO, VisibleStream(saved[1]))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
