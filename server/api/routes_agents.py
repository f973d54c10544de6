"""Routes hosts call: enroll, take a challenge, check in. (Evidence goes to routes_snapshots.)"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from contract import HostInfo, format_timestamp
from contract.errors import KeyFormatError
from contract.keys import key_id, public_from_raw, verify_signature
from contract.reqsign import enroll_message
from server.api import auth
from server.api.deps import Services, SvcDep
from server.api.errors import APIError
from server.appraise.tpm import (
    TpmFormatError,
    TpmIdentity,
    check_tpm_enrollment,
    load_vendor_cas,
    make_credential,
    parse_public,
)
from server.store import repo
from server.store.ingest import host_record
from server.store.models import Host

router = APIRouter(prefix="/v1", tags=["agents"])

MAX_SMALL_BODY = 64 * 1024
#: Longest host fact (hostname, machine id, OS, kernel, ...) an enrollment may record.
MAX_HOST_FACT = 512


class ChainHeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0, le=2**53 - 1)
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class TpmEnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ek_certificate: str = Field(min_length=1, max_length=24_000, description="DER, base64")
    ek_public: str = Field(min_length=1, max_length=6_000, description="TPM2B_PUBLIC")
    ak_public: str = Field(min_length=1, max_length=6_000, description="TPM2B_PUBLIC")
    key_public: str = Field(min_length=1, max_length=6_000, description="TPM2B_PUBLIC")
    certify_info: str = Field(min_length=1, max_length=6_000, description="TPM2B_ATTEST")
    certify_signature: str = Field(min_length=1, max_length=6_000, description="TPMT_SIGNATURE")


class ActivationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: str = Field(min_length=1, max_length=4_000)
    credential: str = Field(min_length=1, max_length=200, description="base64")


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
    #: A host whose key is in its TPM: what proves it (agent.tpm.keys), base64 each.
    tpm: TpmEnrollIn | None = None
    #: The second request of a TPM enrollment: the credential the TPM activated.
    activation: ActivationIn | None = None

    @field_validator("host")
    @classmethod
    def _bounded_facts(cls, host: HostInfo) -> HostInfo:
        for name, value in host.model_dump().items():
            if isinstance(value, str) and len(value) > MAX_HOST_FACT:
                raise ValueError(f"host.{name} is over {MAX_HOST_FACT} characters")
        return host


class EnrollResponse(BaseModel):
    host_id: str
    key_id: str
    site_id: str
    site_name: str
    verifier_key: str
    verifier_key_id: str
    status: str
    #: The level the host key lets its claims reach (contract.assurance).
    assurance: str = "self-reported"


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


_TICKET_CONTEXT = b"veu-attest-activation-v1\0"
#: How long the TPM has to answer a credential (the agent answers at once).
_TICKET_TTL_S = 300


def _tpm_identity(svc: Services, body: EnrollRequest, public_raw: bytes) -> TpmIdentity:
    assert body.tpm is not None and svc.settings.tpm_vendor_ca_dir is not None
    t = body.tpm
    try:
        return check_tpm_enrollment(
            host_public_raw=public_raw,
            ek_certificate=_b64(t.ek_certificate, "tpm.ek_certificate"),
            ek_public=_b64(t.ek_public, "tpm.ek_public"),
            ak_public=_b64(t.ak_public, "tpm.ak_public"),
            key_public=_b64(t.key_public, "tpm.key_public"),
            certify_info=_b64(t.certify_info, "tpm.certify_info"),
            certify_signature=_b64(t.certify_signature, "tpm.certify_signature"),
            cas=load_vendor_cas(svc.settings.tpm_vendor_ca_dir),
        )
    except TpmFormatError as exc:
        status = {"ek_certificate_untrusted": 401, "bad_vendor_ca": 503}.get(exc.code, 422)
        raise APIError(status, exc.code, exc.detail) from None


def _activation_challenge(svc: Services, kid: str, identity: TpmIdentity) -> JSONResponse:
    """MakeCredential for this EK and AK, and a ticket (signed by the verifier key) that lets
    the second request prove the TPM recovered it, without a pending row."""
    credential = os.urandom(32)
    made = make_credential(parse_public(identity.ek_public, "EK"), identity.ak_name, credential)
    claims = {
        "v": 1,
        "kid": kid,
        "tpm": identity.digest_of(),
        "cred": hashlib.sha256(credential).hexdigest(),
        "exp": int(svc.now().timestamp()) + _TICKET_TTL_S,
    }
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    signature = svc.key.private.sign(_TICKET_CONTEXT + payload)
    ticket = (
        base64.urlsafe_b64encode(payload).decode()
        + "."
        + base64.urlsafe_b64encode(signature).decode()
    )
    return JSONResponse(
        status_code=202,
        content={
            "code": "activation_required",
            "detail": "activate this credential with the TPM and send the enrollment again",
            "credential_blob": base64.b64encode(made.blob).decode(),
            "secret": base64.b64encode(made.secret).decode(),
            "ticket": ticket,
        },
    )


def _check_activation(
    svc: Services, kid: str, identity: TpmIdentity, activation: ActivationIn
) -> None:
    refused = APIError(401, "activation_failed", "the credential does not match this enrollment")
    try:
        payload_b64, signature_b64 = activation.ticket.split(".")
        payload = base64.urlsafe_b64decode(payload_b64.encode())
        svc.key.public.verify(
            base64.urlsafe_b64decode(signature_b64.encode()), _TICKET_CONTEXT + payload
        )
        claims = json.loads(payload)
    except (ValueError, InvalidSignature, binascii.Error):
        raise refused from None
    if not isinstance(claims, dict) or claims.get("kid") != kid:
        raise refused
    if claims.get("tpm") != identity.digest_of():
        raise refused
    if not isinstance(claims.get("exp"), int) or claims["exp"] < svc.now().timestamp():
        raise APIError(401, "activation_expired", "the credential expired; enroll again")
    credential = _b64(activation.credential, "activation.credential")
    if not hmac.compare_digest(hashlib.sha256(credential).hexdigest(), str(claims.get("cred", ""))):
        raise refused


@router.post(
    "/enroll", response_model=EnrollResponse, responses={202: {"description": "activate first"}}
)
def enroll(svc: SvcDep, body: EnrollRequest) -> EnrollResponse | JSONResponse:
    """Register a host key at the enrollment token's site (single-use token, proof of key).

    A host whose key is in its TPM sends ``tpm``; where TPM vendor CAs are configured the
    verifier checks the EK certificate and the certification and answers 202 with a credential
    for the TPM (MakeCredential); the host sends the enrollment again with ``activation``, and
    its key enrolls as ``tpm-bound-key``. Without configured CAs it enrolls as self-reported."""
    raw = _b64(body.public_key, "public_key")
    try:
        public = public_from_raw(raw)
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
    key_level, tpm_record = "self-reported", None
    if body.tpm is not None and svc.settings.tpm_vendor_ca_dir is not None:
        identity = _tpm_identity(svc, body, raw)
        if body.activation is None:
            return _activation_challenge(svc, kid, identity)
        _check_activation(svc, kid, identity, body.activation)
        key_level = "tpm-bound-key"
        tpm_record = json.dumps(
            {
                "ek_public": base64.b64encode(identity.ek_public).decode(),
                "ak_public": base64.b64encode(identity.ak_public).decode(),
                "ak_name": identity.ak_name.hex(),
                "ek_certificate_sha256": identity.ek_certificate_sha256,
            },
            sort_keys=True,
        )
    elif body.activation is not None:
        raise APIError(422, "activation_unexpected", "no credential was issued to this request")
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
            key_level=key_level,
            tpm=tpm_record,
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
        assurance=key_level,
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
