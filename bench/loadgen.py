"""A lean HTTP/1.1 load generator for the ingest benchmark: pre-encoded requests, keep-alive
connections, one asyncio protocol per connection.

Why by hand: the benchmark's load generator shares the two cores with the server (and
PostgreSQL), so whatever CPU it burns per request is CPU the server does not get. httpx, which
the product uses, costs ~1.2-1.8 ms of CPU per request here, as much as a third of what the
server spends on a snapshot; this costs a small fraction of that, because each request's bytes
(request line, headers, body) are built once before the clock starts and an answer is parsed only
as far as the status line and ``Content-Length``. It is not a general HTTP client (no chunked
answers, no redirects, no TLS): the verifier's ``POST /v1/snapshots`` answers are plain JSON with
a ``Content-Length``, and anything else is counted as an error, never guessed at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from server.devtools.simulate import run_async


def encode_post(url: str, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """The exact bytes of one keep-alive ``POST``."""
    host = urlsplit(url).netloc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._answer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def _answer(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
            length = next(
                int(line.split(":", 1)[1])
                for line in lines[1:]
                if line[:15].lower() == "content-length:"
            )
        except (IndexError, ValueError, StopIteration):
            waiter.set_exception(ValueError(f"cannot read the answer head: {head[:200]!r}"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiter.set_result((status, body))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None  # uvloop's transports do not subclass asyncio's
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


@dataclass
class Outcome:
    count: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def in_order(group: Sequence[Sequence[bytes]]) -> Iterator[bytes]:
    """The requests of several streams, round by round: each stream's requests stay in order
    (a host's chain must arrive in order) and the streams take turns."""
    rounds = max((len(s) for s in group), default=0)
    for r in range(rounds):
        for stream in group:
            if r < len(stream):
                yield stream[r]


async def drive(url: str, streams: Sequence[Sequence[bytes]], concurrency: int) -> Outcome:
    """Send every stream's requests in order (a host's chain must arrive in order), streams
    spread round-robin over ``concurrency`` keep-alive connections; 200 is success."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"the load generator speaks plain http://host:port only, not {url!r}")
    loop = asyncio.get_running_loop()
    out = Outcome(count=sum(len(s) for s in streams))
    groups = [streams[i::concurrency] for i in range(concurrency)]

    async def worker(group: Sequence[Sequence[bytes]]) -> None:
        transport, conn = await loop.create_connection(_Connection, parts.hostname, parts.port)
        conn.transport = transport  # type: ignore[assignment]  # uvloop may call connection_made later
        try:
            for request in in_order(group):
                t0 = time.perf_counter()
                try:
                    status, body = await conn.send(request)
                    if status != 200:
                        out.errors.append(f"{status} {body[:120]!r}")
                except (ConnectionError, ValueError) as exc:
                    out.errors.append(repr(exc))
                    return
                out.latencies.append(time.perf_counter() - t0)
        finally:
            if conn.transport is not None:
                conn.transport.close()

    begin = time.perf_counter()
    await asyncio.gather(*(worker(g) for g in groups if g))
    out.seconds = time.perf_counter() - begin
    return out


def run(url: str, streams: Sequence[Sequence[bytes]], concurrency: int) -> Outcome:
    """:func:`drive` on uvloop when it is installed (cheaper per request), else asyncio."""
    return run_async(drive(url, streams, concurrency))
