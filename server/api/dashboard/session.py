"""Dashboard sign-in: an API key in, a signed session cookie out; the key itself is never stored.

The cookie holds ``<api key id>.<expiry>.<MAC>``: the id of the API-key row (not the key, not its
hash), when the session ends, and an HMAC-SHA256 over both under a secret derived from the
verifier's private key. Every worker sharing the data directory derives the same secret, so no
session table and no process memory is needed. Each request re-reads the API-key row, so revoking
a key ends its sessions at once. The cookie is HttpOnly and SameSite=Strict; state-changing forms
also carry a CSRF token bound to the session.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from fastapi import Request

from server.api.deps import Services
from server.store.models import ApiKey

COOKIE = "veu_session"
LIFETIME_S = 8 * 3600
_LABEL = b"veu-attest dashboard session v1"


@dataclass(frozen=True)
class SessionUser:
    key_id: str
    role: str
    name: str | None
    token: str  # the cookie value; the CSRF token is derived from it

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        return f"api_key:{self.key_id}"


def _secret(svc: Services) -> bytes:
    raw = svc.key.private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return hmac.new(raw, _LABEL, hashlib.sha256).digest()


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode("ascii"), hashlib.sha256).hexdigest()


def issue(svc: Services, api_key_id: str, *, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + LIFETIME_S)
    body = f"{api_key_id}.{expires}"
    return f"{body}.{_mac(_secret(svc), body)}"


def parse(svc: Services, token: str, *, now: float | None = None) -> str | None:
    """The API-key id a well-formed, unexpired, authentic token names; else None."""
    if len(token) > 200 or token.count(".") != 2:
        return None
    key_id, expires, mac = token.split(".")
    if not hmac.compare_digest(mac, _mac(_secret(svc), f"{key_id}.{expires}")):
        return None
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return None
    return key_id


def current_user(svc: Services, request: Request) -> SessionUser | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    key_id = parse(svc, token)
    if key_id is None:
        return None
    with svc.db.read() as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        return SessionUser(row.id, row.role, row.name, token)


def csrf_token(svc: Services, user: SessionUser) -> str:
    return _mac(_secret(svc), f"csrf:{user.token}")


def csrf_ok(svc: Services, user: SessionUser, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented, csrf_token(svc, user))
