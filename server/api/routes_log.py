"""The transparency log over HTTP, read-only and public (a relying party needs no account).

C2SP ``tlog-tiles``: ``/log/checkpoint`` (the latest signed checkpoint, not cached long),
``/log/tile/<L>/<N>[.p/<W>]`` and ``/log/tile/entries/<N>[.p/<W>]`` (immutable once they exist:
cached for a year). For clients that do not do tiles: ``/v1/log/proof/inclusion`` and
``/v1/log/proof/consistency`` answer proofs as JSON (base64 hashes), and ``/v1/log/key`` the
note key to pin. Hostile parameters (past the end, negative, past 2^63-1, size1 > size2) are
answered 4xx by server/log/integrate.py's checks.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from server.api.deps import SvcDep
from server.errors import NotFound
from server.log.tiles import parse_tile

router = APIRouter(tags=["log"])

_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
_FRESH = {"Cache-Control": "no-cache"}


def _n(what: str) -> Any:
    """A query integer (FastAPI parses any length; the log refuses past 2^63-1 with a 400)."""
    return Query(ge=0, description=f"{what}, 0 to 2^63-1")


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@router.get("/log/checkpoint")
def checkpoint(svc: SvcDep) -> Response:
    last = svc.log.latest()
    if last is None:
        raise NotFound("log_empty", "the log has signed no checkpoint yet; try again shortly")
    return Response(last.note, media_type="text/plain; charset=utf-8", headers=_FRESH)


@router.get("/log/tile/{level}/{rest:path}")
def tile(svc: SvcDep, level: str, rest: str) -> Response:
    ref = parse_tile(level, rest)
    return Response(svc.log.tile(ref), media_type="application/octet-stream", headers=_IMMUTABLE)


class KeyOut(BaseModel):
    origin: str
    verifier_key: str


@router.get("/v1/log/key", response_model=KeyOut)
def key(svc: SvcDep) -> KeyOut:
    """The log's note key (``<origin>+<key id>+<base64 key>``): pin it to verify checkpoints."""
    return KeyOut(origin=svc.log.key.origin, verifier_key=svc.log.key.verifier_key)


class InclusionOut(BaseModel):
    index: int
    size: int
    proof: list[str]


@router.get("/v1/log/proof/inclusion", response_model=InclusionOut)
def inclusion(
    svc: SvcDep, index: int = _n("leaf index"), size: int = _n("tree size")
) -> InclusionOut:
    """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    return InclusionOut(index=index, size=size, proof=_b64(svc.log.inclusion(index, size)))


class ConsistencyOut(BaseModel):
    size1: int
    size2: int
    proof: list[str]


@router.get("/v1/log/proof/consistency", response_model=ConsistencyOut)
def consistency(
    svc: SvcDep, size1: int = _n("older tree size"), size2: int = _n("newer tree size")
) -> ConsistencyOut:
    """The RFC 9162 consistency proof from the tree of ``size1`` leaves to that of ``size2``."""
    return ConsistencyOut(size1=size1, size2=size2, proof=_b64(svc.log.consistency(size1, size2)))


def bundle_of(svc: Any, digest: str) -> dict[str, Any] | None:
    """The log bundle of an accepted envelope (for ``GET /v1/results/{digest}``): its leaf, its
    index, the inclusion proof and the signed checkpoint; None until it is integrated."""
    found = svc.log.bundle(digest)
    if found is None:
        return None
    return {
        "index": found.index,
        "entry": base64.b64encode(found.entry).decode(),
        "proof": _b64(found.proof),
        "checkpoint": found.checkpoint,
    }
