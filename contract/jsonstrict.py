"""Strict JSON and its canonical bytes (RFC 8785, JCS): what a well-formed envelope or payload is.

Both ends must agree on it, so it lives in the contract. The parser refuses what JCS cannot
represent or what is ambiguous (invalid UTF-8, duplicate keys, NaN/Infinity, integers beyond 2^53,
deep nesting); :func:`canonical_bytes` gives the one encoding of a value, taking the standard
library's C encoder wherever that is provably byte-identical to the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import rfc8785

from contract.errors import MalformedError

#: Deepest JSON nesting accepted anywhere in an envelope or payload.
MAX_JSON_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise MalformedError(f"JSON constant {name} is not allowed", code="malformed_json")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, level by level over containers only (no recursion
    limit surprises, and scalars, most of a snapshot, are never visited one by one). Stops as
    soon as the depth passes ``limit``."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below.extend([c for c in children if type(c) is dict or type(c) is list])
        level = below
    return depth


@dataclass(frozen=True)
class StrictJSON:
    """A strictly parsed JSON value, and what the parser saw on the way."""

    value: Any
    #: No floats, and every object key below U+D800: the standard library's encoder gives the
    #: JCS bytes of ``value`` (see :func:`_fast_path_ok`; integers are already bounded to
    #: +-(2^53-1) by the parse), so :func:`canonical_bytes` need not walk it again.
    stdlib_jcs: bool


def parse_json_strict(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse UTF-8 JSON, refusing what JCS cannot represent or what is ambiguous.

    Rejects invalid UTF-8, duplicate keys, NaN/Infinity, integers beyond IEEE-754 double
    precision (2^53), and nesting deeper than ``max_depth``.
    """
    return parse_strict(data, max_depth=max_depth).value


def parse_strict(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> StrictJSON:
    """:func:`parse_json_strict`, also noting whether the value is plain enough for the fast
    canonical encoder (floats and high keys are noted by the parser's own hooks)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"not valid UTF-8 at byte {exc.start}", code="bad_encoding") from exc
    plain = [True]

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)  # C speed; a repeated key shows as a shorter dict, then named below
        if len(out) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    raise MalformedError(f"duplicate JSON key {key!r}", code="duplicate_key")
                seen.add(key)
        if plain[0]:
            keys = "".join(out)
            if not keys.isascii() and max(keys) >= "\ud800":
                plain[0] = False
        return out

    def a_float(number: str) -> float:
        plain[0] = False
        return float(number)

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=a_float,
        )
    except RecursionError as exc:
        raise MalformedError(
            f"JSON nested deeper than {max_depth} levels", code="json_too_deep"
        ) from exc
    except json.JSONDecodeError as exc:
        raise MalformedError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="malformed_json",
        ) from exc
    if _depth(value, max_depth) > max_depth:
        raise MalformedError(f"JSON nested deeper than {max_depth} levels", code="json_too_deep")
    return StrictJSON(value, plain[0])


_MAX_SAFE_INT = 2**53 - 1


def _bounded_int(text: str) -> int:
    if len(text) > 17:
        raise MalformedError(f"integer {text[:20]}... is out of range", code="number_out_of_range")
    value = int(text)
    if abs(value) > _MAX_SAFE_INT:
        raise MalformedError(f"integer {value} exceeds 2^53-1", code="number_out_of_range")
    return value


_MAX_JCS_INT = 2**53 - 1


def _fast_path_ok(value: Any) -> bool:
    """True when the standard library's encoder already produces the JCS bytes of ``value``.

    That holds for strings, integers within +-(2^53-1), booleans, null, lists and objects whose
    keys sort the same by UTF-16 code units (JCS) as by code points (Python): every key below
    U+D800. JCS and ``json.dumps(..., ensure_ascii=False)`` escape strings identically (quote,
    backslash, the short forms b f n r t, other control characters as lowercase u00xx escapes).
    Floats (ES6 number formatting) and other keys take the full RFC 8785 encoder.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) or item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if -_MAX_JCS_INT <= item <= _MAX_JCS_INT:
                continue
            return False
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str) or (not key.isascii() and max(key) >= "\ud800"):
                    return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            return False
    return True


def canonical_bytes(value: Any, *, stdlib_jcs: bool | None = None) -> bytes:
    """RFC 8785 (JCS) encoding of a JSON-compatible value.

    The ``rfc8785`` package is the reference; it is pure Python and takes ~0.6 s for a snapshot of
    10,000 weight files. Where the C encoder of the standard library is provably byte-identical
    (:func:`_fast_path_ok`; a property test compares both), that is used instead.
    ``stdlib_jcs``: that test's answer when the caller already has it (:class:`StrictJSON`).
    """
    if stdlib_jcs is None:
        stdlib_jcs = _fast_path_ok(value)
    if stdlib_jcs:
        try:
            return json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the reference encoder reject it
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise MalformedError(
            f"value cannot be canonicalized: {exc}", code="malformed_json"
        ) from exc
