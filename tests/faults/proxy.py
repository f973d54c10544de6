"""A fault-injecting HTTP/1.1 proxy for loopback tests: 5xx, timeouts, resets, slow answers.

One request per client connection (the proxy forces ``Connection: close`` both ways), so every
request gets its own decision. :class:`Fault` says what happens to one request:

- ``PASS``: forwarded, the answer relayed.
- ``ERROR_503``: answered 503 by the proxy (optionally with ``Retry-After``); never forwarded.
- ``ERROR_AFTER``: forwarded (the verifier may commit!), then answered 502: the acknowledgement is
  lost, so the agent must resend and the verifier must treat the resend as a duplicate.
- ``RESET``: the connection is reset without an answer, before forwarding.
- ``RESET_AFTER``: forwarded, then reset instead of relaying the answer.
- ``HANG``: held without an answer for ``hang_s`` (longer than the client's timeout), then closed.
- ``SLOW``: forwarded, the answer relayed after ``slow_s`` (shorter than the client's timeout).
- ``NO_RESULT_AFTER``: forwarded (the verifier commits), then answered 200 without the signed
  result: the agent must keep the envelope and resend it until it gets one (the duplicate's).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

MAX_HEAD = 64 * 1024


class Fault(enum.Enum):
    PASS = "pass"
    ERROR_503 = "503"
    ERROR_AFTER = "502-after-forward"
    RESET = "reset"
    RESET_AFTER = "reset-after-forward"
    HANG = "hang"
    SLOW = "slow"
    NO_RESULT_AFTER = "200-without-result-after-forward"


Chooser = Callable[[str, str], Fault]


def random_faults(
    seed: int, weights: dict[Fault, float], *, paths: tuple[str, ...] = ()
) -> Chooser:
    """Pick a fault at random per request (only for ``paths`` prefixes if given; others pass)."""
    rng = random.Random(seed)
    faults = list(weights)
    odds = [weights[f] for f in faults]
    lock = threading.Lock()

    def choose(method: str, path: str) -> Fault:
        if paths and not path.startswith(paths):
            return Fault.PASS
        with lock:
            return rng.choices(faults, odds)[0]

    return choose


class FaultProxy:
    """``127.0.0.1:<port>`` in front of ``127.0.0.1:<upstream_port>``."""

    def __init__(
        self,
        upstream_port: int,
        *,
        choose: Chooser | None = None,
        retry_after: float | None = None,
        hang_s: float = 3.0,
        slow_s: float = 0.3,
    ) -> None:
        self.upstream_port = upstream_port
        self.choose: Chooser = choose or (lambda method, path: Fault.PASS)
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.slow_s = slow_s
        self.counts: Counter[Fault] = Counter()
        #: (method, path, sha256 of the body, fault) of every request, in arrival order.
        self.requests: list[tuple[str, str, str, Fault]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one request ---------------------------------------------------------------------------

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            request = _read_request(client)
        except (OSError, ValueError):
            return
        if request is None:
            return
        method, path, raw, body_digest = request
        fault = self.choose(method, path)
        with self._lock:
            self.counts[fault] += 1
            self.requests.append((method, path, body_digest, fault))
        if fault is Fault.ERROR_503:
            body = b'{"code":"unavailable","detail":"fault proxy: injected 503"}'
            extra = f"Retry-After: {self.retry_after:g}\r\n" if self.retry_after else ""
            _send(client, _response(503, "Service Unavailable", body, extra))
            return
        if fault is Fault.RESET:
            _reset(client)
            return
        if fault is Fault.HANG:
            time.sleep(self.hang_s)
            return
        try:
            answer = self._forward(raw)
        except OSError:
            _send(client, _response(502, "Bad Gateway", b'{"code":"bad_gateway","detail":"x"}'))
            return
        if fault is Fault.ERROR_AFTER:
            body = b'{"code":"bad_gateway","detail":"fault proxy: answer dropped"}'
            _send(client, _response(502, "Bad Gateway", body))
            return
        if fault is Fault.RESET_AFTER:
            _reset(client)
            return
        if fault is Fault.NO_RESULT_AFTER:
            _send(client, _response(200, "OK", b'{"status":"affirming","duplicate":false}'))
            return
        if fault is Fault.SLOW:
            time.sleep(self.slow_s)
        _send(client, answer)

    def _forward(self, raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as upstream:
            upstream.sendall(raw)
            chunks: list[bytes] = []
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


def _read_request(client: socket.socket) -> tuple[str, str, bytes, str] | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = client.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > MAX_HEAD:
            raise ValueError("request head too large")
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: list[str] = []
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lowered = name.strip().lower()
        if lowered in {"connection", "keep-alive", "proxy-connection"}:
            continue
        if lowered == "content-length":
            length = int(value.strip())
        headers.append(line)
    while len(body) < length:
        chunk = client.recv(min(65536, length - len(body)))
        if not chunk:
            raise ValueError("request body cut short")
        body += chunk
    rebuilt = "\r\n".join([lines[0], *headers, "Connection: close"]).encode("latin-1")
    body = body[:length]
    return method, path, rebuilt + b"\r\n\r\n" + body, hashlib.sha256(body).hexdigest()


def _response(status: int, reason: str, body: bytes, extra_headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}Connection: close\r\n\r\n"
    ).encode("latin-1") + body


def _send(client: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        client.sendall(data)


def _reset(client: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) so the client sees ECONNRESET, not a clean EOF."""
    with contextlib.suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        client.close()
