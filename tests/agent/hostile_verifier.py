"""A malicious (or broken) verifier on loopback, for testing that the agent survives one.

:class:`HostileVerifier` is a real HTTP/1.1 server on ``127.0.0.1`` (raw sockets, one request per
connection) that speaks the verifier's API: check-ins, challenges, snapshot submissions signed
with its own result key (so it is a working verifier by default), and enrollment. Any route can
be told to misbehave instead, with a :class:`Reply` (any status, headers and body), a
:class:`Stream` (an endless body, counted), or a :class:`Trickle` (one byte every few seconds,
from the status line on, forever). It counts the bytes it got into each connection and every
request it saw, so a test can assert how much the agent read without looking at its memory.

:func:`enroll_agent` writes an agent state directory enrolled at it (key, enrollment record with
this verifier's result key), without the real enrollment call.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import keys
from agent.enrollment import Enrollment, save
from contract import envelope_digest, parse_envelope, parse_statement
from contract.keys import key_id
from server.results import VerifierKey, sign_result

MAX_HEAD = 64 * 1024
SITE_ID = "site-hostile"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """One whole answer."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any) -> Reply:
        return cls(status, json.dumps(value).encode())


@dataclass(frozen=True)
class Stream:
    """``prefix``, then ``fill`` repeated until ``total`` bytes or the agent hangs up."""

    prefix: bytes
    fill: bytes = b"a" * 65536
    total: int = 1 << 30
    status: int = 200
    declare_length: bool = False


@dataclass(frozen=True)
class Trickle:
    """A response head sent one byte every ``every_s`` seconds; it never ends."""

    every_s: float = 1.0


Behaviour = Callable[[Request], Reply | Stream | Trickle]


class HostileVerifier:
    """``http://127.0.0.1:<port>``; ``routes`` maps ``"METHOD /path"`` to a behaviour."""

    def __init__(self) -> None:
        private = Ed25519PrivateKey.generate()
        self.key = VerifierKey(private=private, key_id=key_id(private.public_key()))
        self.routes: dict[str, Behaviour] = {
            "GET /v1/checkin": lambda r: Reply.json(
                200, {"server_time": _now(), "pending_challenge": None}
            ),
            "POST /v1/challenges": lambda r: Reply.json(
                201, {"nonce": secrets.token_hex(32), "expires_at": _now()}
            ),
            "POST /v1/snapshots": self.honest_submit,
        }
        self.requests: list[Request] = []
        #: Bytes of answer that reached the kernel, per connection, in arrival order.
        self.sent: list[tuple[str, int]] = []
        self.trickling = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        verifier = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                verifier._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def public_pem(self) -> str:
        return self.key.public_pem()

    def __enter__(self) -> HostileVerifier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def seen(self, route: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if f"{r.method} {r.path}" == route]

    def bytes_sent(self, route: str) -> int:
        with self._lock:
            return sum(n for r, n in self.sent if r == route)

    # -- the honest part -------------------------------------------------------------------------

    def result_for(self, envelope: bytes, *, key: VerifierKey | None = None) -> str:
        """The EAR this verifier signs for ``envelope`` (with ``key`` instead, to forge one)."""
        parsed = parse_envelope(envelope)
        _, snapshot = parse_statement(parsed.payload_bytes())
        return sign_result(
            key or self.key,
            verifier_id="hostile-test",
            issued_at=datetime.now(UTC),
            findings=[],
            digest=envelope_digest(parsed),
            host_key_id=snapshot.agent.key_id,
            site_id=SITE_ID,
            seq=snapshot.seq,
            nonce=snapshot.nonce,
        )

    def honest_submit(self, request: Request) -> Reply:
        digest = envelope_digest(parse_envelope(request.body))
        return Reply.json(
            200,
            {
                "digest": digest,
                "status": "affirming",
                "duplicate": False,
                "result": self.result_for(request.body),
            },
        )

    # -- one connection --------------------------------------------------------------------------

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(30)
        try:
            request = _read_request(client)
        except (OSError, ValueError):
            return
        if request is None:
            return
        route = f"{request.method} {request.path.split('?')[0]}"
        with self._lock:
            self.requests.append(request)
        behaviour = self.routes.get(route)
        answer = (
            behaviour(request)
            if behaviour
            else Reply.json(404, {"code": "not_found", "detail": route})
        )
        sent = 0
        try:
            if isinstance(answer, Reply):
                head = _head(answer.status, len(answer.body), answer.headers)
                client.sendall(head + answer.body)
                sent = len(head) + len(answer.body)
            elif isinstance(answer, Stream):
                sent = self._stream(client, answer)
            else:
                sent = self._trickle(client, answer)
        except OSError:
            pass
        finally:
            with self._lock:
                self.sent.append((route, sent))
            with contextlib.suppress(OSError):
                client.close()

    def _stream(self, client: socket.socket, answer: Stream) -> int:
        head = _head(answer.status, answer.total if answer.declare_length else None, {})
        client.sendall(head + answer.prefix)
        sent = len(head) + len(answer.prefix)
        while sent < answer.total and not self._closing.is_set():
            try:
                sent += client.send(answer.fill)
            except OSError:
                break
        return sent

    def _trickle(self, client: socket.socket, answer: Trickle) -> int:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: "
        sent = 0
        self.trickling.set()
        while not self._closing.wait(answer.every_s):
            byte = head[sent : sent + 1] or b"a"
            client.sendall(byte)  # raises once the agent hung up
            sent += 1
        return sent


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _head(status: int, length: int | None, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_request(client: socket.socket) -> Request | None:
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
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = client.recv(min(65536, length - len(body)))
        if not chunk:
            raise ValueError("request body cut short")
        body += chunk
    return Request(method, path, headers, body[:length])


# --------------------------------------------------------------------------- an agent for it


def enroll_agent(state_dir: Path, verifier: HostileVerifier) -> str:
    """A host key in ``state_dir`` and an enrollment at ``verifier``; returns the key id."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = keys.create(state_dir)
    kid = key_id(key.public_key())
    save(
        state_dir,
        Enrollment(
            server_url=verifier.url,
            site_id=SITE_ID,
            host_id=kid,
            key_id=kid,
            verifier_key=verifier.public_pem(),
            verifier_key_id=verifier.key.key_id,
        ),
    )
    return kid


def state_bytes(state_dir: Path) -> int:
    """Every byte the agent keeps in ``state_dir``."""
    return sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file())


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status, or None when it still runs after ``timeout`` seconds (then killed)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
