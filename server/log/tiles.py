"""C2SP ``tlog-tiles`` paths and payloads (pure): tile indices as ``x001/x234/067``, partial
tiles as ``.p/<W>``, and entry bundles (each entry a big-endian uint16 length and its bytes).

A tile at level ``L`` and index ``N`` holds the hashes of tree level ``8 L``, indices
``[256 N, 256 N + W)``; full tiles have ``W`` = 256.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import Invalid

__all__ = ["HEIGHT", "WIDTH", "TileRef", "bundle", "parse_tile", "tile_path"]

HEIGHT = 8
WIDTH = 1 << HEIGHT
#: Tile levels a tree of at most 2^63 leaves can have (8 levels of 8 bits, and one more).
MAX_LEVEL = 8
_GROUP = re.compile(r"^(x[0-9]{3}/)*[0-9]{3}$")
_WIDTH = re.compile(r"^[1-9][0-9]{0,2}$")


@dataclass(frozen=True)
class TileRef:
    """A tile (``level`` >= 0) or an entry bundle (``level`` None), its index and width."""

    level: int | None
    index: int
    width: int


def tile_path(index: int) -> str:
    """``index`` in the C2SP encoding: groups of three digits, all but the last prefixed x."""
    digits = str(index)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def _bad(detail: str) -> Invalid:
    return Invalid("bad_tile_path", detail)


def parse_tile(level: str, rest: str) -> TileRef:
    """Parse ``<L>/<N>[.p/<W>]`` (``level`` "entries" for an entry bundle) strictly: the
    canonical encoding only, so every tile has exactly one path (caches never split)."""
    if level == "entries":
        lv: int | None = None
    elif re.fullmatch(r"[0-9]", level) and int(level) <= MAX_LEVEL:
        lv = int(level)
    else:
        raise _bad(f"tile level {level[:20]!r} is not a digit from 0 to {MAX_LEVEL}")
    width = WIDTH
    path = rest
    if ".p/" in rest:
        path, _, w = rest.partition(".p/")
        if not _WIDTH.match(w) or int(w) >= WIDTH:
            raise _bad(f"partial width {w[:20]!r} is not from 1 to 255")
        width = int(w)
    if len(path) > 40 or not _GROUP.match(path):
        raise _bad("a tile index is groups of three digits, all but the last prefixed x")
    index = int(path.replace("x", "").replace("/", ""))
    if tile_path(index) != path:
        raise _bad("the tile index is not in its canonical encoding")
    if index >= (1 << 63) >> HEIGHT:
        raise _bad("the tile index is past any tree's end")
    return TileRef(lv, index, width)


def bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length and its bytes."""
    out = bytearray()
    for data in entries:
        if len(data) > 0xFFFF:
            raise ValueError("a log entry is longer than 65535 bytes")
        out += len(data).to_bytes(2, "big") + data
    return bytes(out)


def unbundle(data: bytes) -> list[bytes]:
    """The entries of an entry bundle (raises ValueError when it is cut short)."""
    out: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError("an entry bundle ends inside a length")
        n = int.from_bytes(data[at : at + 2], "big")
        if at + 2 + n > len(data):
            raise ValueError("an entry bundle ends inside an entry")
        out.append(data[at + 2 : at + 2 + n])
        at += 2 + n
    return out
