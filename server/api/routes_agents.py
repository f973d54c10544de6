"""Routes hosts call: enroll, take a challenge, check in. (Evidence goes to routes_snapshots.)"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contract import HostInfo, format_timestamp
from contract.errors import KeyFormatError
from contract.keys import key_id, public_from_raw, verify_signature
from contract.reqsign import enroll_message
from server.api import auth
from server.api.deps import Services, SvcDep
from server.api.errors import APIError
from server.store import repo
from server.store.ingest import host_record
from server.store.models import Host

router = APIRouter(prefix="/v1", tags=["agents"])

MAX_SMALL_BODY = 64 * 1024


class ChainHeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, le=2**53 - 1)
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)
    public_key: str = Field(
        min_length=1,
        max_length=100,
        description="base64 raw 32-byte Ed25519 or 65-byte uncompressed P-256",
    )
    host: HostInfo = Field(default_factory=HostInfo)
    proof: str = Field(
        min_length=1, max_length=200, description="base64 signature over enroll_message by that key"
    )
    chain_head: ChainHeadIn | None = None


class EnrollResponse(BaseModel):
    host_id: str
    key_id: str
    site_id: str
    site_name: str
    verifier_key: str
    verifier_key_id: str
    status: str


class Challenge(BaseModel):
    nonce: str
    expires_at: str


class AdminChallengeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str | None = Field(default=None, max_length=200)
    host: str | None = Field(default=None, max_length=64)


class CheckinResponse(BaseModel):
    server_time: str
    pending_challenge: Challenge | None


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise APIError(400, "bad_base64", f"{what} is not valid standard base64") from None


@router.post("/enroll", response_model=EnrollResponse)
def enroll(svc: SvcDep, body: EnrollRequest) -> EnrollResponse:
    """Register a host key at the enrollment token's site (single-use token, proof of key)."""
    try:
        public = public_from_raw(_b64(body.public_key, "public_key"))
    except KeyFormatError as exc:
        raise APIError(400, "bad_public_key", exc.detail) from None
    kid = key_id(public)
    try:
        verify_signature(public, _b64(body.proof, "proof"), enroll_message(body.token, kid))
    except InvalidSignature:
        raise APIError(
            401, "bad_proof", "proof is not a signature of the enrollment message by this key"
        ) from None
    head = body.chain_head
    if head is not None and head.seq > 0 and head.digest is None:
        raise APIError(422, "invalid_request", "chain_head.digest is required when seq > 0")
    facts: dict[str, Any] = body.host.model_dump(mode="json")
    with svc.db.write() as session:
        done = repo.enroll(
            session,
            token=body.token,
            public_key_raw=_b64(body.public_key, "public_key"),
            key_id=kid,
            facts=facts,
            head_seq=head.seq if head else 0,
            head_digest=head.digest if head else None,
            now=svc.now(),
        )
        site_id, site_name, status = done.site.id, done.site.name, done.host.status
    return EnrollResponse(
        host_id=kid,
        key_id=kid,
        site_id=site_id,
        site_name=site_name,
        verifier_key=svc.key.public_pem(),
        verifier_key_id=svc.key.key_id,
        status=status,
    )


async def _small_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_SMALL_BODY:
            raise APIError(413, "too_large", f"request body over {MAX_SMALL_BODY} bytes")
    return bytes(body)


@router.post(
    "/challenges",
    responses={200: {"description": "A nonce for the signing host, or challenges per host"}},
)
async def challenges(svc: SvcDep, request: Request) -> dict[str, Any]:
    """A host (signed request) gets a nonce; an admin (API key) asks hosts for fresh evidence."""
    body = await _small_body(request)
    if auth.is_agent_request(request):
        host = await run_in_threadpool(auth.agent, svc, request, body)
        return await run_in_threadpool(_issue_for_agent, svc, host.key_id)
    actor = await run_in_threadpool(auth.admin, svc, request)
    try:
        parsed = AdminChallengeRequest.model_validate(json.loads(body or b"{}"))
    except (ValueError, TypeError) as exc:
        raise APIError(
            422, "invalid_request", f'body must be {{"site": id}} or {{"host": key_id}}: {exc}'
        ) from None
    if (parsed.site is None) == (parsed.host is None):
        raise APIError(422, "invalid_request", 'give exactly one of "site" or "host"')
    return await run_in_threadpool(issue_for_admin, svc, parsed, actor)


def _issue_for_agent(svc: Services, key_id: str) -> dict[str, Any]:
    now = svc.now()
    with svc.db.write() as session:
        row = repo.issue_nonce(session, key_id, "agent", now, svc.settings.challenge_ttl)
        return {"nonce": row.nonce, "expires_at": format_timestamp(row.expires_at)}


def issue_for_admin(svc: Services, req: AdminChallengeRequest, actor: auth.User) -> dict[str, Any]:
    from server.compliance.ledger import request_attestation

    with svc.db.write() as session:
        if req.host is not None and session.get(Host, req.host) is None:
            raise APIError(404, "unknown_host", "no host with that key id")
        out = request_attestation(
            session,
            site=req.site,
            host=req.host,
            actor=actor.actor,
            now=svc.now(),
            ttl=svc.settings.challenge_ttl,
        )
    return {"challenges": out}


@router.get("/checkin", response_model=CheckinResponse)
def checkin(svc: SvcDep, request: Request) -> CheckinResponse:
    """A host asks whether the verifier wants fresh evidence from it now."""
    host = auth.agent(svc, request, b"")
    now = svc.now()
    with svc.db.read() as session:
        pending = repo.pending_challenge(session, host.key_id, now)
        challenge = (
            Challenge(nonce=pending.nonce, expires_at=format_timestamp(pending.expires_at))
            if pending is not None
            else None
        )
    return CheckinResponse(server_time=format_timestamp(now), pending_challenge=challenge)


__all__ = ["host_record", "router"]
