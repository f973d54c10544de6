"""Who is calling: compliance users by API key, hosts by signed request.

- Compliance users send ``Authorization: Bearer <key>``. Keys are stored as SHA-256; the lookup is
  by hash and the final comparison constant-time. Roles: ``admin`` (manage) and ``auditor`` (read);
  an admin may do everything an auditor may.
- Hosts sign the request line (:mod:`contract.reqsign`) with their enrolled key. The key must be
  active and the timestamp within the verifier's skew. Agents may only enroll, take challenges,
  check in and submit evidence; they hold no API key, so every read is closed to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from contract import parse_timestamp
from contract.reqsign import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, verify_request
from server.api.deps import Services
from server.api.errors import APIError
from server.appraise import HostRecord
from server.store import repo
from server.store.ingest import host_record

_BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class User:
    key_id: str
    role: str

    @property
    def actor(self) -> str:
        return f"api_key:{self.key_id}"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "unauthenticated", "use Authorization: Bearer <api key>", _BEARER)
    return token.strip()


def user(svc: Services, request: Request, *roles: str) -> User:
    """The API-key user, who must hold one of ``roles``."""
    token = bearer_token(request)
    if token is None:
        raise APIError(401, "unauthenticated", "an API key is required", _BEARER)
    if len(token) > 200:
        raise APIError(401, "invalid_api_key", "the API key is not valid", _BEARER)
    with svc.db.read() as session:
        row = repo.lookup_api_key(session, token)
        found = User(row.id, row.role) if row is not None else None
    if found is None:
        raise APIError(401, "invalid_api_key", "the API key is not valid", _BEARER)
    if found.role == "admin" or found.role in roles:
        return found
    raise APIError(403, "forbidden", f"this needs the role {' or '.join(roles)}")


def reader(svc: Services, request: Request) -> User:
    return user(svc, request, "auditor", "admin")


def admin(svc: Services, request: Request) -> User:
    found = user(svc, request, "admin")
    if found.role != "admin":  # pragma: no cover - user() already refused
        raise APIError(403, "forbidden", "this needs the role admin")
    return found


def is_agent_request(request: Request) -> bool:
    return HEADER_SIGNATURE in request.headers or HEADER_KEY_ID in request.headers


def agent(svc: Services, request: Request, body: bytes) -> HostRecord:
    """The active host whose key signed this request."""
    key_id = request.headers.get(HEADER_KEY_ID)
    stamp = request.headers.get(HEADER_TIMESTAMP)
    signature = request.headers.get(HEADER_SIGNATURE)
    if not key_id or not stamp or not signature:
        raise APIError(
            401,
            "unauthenticated",
            f"sign the request: {HEADER_KEY_ID}, {HEADER_TIMESTAMP} and {HEADER_SIGNATURE}",
        )
    if len(key_id) != 64 or len(signature) > 200 or len(stamp) > 40:
        raise APIError(401, "bad_request_signature", "malformed request signature headers")
    with svc.db.read() as session:
        host = host_record(session, key_id)
    if host is None:
        raise APIError(401, "unknown_key", "this host key is not enrolled here; enroll first")
    try:
        moment = parse_timestamp(stamp)
    except ValueError:
        raise APIError(401, "bad_request_signature", "X-VEU-Timestamp is not RFC 3339") from None
    now = svc.now()
    if abs(now - moment) > svc.settings.request_skew:
        raise APIError(
            401,
            "stale_request",
            f"request timestamp {stamp[:40]} is too far from the verifier's clock "
            f"({now.isoformat()}); check the host's time",
        )
    ok = verify_request(
        host.public_key, key_id, request.method, request.url.path, stamp, body, signature
    )
    if not ok:
        raise APIError(401, "bad_request_signature", "the request signature does not verify")
    if host.status == "revoked":
        raise APIError(403, "revoked_key", "this host key was revoked")
    if host.status != "active":
        raise APIError(403, "key_not_active", "this host key is not active")
    return host
