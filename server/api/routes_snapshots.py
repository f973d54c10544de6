"""Evidence in (``POST /v1/snapshots``) and evidence out (raw envelopes, signed results).

The HTTP edge of :mod:`server.ingest`: check the media type, read the body under a cap, hand the
bytes to the process's :class:`~server.ingest.Ingest` in a worker thread, and answer its outcome
(2xx only after the commit). Refusals are :class:`~server.appraise.Rejected` and reach the client
through the API's one error table (server/api/errors.py).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api import auth
from server.api.deps import Services, SvcDep, services
from server.api.errors import APIError, known_error_response
from server.api.limits import client_went_away
from server.api.routes_log import bundle_of
from server.ingest import Outcome
from server.store import repo

router = APIRouter(prefix="/v1", tags=["evidence"])

ACCEPTED_TYPES = ("application/json", "application/vnd.dsse.envelope.v1+json")
DIGEST = Path(pattern=r"^[0-9a-f]{64}$", description="envelope digest (hex SHA-256 of payload)")


class SubmitResponse(BaseModel):
    digest: str
    status: str
    duplicate: bool
    result: str


class ResultResponse(BaseModel):
    digest: str
    status: str
    result: str
    #: The transparency log's bundle once the snapshot is integrated (about a second after it
    #: was accepted): its leaf, index, inclusion proof and the signed checkpoint; else null.
    log: dict[str, Any] | None = None


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, refusing (413) a declared or streamed size over ``cap`` without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "bad_request", "Content-Length is not a number") from None
        if size > cap:
            raise APIError(413, "too_large", f"the body is {size} bytes; the limit is {cap}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > cap:
            raise APIError(413, "too_large", f"the body is over the limit of {cap} bytes")
    return bytes(body)


@router.post(
    "/snapshots",
    response_model=SubmitResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def submit(svc: SvcDep, request: Request) -> JSONResponse:
    """Appraise one DSSE snapshot envelope; answer the signed attestation result."""
    return await _submit(svc, request)


async def _submit(svc: Services, request: Request) -> JSONResponse:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise APIError(
            415,
            "unsupported_media_type",
            f"send the envelope as one of {', '.join(ACCEPTED_TYPES)}",
        )
    data = await read_capped(request, svc.settings.max_body_bytes)
    started = time.perf_counter()
    try:
        # A few at a time per process (Settings.ingest_concurrency): the rest queue here, in
        # order, instead of contending for the GIL and the database in the threadpool. An
        # accepted snapshot is handed to the writer from the thread (the limiter is then free
        # for the next appraisal while this one waits for its group commit).
        answer = await anyio.to_thread.run_sync(
            svc.ingest.submit, data, limiter=svc.ingest_limiter()
        )
        if isinstance(answer, Future):
            outcome: Outcome = await asyncio.wrap_future(answer)
        else:
            outcome = answer
    finally:
        svc.metrics.ingest_seconds.observe(time.perf_counter() - started)
    # Built directly: the shape is fixed, and re-validating it costs more than building it.
    return JSONResponse(outcome.body())


class IngestFastPath:
    """ASGI middleware: ``POST /v1/snapshots`` goes straight to :func:`_submit`.

    Ingest is the one hot route (every host, every interval). FastAPI's routing, dependency
    solving and exception middleware cost about a tenth of a snapshot's server CPU, for a route
    that needs none of them; this skips them and answers exactly what the declared route (kept
    for OpenAPI, and the same code) answers. Errors the API raises on purpose get the same JSON
    answers as the exception handlers give; anything else propagates to the app's
    ``ServerErrorMiddleware`` (the generic 500), as from the route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/snapshots":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await _submit(services(request), request)
        except ClientDisconnect:
            client_went_away(scope)
            return
        except Exception as exc:
            known = known_error_response(exc)
            if known is None:
                raise
            response = known
        await response(scope, receive, send)


@router.get(
    "/snapshots/{digest}",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "the raw envelope"}},
)
def raw_envelope(svc: SvcDep, request: Request, digest: str = DIGEST) -> Response:
    """The envelope exactly as received, so anyone can verify it again."""
    auth.reader(svc, request)
    with svc.db.read() as session:
        row = repo.snapshot_by_digest(session, digest)
        if row is None:
            raise APIError(404, "not_found", "no accepted snapshot with that digest")
        if row.pruned_at is not None:
            raise APIError(
                410,
                "envelope_pruned",
                f"the raw envelope was pruned by the retention setting on {row.pruned_at:%Y-%m-%d};"
                " its digest and signed result are kept (GET /v1/results/{digest})",
            )
        data = bytes(row.envelope)
    return Response(content=data, media_type="application/json")


@router.get("/results/{digest}", response_model=ResultResponse)
def result(svc: SvcDep, request: Request, digest: str = DIGEST) -> Any:
    """The signed attestation result the verifier gave for that snapshot."""
    auth.reader(svc, request)
    with svc.db.read() as session:
        row = repo.snapshot_by_digest(session, digest)
        if row is None:
            raise APIError(404, "not_found", "no accepted snapshot with that digest")
        found = ResultResponse(digest=row.digest, status=row.status, result=row.result)
    found.log = bundle_of(svc, digest)
    return found
