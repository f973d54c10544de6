"""Dashboard sign-in: an API key in, a session cookie out; the key itself is never stored.

The cookie holds a random session secret; the verifier keeps only its SHA-256, with the API-key
row it belongs to and when it ends (``dashboard_sessions``), so every worker sharing the
database sees the same sessions. Each request re-reads the session and the API-key row: signing
out ends the session at once (a copied cookie stops working), and so does revoking the key.
The cookie is HttpOnly and SameSite=Strict; state-changing forms carry a CSRF token bound to the
session, and the sign-in form carries one bound to a pre-session cookie (against login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from fastapi import Request
from sqlalchemy import delete, select, update

from server.api.deps import Services
from server.store.models import ApiKey, DashboardSession

COOKIE = "veu_session"
#: The pre-session cookie the sign-in form's CSRF token is bound to.
LOGIN_COOKIE = "veu_login"
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


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


def issue(svc: Services, api_key_id: str, *, now: datetime | None = None) -> str:
    """A new session of that API key; answers the cookie value (shown to nobody else)."""
    moment = _now(now)
    token = secrets.token_urlsafe(32)
    with svc.db.write() as s:
        s.execute(
            delete(DashboardSession).where(
                DashboardSession.api_key_id == api_key_id, DashboardSession.expires_at < moment
            )
        )
        s.add(
            DashboardSession(
                token_hash=_hash(token),
                api_key_id=api_key_id,
                created_at=moment,
                expires_at=moment + timedelta(seconds=LIFETIME_S),
            )
        )
    return token


def current_user(svc: Services, request: Request) -> SessionUser | None:
    """The signed-in user: a live session of an unrevoked key; else None."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 100 or not token.isascii():
        return None
    with svc.db.read() as s:
        found = s.execute(
            select(ApiKey.id, ApiKey.role, ApiKey.name)
            .join(DashboardSession, DashboardSession.api_key_id == ApiKey.id)
            .where(
                DashboardSession.token_hash == _hash(token),
                DashboardSession.ended_at.is_(None),
                DashboardSession.expires_at > svc.now(),
                ApiKey.revoked_at.is_(None),
            )
        ).first()
    if found is None:
        return None
    return SessionUser(found.id, found.role, found.name, token)


def end(svc: Services, user: SessionUser) -> None:
    """Sign out: the session's cookie stops working everywhere at once."""
    with svc.db.write() as s:
        s.execute(
            update(DashboardSession)
            .where(DashboardSession.token_hash == _hash(user.token))
            .values(ended_at=svc.now())
        )


def csrf_token(svc: Services, user: SessionUser) -> str:
    return _mac(_secret(svc), f"csrf:{user.token}")


def csrf_ok(svc: Services, user: SessionUser, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented, csrf_token(svc, user))


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def login_csrf_token(svc: Services, nonce: str) -> str:
    return _mac(_secret(svc), f"login:{nonce}")


def login_csrf_ok(svc: Services, nonce: str | None, presented: str | None) -> bool:
    if not nonce or not presented or len(nonce) > 100 or not nonce.isascii():
        return False
    return hmac.compare_digest(presented, login_csrf_token(svc, nonce))
