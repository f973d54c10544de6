"""A figure the law or a datasheet gives us, with how firmly we know it (RULES.md tags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.policy._yaml import Node, Reader

#: P primary text, E third-party eCFR extract, S secondary sources, C computed, U unverified.
TAGS = ("P", "E", "S", "C", "U")
FIGURE_KEYS = {"value", "confidence", "source", "note", "verified"}


@dataclass(frozen=True)
class Figure:
    value: Any
    confidence: str
    source: str
    note: str | None = None
    verified: str | None = None  # what a check against the primary text found, and where


def read_tag(path: Path, node: Any, key: str, value: Any) -> str:
    if value not in TAGS:
        line = node.line_of(key) if isinstance(node, Node) else 0
        from server.policy.errors import PackError

        raise PackError(
            path, line, "bad_confidence", f"confidence must be one of {TAGS}, got {value!r}"
        )
    return str(value)


def read_figure(path: Path, node: Any, what: str, *, numeric: bool = True) -> Figure:
    r = Reader(path, node, what, FIGURE_KEYS)
    value = r.req("value")
    if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise r.error("value", "bad_type", f"{what}.value must be a number")
    tag = read_tag(path, r.node, "confidence", r.req("confidence"))
    return Figure(
        value=value,
        confidence=tag,
        source=r.rstr("source"),
        note=r.str_("note", required=False),
        verified=r.str_("verified", required=False),
    )
