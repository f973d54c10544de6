"""HTTP client for the verifier: enroll, challenge, check in, submit evidence, fetch its key.

Errors come back as one type, :class:`ClientError`, that says whether trying again can help:
network errors, timeouts, 5xx and 429 are ``transient`` (``retry_after`` holds the verifier's
Retry-After in seconds when it sent one); the verifier's 4xx answers, with their stable ``code``,
are permanent. Plain ``http://`` is refused except to a loopback address, unless
``allow_insecure_http`` says otherwise: evidence and enrollment tokens must not cross a network
in the clear.

A verifier is not trusted to behave, so every call is bounded:

1. Every answer's body is capped (:data:`RESPONSE_CAPS`, per call); a longer one is refused
   (``response_too_large``) after reading at most the cap, never buffered whole.
2. Every call has a total deadline (the client's ``timeout``, plus time to upload a large body at
   :data:`MIN_UPLOAD_RATE`, and never past the client's ``deadline``), however slowly the bytes
   come; and it ends within about :data:`POLL_S` when the ``cancel`` event is set (the daemon's
   SIGTERM). The exchange runs in a worker thread; on a deadline or a cancel its sockets are shut
   down, which ends any read or write it is blocked in.
3. A nonce is used only in the form the verifier issues it (:data:`NONCE_PATTERN`); the verifier's
   error ``code`` and ``detail`` are truncated (:data:`MAX_CODE_CHARS`, :data:`MAX_DETAIL_CHARS`).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from contract import format_timestamp
from contract.errors import ResultError
from contract.keys import Signer, raw_public
from contract.keys import key_id as compute_key_id
from contract.reqsign import enroll_message, sign_request
from contract.results import SUBMOD, verify_result

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

#: The largest answer read per call, in bytes. A signed result is condensed by the verifier (25
#: findings per condition), so a few hundred KiB at most; the others are a few hundred bytes.
RESPONSE_CAPS: dict[str, int] = {
    "enroll": 64 * 1024,
    "challenge": 16 * 1024,
    "checkin": 16 * 1024,
    "submit": 4 * 1024 * 1024,
    "verifier_key": 16 * 1024,
}
#: A body sent is given this many bytes per second on top of the call's timeout.
MIN_UPLOAD_RATE = 128 * 1024
#: How often a waiting call looks at its deadline and its cancel event, in seconds.
POLL_S = 0.2
#: The nonces the verifier issues: 32 random bytes in lowercase hex (server.store.repo).
NONCE_PATTERN = re.compile(r"[0-9a-f]{64}")
MAX_DETAIL_CHARS = 1000
MAX_CODE_CHARS = 64
_CODE = re.compile(r"[a-z0-9_]{1,64}")


class ClientError(Exception):
    """A call that failed. ``transient``: retrying later may succeed; otherwise do not resend."""

    def __init__(
        self,
        code: str,
        detail: str,
        status: int | None = None,
        *,
        transient: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


@dataclass(frozen=True)
class SubmitResult:
    status_code: int
    body: dict[str, Any]

    @property
    def result(self) -> str | None:
        value = self.body.get("result")
        return value if isinstance(value, str) else None

    @property
    def duplicate(self) -> bool:
        return bool(self.body.get("duplicate"))


def truncate(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters not kept]"


def check_nonce(value: Any) -> str:
    """``value`` if it is a nonce as the verifier issues them; :class:`ClientError` otherwise."""
    if isinstance(value, str) and NONCE_PATTERN.fullmatch(value):
        return value
    # Not even a prefix of it is kept: it goes no further than this message.
    seen = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    raise ClientError(
        "bad_nonce",
        f"the verifier sent a nonce that is not 64 lowercase hex characters ({seen}); "
        "it was not used",
        transient=True,
    )


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        moment = parsedate_to_datetime(value)
        return max(0.0, (moment - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- sockets we can end


class _Stream(httpcore.NetworkStream):
    """A connection the client can shut down from another thread (see :class:`_Sockets`)."""

    def __init__(self, inner: httpcore.NetworkStream, owner: _Sockets) -> None:
        self._inner = inner
        self._owner = owner
        owner.add(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._owner.discard(self)
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        self._owner.discard(self)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._owner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shutdown(self) -> None:
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Sockets(httpcore.NetworkBackend):
    """httpcore's blocking backend, keeping the connections it opened so they can be ended."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._open: set[_Stream] = set()
        self._lock = threading.Lock()

    def add(self, stream: _Stream) -> None:
        with self._lock:
            self._open.add(stream)

    def discard(self, stream: _Stream) -> None:
        with self._lock:
            self._open.discard(stream)

    def shutdown_all(self) -> None:
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            stream.shutdown()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _transport(
    verify: bool | str, cert: str | tuple[str, str] | None, sockets: _Sockets
) -> httpx.HTTPTransport:
    context = httpx.create_ssl_context(verify=verify, cert=cert)
    transport = httpx.HTTPTransport(verify=context)
    # httpx takes no network backend; its pool is rebuilt with one (same defaults otherwise).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=context,
        max_connections=httpx.Limits().max_connections,
        max_keepalive_connections=httpx.Limits().max_keepalive_connections,
        keepalive_expiry=httpx.Limits().keepalive_expiry,
        network_backend=sockets,
    )
    return transport


def _proxied(url: str) -> bool:
    proxies = urllib.request.getproxies()
    host = urlsplit(url).hostname or ""
    return bool(proxies.get(urlsplit(url).scheme) or proxies.get("all")) and not (
        urllib.request.proxy_bypass(host)
    )


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes


class VerifierClient:
    """One verifier, one connection pool; one call at a time per thread.

    ``timeout`` bounds each call in total; ``deadline`` (a :func:`time.monotonic` instant) bounds
    them all; ``cancel`` ends a call in progress (``ClientError("cancelled")``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        cert: str | tuple[str, str] | None = None,
        allow_insecure_http: bool = False,
        transport: httpx.BaseTransport | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ClientError(
                "bad_url", f"verifier URL must be https:// (got {base_url!r})", transient=False
            )
        if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
            raise ClientError(
                "insecure_url",
                f"refusing plain http:// to {parts.hostname}: use https://, or allow insecure "
                "HTTP explicitly (only on a trusted network)",
                transient=False,
            )
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self.cancel = cancel or threading.Event()
        self._sockets: _Sockets | None = None
        if transport is None and not _proxied(self.base_url):
            # Through a proxy from the environment, httpx's own transport is kept: a call still
            # ends at its deadline, but its worker finishes on its own.
            self._sockets = _Sockets()
            transport = _transport(verify, cert, self._sockets)
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=verify,
            cert=cert,
            timeout=timeout,
            transport=transport,
            # Compressed answers could expand far past the cap from a few bytes read.
            headers={"User-Agent": "veu-agent", "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VerifierClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _send(
        self,
        call: str,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> _Answer:
        cap = RESPONSE_CAPS[call]
        allowed = self.timeout + len(body) / MIN_UPLOAD_RATE
        deadline = time.monotonic() + allowed
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        outcome: list[_Answer | BaseException] = []
        done = threading.Event()
        abandoned = threading.Event()

        def work() -> None:
            try:
                outcome.append(self._exchange(method, path, body, headers, cap, abandoned))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"veu-agent {call}", daemon=True)
        worker.start()
        while not done.wait(max(0.0, min(POLL_S, deadline - time.monotonic()))):
            if self.cancel.is_set():
                self._abandon(abandoned)
                raise ClientError(
                    "cancelled", f"{method} {path} was cancelled (stopping)", transient=True
                )
            if time.monotonic() >= deadline:
                self._abandon(abandoned)
                raise ClientError(
                    "timeout",
                    f"{method} {path} got no complete answer within {allowed:.3g}s",
                    transient=True,
                )
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        if result.status >= 400:
            raise self._error(result)
        return result

    def _abandon(self, abandoned: threading.Event) -> None:
        """End the worker's exchange: shut its sockets (it then fails at once) and let it go."""
        abandoned.set()
        if self._sockets is not None:
            self._sockets.shutdown_all()

    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str] | None,
        cap: int,
        abandoned: threading.Event,
    ) -> _Answer:
        try:
            with self._http.stream(method, path, content=body or None, headers=headers) as r:
                declared = r.headers.get("content-length")
                if declared is not None and declared.strip().isdigit() and int(declared) > cap:
                    raise self._too_large(method, path, cap, f"declared {declared.strip()} bytes")
                encoding = r.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise ClientError(
                        "bad_response",
                        f"{method} {path}: the verifier answered with Content-Encoding "
                        f"{truncate(encoding, 40)!r} though none was accepted",
                        r.status_code,
                        transient=True,
                    )
                data = bytearray()
                for chunk in r.iter_bytes():  # identity only: the raw bytes, counted
                    if abandoned.is_set():
                        break
                    data += chunk
                    if len(data) > cap:
                        raise self._too_large(method, path, cap, "sent more")
                return _Answer(r.status_code, r.headers, bytes(data))
        except httpx.TimeoutException as exc:
            raise ClientError(
                "timeout", f"{method} {path} timed out: {exc}", transient=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ClientError(
                "network_error", f"{method} {path} failed: {truncate(str(exc))}", transient=True
            ) from exc

    @staticmethod
    def _too_large(method: str, path: str, cap: int, seen: str) -> ClientError:
        return ClientError(
            "response_too_large",
            f"{method} {path}: the verifier's answer is over the limit of {cap} bytes ({seen}); "
            "it was not read further",
            transient=True,
        )

    @staticmethod
    def _error(answer: _Answer) -> ClientError:
        code = f"http_{answer.status}"
        detail = answer.body.decode("utf-8", "replace")
        try:
            data = json.loads(answer.body)
            if isinstance(data, dict):
                given = data.get("code")
                if isinstance(given, str) and _CODE.fullmatch(given):
                    code = given
                detail = str(data.get("detail") or detail)
        except ValueError:
            pass
        transient = answer.status in TRANSIENT_STATUS or answer.status >= 500
        return ClientError(
            code,
            truncate(detail),
            answer.status,
            transient=transient,
            retry_after=_retry_after(answer.headers),
        )

    @staticmethod
    def _json(answer: _Answer) -> dict[str, Any]:
        try:
            data = json.loads(answer.body)
        except ValueError as exc:
            raise ClientError(
                "bad_response", "verifier answered something that is not JSON", transient=True
            ) from exc
        if not isinstance(data, dict):
            raise ClientError("bad_response", "verifier answered a non-object", transient=True)
        return data

    def _signed(
        self, call: str, key: Signer, key_id: str, method: str, path: str, body: bytes
    ) -> _Answer:
        stamp = format_timestamp(datetime.now(UTC))
        headers = sign_request(key, key_id, method, path, stamp, body)
        if body:
            headers["Content-Type"] = "application/json"
        return self._send(call, method, path, body=body, headers=headers)

    # ------------------------------------------------------------------ calls

    def enroll(
        self,
        token: str,
        key: Signer,
        host: dict[str, Any] | None = None,
        chain_head: dict[str, Any] | None = None,
        tpm: dict[str, str] | None = None,
        activation: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register this host's key with a one-time token; returns site and verifier key. A TPM
        host sends ``tpm`` (its EK certificate, EK and AK public areas, the certification);
        a verifier that checks TPMs answers ``{"code": "activation_required", ...}`` first,
        and the host sends the enrollment again with ``activation``."""
        kid = compute_key_id(key.public_key())
        proof = key.sign(enroll_message(token, kid))
        body: dict[str, Any] = {
            "token": token,
            "public_key": base64.b64encode(raw_public(key.public_key())).decode("ascii"),
            "host": host or {},
            "proof": base64.b64encode(proof).decode("ascii"),
            "chain_head": chain_head,
        }
        if tpm is not None:
            body["tpm"] = tpm
        if activation is not None:
            body["activation"] = activation
        answer = self._send(
            "enroll",
            "POST",
            "/v1/enroll",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        return self._json(answer)

    def challenge(self, key: Signer, key_id: str) -> dict[str, Any]:
        """A fresh nonce for this host: ``{"nonce", "expires_at"}``; the nonce's form checked."""
        answer = self._json(self._signed("challenge", key, key_id, "POST", "/v1/challenges", b""))
        answer["nonce"] = check_nonce(answer.get("nonce"))
        return answer

    def checkin(self, key: Signer, key_id: str) -> dict[str, Any]:
        """``{"server_time", "pending_challenge": {"nonce", "expires_at"} | None}``; a pending
        challenge's nonce is checked (:class:`ClientError` ``bad_nonce``)."""
        answer = self._json(self._signed("checkin", key, key_id, "GET", "/v1/checkin", b""))
        pending = answer.get("pending_challenge")
        if isinstance(pending, dict) and "nonce" in pending:
            pending["nonce"] = check_nonce(pending["nonce"])
        return answer

    def submit(self, envelope: bytes) -> SubmitResult:
        """Send one envelope; 200 answers carry the signed result (also for a duplicate)."""
        answer = self._send(
            "submit",
            "POST",
            "/v1/snapshots",
            body=envelope,
            headers={"Content-Type": "application/vnd.dsse.envelope.v1+json"},
        )
        return SubmitResult(answer.status, self._json(answer))

    def verifier_key(self) -> dict[str, Any]:
        """``{"key_id", "alg", "public_key"}`` (PEM)."""
        return self._json(self._send("verifier_key", "GET", "/v1/verifier-key"))


def verified_result(answer: SubmitResult, digest: str, verifier_key: str) -> dict[str, Any]:
    """The claims of ``answer``'s signed result, checked: it verifies with ``verifier_key`` (the
    one stored at enrollment) and is about the envelope with ``digest``. A verifier's answer to a
    resent envelope (``duplicate``) carries the stored result of that envelope and passes too.

    Anything else is a transient :class:`ClientError` (``no_result``, ``result_invalid``,
    ``result_mismatch``): the envelope was not acknowledged, so it stays in the spool.
    """
    token = answer.result
    if token is None:
        raise ClientError(
            "no_result",
            f"the verifier answered {answer.status_code} without a signed result",
            answer.status_code,
            transient=True,
        )
    try:
        claims = verify_result(token, verifier_key)
    except ResultError as exc:
        raise ClientError(
            "result_invalid",
            "the verifier's result does not verify with the verifier key stored at enrollment "
            f"({truncate(str(exc), 200)})",
            answer.status_code,
            transient=True,
        ) from exc
    sub = claims["submods"][SUBMOD]
    if sub.get("digest") != digest:
        raise ClientError(
            "result_mismatch",
            f"the verifier's signed result is about digest {truncate(str(sub.get('digest')), 80)}"
            f", not this envelope's {digest}",
            answer.status_code,
            transient=True,
        )
    return claims
