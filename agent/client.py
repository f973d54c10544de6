"""HTTP client for the verifier: enroll, challenge, check in, submit evidence, fetch its key.

Errors come back as one type, :class:`ClientError`, that says whether trying again can help:
network errors, timeouts, 5xx and 429 are ``transient`` (``retry_after`` holds the verifier's
Retry-After in seconds when it sent one); the verifier's 4xx answers, with their stable ``code``,
are permanent. Plain ``http://`` is refused except to a loopback address, unless
``allow_insecure_http`` says otherwise: evidence and enrollment tokens must not cross a network
in the clear.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import format_timestamp
from contract.keys import key_id as compute_key_id
from contract.keys import raw_public
from contract.reqsign import enroll_message, sign_request

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
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


class VerifierClient:
    """One verifier, one connection pool. Thread-safe as httpx.Client is."""

    def __init__(
        self,
        base_url: str,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        cert: str | tuple[str, str] | None = None,
        allow_insecure_http: bool = False,
        transport: httpx.BaseTransport | None = None,
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
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=verify,
            cert=cert,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "veu-agent"},
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
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, content=body or None, headers=headers)
        except httpx.TimeoutException as exc:
            raise ClientError(
                "timeout", f"{method} {path} timed out: {exc}", transient=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ClientError(
                "network_error", f"{method} {path} failed: {exc}", transient=True
            ) from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> ClientError:
        code = f"http_{response.status_code}"
        detail = response.text[:500]
        try:
            data = response.json()
            if isinstance(data, dict):
                code = str(data.get("code") or code)
                detail = str(data.get("detail") or detail)
        except ValueError:
            pass
        transient = response.status_code in TRANSIENT_STATUS or response.status_code >= 500
        return ClientError(
            code,
            detail,
            response.status_code,
            transient=transient,
            retry_after=_retry_after(response),
        )

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise ClientError(
                "bad_response", "verifier answered something that is not JSON", transient=True
            ) from exc
        if not isinstance(data, dict):
            raise ClientError("bad_response", "verifier answered a non-object", transient=True)
        return data

    def _signed(
        self, key: Ed25519PrivateKey, key_id: str, method: str, path: str, body: bytes
    ) -> httpx.Response:
        stamp = format_timestamp(datetime.now(UTC))
        headers = sign_request(key, key_id, method, path, stamp, body)
        if body:
            headers["Content-Type"] = "application/json"
        return self._send(method, path, body=body, headers=headers)

    # ------------------------------------------------------------------ calls

    def enroll(
        self,
        token: str,
        key: Ed25519PrivateKey,
        host: dict[str, Any] | None = None,
        chain_head: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register this host's key with a one-time token; returns site and verifier key."""
        kid = compute_key_id(key.public_key())
        proof = key.sign(enroll_message(token, kid))
        body = {
            "token": token,
            "public_key": base64.b64encode(raw_public(key.public_key())).decode("ascii"),
            "host": host or {},
            "proof": base64.b64encode(proof).decode("ascii"),
            "chain_head": chain_head,
        }
        response = self._send(
            "POST",
            "/v1/enroll",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        return self._json(response)

    def challenge(self, key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
        """A fresh nonce for this host: ``{"nonce", "expires_at"}``."""
        return self._json(self._signed(key, key_id, "POST", "/v1/challenges", b""))

    def checkin(self, key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
        """``{"server_time", "pending_challenge": {"nonce", "expires_at"} | None}``."""
        return self._json(self._signed(key, key_id, "GET", "/v1/checkin", b""))

    def submit(self, envelope: bytes) -> SubmitResult:
        """Send one envelope; 200 answers carry the signed result (also for a duplicate)."""
        response = self._send(
            "POST",
            "/v1/snapshots",
            body=envelope,
            headers={"Content-Type": "application/vnd.dsse.envelope.v1+json"},
        )
        return SubmitResult(response.status_code, self._json(response))

    def verifier_key(self) -> dict[str, Any]:
        """``{"key_id", "alg", "public_key"}`` (PEM)."""
        return self._json(self._send("GET", "/v1/verifier-key"))
