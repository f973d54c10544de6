"""What one client may cost the verifier before its request reaches a route.

Two layers, both configured from :class:`~server.config.Settings` (docs/verifier.md, "Resource
bounds"):

- :class:`BoundedHttpToolsProtocol`, the HTTP/1.1 connection uvicorn runs: a deadline for the
  request head (also for an idle socket that never sends one), a deadline for the body, a cap on
  the head's bytes and header count (431), a cap on open connections per process (503 and
  closed), and a cap on requests per keep-alive connection. uvicorn itself only times out idle
  keep-alive connections after a first response, and reads heads of any size.
- :class:`BodyLimits`, ASGI middleware: every route has a body cap, checked against the declared
  ``Content-Length`` before anything is read and against the bytes as they stream in, and the
  admin routes that take JSON authenticate the caller before a byte of the body is read.

``POST /v1/snapshots`` is passed straight through (its route reads under ``max_body_bytes``
itself, and it is the one hot route).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.api import auth
from server.api.deps import services
from server.api.errors import APIError, error_response, known_error_response
from server.config import Settings

log = logging.getLogger("veu.server")


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds of one server process (their defaults are Settings' defaults)."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    max_connections: int = 1000
    max_requests_per_connection: int = 10_000

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            keep_alive_s=settings.keep_alive_s,
            max_connections=settings.max_connections,
            max_requests_per_connection=settings.max_requests_per_connection,
        )


class ServerConfig(uvicorn.Config):
    """uvicorn's config with the connection limits; it pickles into ``--workers`` processes."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        kwargs.setdefault("timeout_keep_alive", max(1, round(limits.keep_alive_s)))
        super().__init__(app, http=BoundedHttpToolsProtocol, **kwargs)
        self.limits = limits


def _limits_of(config: uvicorn.Config) -> ConnectionLimits:
    limits = getattr(config, "limits", None)
    return limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()


_refusals = {"count": 0, "logged_at": 0.0}


def _refused_connection(logger: logging.Logger, open_now: int) -> None:
    """One warning per 10 s however many connections are refused (a flood must not flood the
    log too)."""
    _refusals["count"] += 1
    now = time.monotonic()
    if now - _refusals["logged_at"] >= 10.0:
        logger.warning(
            "connection_limit: refused %d connection(s) with %d open (VEU_MAX_CONNECTIONS)",
            _refusals["count"],
            open_now,
        )
        _refusals["count"], _refusals["logged_at"] = 0, now


def _plain(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools connection with deadlines and size caps on what the client sends."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits = _limits_of(config)
        self._in_head = True
        self._refused = False
        self._head_bytes = 0
        self._header_count = 0
        self._requests = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _refused_connection(self.logger, len(self.connections) - 1)
            transport.write(_plain(b"503 Service Unavailable", b"too many connections\n"))
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes:
                self.transport.write(_plain(b"408 Request Timeout", b"request head too slow\n"))
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.logger.info("closed a connection: request body too slow")
            self.transport.close()

    def _refuse_head(self, why: bytes) -> None:
        self._refused = True
        self._cancel_timers()
        self.transport.write(_plain(b"431 Request Header Fields Too Large", why))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        if not self._in_head:
            super().data_received(data)
            return
        self._arm_head_timer()
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the cap allows; if the head is still not over, refuse the rest.
        self._head_bytes = self.limits.max_header_bytes
        if room > 0:
            super().data_received(data[:room])
        if self._in_head:
            self._refuse_head(b"request head over %d bytes\n" % self.limits.max_header_bytes)
            return
        if not self.transport.is_closing():
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= self.limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._header_count > self.limits.max_headers:
            self._refuse_head(b"more than %d header fields\n" % self.limits.max_headers)
            return
        self._requests += 1
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()
        if self._requests >= self.limits.max_requests_per_connection and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head = True
        self._head_bytes = 0
        if not self._refused:
            super().on_message_complete()


# --------------------------------------------------------------------------- HSTS

#: Sent on every answer over HTTPS (direct TLS, or a trusted proxy's X-Forwarded-Proto).
HSTS = (b"strict-transport-security", b"max-age=31536000")


class StrictTransport:
    """ASGI middleware: ``Strict-Transport-Security`` on every HTTPS answer, so a browser that
    has reached the dashboard over TLS never falls back to plain HTTP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), HSTS]}
            await send(message)

        await self.app(scope, receive, with_hsts)


# --------------------------------------------------------------------------- request bodies

KIB = 1024
#: Any route not listed below.
DEFAULT_BODY_CAP = 64 * KIB


@dataclass(frozen=True)
class BodyRule:
    method: str
    path: re.Pattern[str]
    cap: int
    #: Authenticate as admin before reading the body.
    admin: bool = False


BODY_RULES: tuple[BodyRule, ...] = (
    BodyRule("POST", re.compile(r"/v1/enroll"), 16 * KIB),
    BodyRule("POST", re.compile(r"/v1/shipments"), 8 * KIB * KIB, admin=True),
    BodyRule("POST", re.compile(r"/v1/models"), 8 * KIB * KIB, admin=True),
    BodyRule("PUT", re.compile(r"/v1/sites/[^/]+/authorization"), 64 * KIB, admin=True),
    BodyRule("POST", re.compile(r"/dashboard/.*"), 16 * KIB),
)


def body_rule(method: str, path: str) -> BodyRule | None:
    for rule in BODY_RULES:
        if rule.method == method and rule.path.fullmatch(path):
            return rule
    return None


class BodyLimits:
    """ASGI middleware: the body cap of each route, and admin authentication before the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope["path"] == "/v1/snapshots" and scope["method"] == "POST"
        ):
            await self.app(scope, receive, send)
            return
        rule = body_rule(scope["method"], scope["path"])
        cap = rule.cap if rule is not None else DEFAULT_BODY_CAP
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await _too_large(cap, declared)(scope, receive, send)
            return
        if rule is not None and rule.admin:
            request = Request(scope)
            try:
                await run_in_threadpool(auth.admin, services(request), request)
            except APIError as exc:
                refused = known_error_response(exc)
                assert refused is not None
                refused.headers["connection"] = "close"
                await refused(scope, receive, send)
                return
        seen = 0
        tripped = False
        started = False
        # Whether the client may still be sending body the app has not read.
        unread = (declared is None and _chunked(scope)) or bool(declared)

        went_away = False

        async def capped_receive() -> Message:
            nonlocal seen, tripped, unread, went_away
            if tripped:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect" and unread:
                went_away = True
            elif message["type"] == "http.request":
                unread = bool(message.get("more_body", False))
                seen += len(message.get("body", b""))
                if seen > cap:
                    tripped = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if tripped:
                return  # the app's answer to a body cut short; ours is sent below
            if message["type"] == "http.response.start" and unread:
                # Answered before the body was read: close rather than read it to the end.
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except ClientDisconnect:
            went_away = True
        except Exception:
            if not tripped:
                raise
        if went_away and not tripped:
            client_went_away(scope)
            return
        if tripped and not started:
            await _too_large(cap, None)(scope, receive, send)


_CLOSE = (b"connection", b"close")


def _chunked(scope: Scope) -> bool:
    return any(
        name == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in scope["headers"]
    )


def client_went_away(scope: Scope) -> None:
    """One quiet line for a client that disconnected before its body was read (no traceback:
    nothing failed here, and nobody is left to answer)."""
    client = scope.get("client") or ("-", 0)
    log.info(
        "client_disconnected: %s:%s closed the connection during %s %s before its body was read",
        client[0],
        client[1],
        scope["method"],
        scope["path"][:200],
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(cap: int, declared: int | None) -> Any:
    size = f"the body is {declared} bytes" if declared is not None else "the body is over it"
    response = error_response(413, "too_large", f"{size}; this route's limit is {cap} bytes")
    response.headers["connection"] = "close"
    return response


__all__ = [
    "BODY_RULES",
    "DEFAULT_BODY_CAP",
    "BodyLimits",
    "BoundedHttpToolsProtocol",
    "ConnectionLimits",
    "ServerConfig",
    "StrictTransport",
    "body_rule",
    "client_went_away",
]
