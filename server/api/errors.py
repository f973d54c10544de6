"""Every error the API answers is JSON ``{"code", "detail"}`` with a stable code; no tracebacks.

The one table from the verifier's error families (server/errors.py, and the appraisal's
rejections, server/appraise/) to HTTP statuses lives here: :data:`FAMILY_STATUS`, looked up by
the error's class and its bases, most specific first. :class:`APIError` is for what only HTTP
has (a media type, a Content-Length) and carries its status itself.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import appraise
from server.errors import (
    Conflict,
    Gone,
    Invalid,
    NotFound,
    RateLimited,
    Refused,
    Unauthenticated,
    Unprocessable,
    VeuError,
)

log = logging.getLogger("veu.server")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


#: Family -> HTTP status; an error takes the entry of the first class of its MRO listed here.
FAMILY_STATUS: dict[type[Exception], int] = {
    Invalid: 400,
    Unprocessable: 422,
    Unauthenticated: 401,
    Refused: 403,
    RateLimited: 429,
    NotFound: 404,
    Gone: 410,
    Conflict: 409,
    appraise.Rejected: 400,
    appraise.Malformed: 400,
    appraise.TooLarge: 413,
    appraise.Unauthenticated: 401,
    appraise.KeyRefused: 403,
    appraise.InvalidStatement: 422,
    appraise.BindingMismatch: 403,
    appraise.TpmEvidenceRejected: 422,
    appraise.FreshnessRejected: 409,
    appraise.ClockSkew: 422,
    appraise.EvidenceTooOld: 422,
    appraise.ChainRejected: 409,
}


def http_status(error: type[Exception] | Exception) -> int:
    """The HTTP status of an error family (500 for anything not in :data:`FAMILY_STATUS`)."""
    cls = error if isinstance(error, type) else type(error)
    for base in cls.__mro__:
        status = FAMILY_STATUS.get(base)
        if status is not None:
            return status
    return 500


class APIError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


def known_error_response(exc: Exception) -> JSONResponse | None:
    """The answer to an error the API raises on purpose (or input the database refused), or
    None for anything else. Shared by the exception handlers and the ingest fast path."""
    if isinstance(exc, APIError):
        return error_response(exc.status, exc.code, exc.detail, exc.headers)
    if isinstance(exc, VeuError | appraise.Rejected):
        status = http_status(exc)
        headers = {"Retry-After": "60"} if status == 429 else None
        return error_response(status, exc.code, exc.detail, headers)
    if isinstance(exc, DataError):
        # Input the database cannot hold (NUL in text, a value too wide): the caller's fault.
        log.info("database refused input: %s", str(exc.orig).splitlines()[0][:200])
        return error_response(
            400, "bad_request", "the request holds a value the verifier cannot store"
        )
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    @app.exception_handler(VeuError)
    @app.exception_handler(appraise.Rejected)
    @app.exception_handler(DataError)
    async def _known(_: Request, exc: Exception) -> JSONResponse:
        response = known_error_response(exc)
        assert response is not None
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))[:80]
            parts.append(f"{loc}: {str(err.get('msg', 'invalid'))[:120]}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else code
        return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "the verifier failed; this is retryable")
