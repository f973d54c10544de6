"""Compliance reads and the compliance team's records: site and organization status, findings,
the shipment ledger, the model registry, site authorization terms, and policy reload.

Reads need an auditor or admin key; writes need an admin key. Every write is audited.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.assurance import Level
from server.api import auth
from server.api.deps import Services, SvcDep
from server.api.errors import APIError
from server.compliance import ledger, settle
from server.compliance.policy_sync import reload_policy
from server.policy import PackError, PolicySet

router = APIRouter(prefix="/v1", tags=["compliance"])

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


def _finding_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "scope": row.scope,
        "scope_id": row.scope_id,
        "site_id": row.site_id,
        "org_id": row.org_id,
        "condition_id": row.condition_id,
        "severity": row.severity,
        "subject": row.subject,
        "message": row.message,
        "expected": row.expected,
        "seen": row.seen,
        "citation": row.citation,
        "confidence": [c for c in row.confidence.split(",") if c],
        "pack": (
            {
                "id": row.condition_id.split("/", 1)[0],
                "version": row.pack_version,
                "status": row.pack_status,
            }
            if row.pack_status
            else None
        ),
        "opened_at": row.opened_at.isoformat(),
        "last_seen_at": row.last_seen_at.isoformat(),
        "closed_at": row.closed_at.isoformat() if row.closed_at else None,
        "open": row.is_open,
        "assurance": row.assurance,
    }


@router.get("/sites/{site_id}/status")
def site_status(
    svc: SvcDep,
    request: Request,
    site_id: str,
    include_proposed: bool = Query(
        False, description="count findings of proposed packs in the headline status too"
    ),
) -> dict[str, Any]:
    """The site's live status: aggregate, hosts fresh and stale, open findings, findings by
    pack. The headline counts packs in force; ``include_proposed`` adds proposed packs."""
    auth.reader(svc, request)
    svc.settle()
    with svc.db.read() as session:
        status = ledger.site_status(
            session,
            svc.policy,
            site_id,
            svc.now(),
            svc.compliance,
            include_proposed=include_proposed,
        )
    if status is None:
        raise APIError(404, "not_found", f"no site {site_id[:64]!r}")
    rows = status.pop("finding_rows")
    return {**status, "findings": [_finding_json(r) for r in rows]}


@router.get("/orgs/{org_id}/status")
def org_status(
    svc: SvcDep,
    request: Request,
    org_id: str,
    include_proposed: bool = Query(
        False, description="count findings of proposed packs in the headline status too"
    ),
) -> dict[str, Any]:
    """The organization's status and its country distribution table, denominator stated; the
    headline counts packs in force, ``include_proposed`` adds proposed packs."""
    auth.reader(svc, request)
    svc.settle()
    with svc.db.read() as session:
        status = ledger.org_status(
            session, svc.policy, org_id, svc.now(), include_proposed=include_proposed
        )
    if status is None:
        raise APIError(404, "not_found", f"no organization {org_id[:64]!r}")
    rows = status.pop("finding_rows")
    return {**status, "findings": [_finding_json(r) for r in rows]}


@router.get("/findings")
def findings(
    svc: SvcDep,
    request: Request,
    site: str | None = Query(None, pattern=_ID),
    org: str | None = Query(None, pattern=_ID),
    severity: Literal["info", "warning", "cannot_attest", "violation"] | None = None,
    condition: str | None = Query(None, max_length=200),
    pack_status: Literal["in-force", "proposed", "rescinded-not-enforced", "licence-condition"]
    | None = None,
    open: bool | None = None,
    limit: int = Query(100, ge=1, le=1000),
    after: int = Query(
        0, ge=0, le=2**63 - 1, description="cursor: the last id of the previous page"
    ),
) -> dict[str, Any]:
    """Findings with their open/close history, filtered, newest last, paginated by id."""
    auth.reader(svc, request)
    svc.settle()
    with svc.db.read() as session:
        rows = ledger.find(
            session,
            site=site,
            org=org,
            severity=severity,
            condition=condition,
            pack_status=pack_status,
            is_open=open,
            limit=limit,
            after=after,
        )
        items = [_finding_json(r) for r in rows]
    return {"items": items, "next": items[-1]["id"] if len(items) == limit else None}


class ShipmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shipped_on: date
    site: str | None = Field(None, pattern=_ID)
    destination_country: str | None = Field(None, pattern=r"^[A-Za-z]{2}$")
    consignee: str = Field(min_length=1, max_length=200)
    license_exception: Literal["VEU", "LPP", "AIA", "ACM", "license"] = "VEU"
    end_user: Literal["veu", "non-veu"] = "veu"
    chip_model: str = Field(min_length=1, max_length=200)
    quantity: int | None = Field(None, ge=1, le=1_000_000)
    uuids: list[str] = Field(default_factory=list, max_length=100_000)
    serials: list[str] = Field(default_factory=list, max_length=100_000)
    #: The U.S. third-party lab test record of the shipped chips (91 FR 1684).
    lab_test: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("lab_test")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and (not v.isprintable() or not v.strip()):
            raise ValueError("the lab test reference must be printable text")
        return v

    @field_validator("uuids", "serials")
    @classmethod
    def _short(cls, v: list[str]) -> list[str]:
        if any(not (0 < len(x) <= 100) or not x.isprintable() for x in v):
            raise ValueError("identities must be printable and at most 100 characters")
        return v


@router.post("/shipments", status_code=201)
def add_shipment(svc: SvcDep, request: Request, body: ShipmentIn) -> dict[str, Any]:
    """Record a shipment; answers the LPP and country-allocation standing it leaves."""
    user = auth.admin(svc, request)
    with svc.db.write() as session:
        out = ledger.add_shipment(
            session, svc.policy, body.model_dump(), now=svc.now(), actor=user.actor
        )
    return out


@router.get("/shipments")
def list_shipments(
    svc: SvcDep,
    request: Request,
    site: str | None = Query(None, pattern=_ID),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    auth.reader(svc, request)
    with svc.db.read() as session:
        return {"items": ledger.list_shipments(session, site=site, limit=limit)}


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    training_ops: float | None = Field(None, ge=0, le=1e40)
    published: bool = False
    derived_from: str | None = Field(None, max_length=200)
    derived_from_published: bool = False
    added_training_ops: float | None = Field(None, ge=0, le=1e40)
    less_capable_than_published: bool = False
    digests: list[str] = Field(default_factory=list, max_length=100_000)

    @field_validator("digests")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        out = [d.lower() for d in v]
        if any(len(d) != 64 or any(c not in "0123456789abcdef" for c in d) for d in out):
            raise ValueError("digests must be SHA-256 hex strings")
        return out


@router.post("/models", status_code=201)
def add_model(svc: SvcDep, request: Request, body: ModelIn) -> dict[str, Any]:
    """Register a model and its file digests; answers its ECCN 4E091 classification and why."""
    user = auth.admin(svc, request)
    with svc.db.write() as session:
        return ledger.add_model(
            session, svc.policy, body.model_dump(), now=svc.now(), actor=user.actor
        )


@router.get("/models")
def list_models(svc: SvcDep, request: Request) -> dict[str, Any]:
    auth.reader(svc, request)
    with svc.db.read() as session:
        return {"items": ledger.list_models(session, svc.policy, svc.now().date())}


class AuthorizationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_models: list[str] | None = Field(None, max_length=200)
    may_store_controlled_weights: bool = False
    #: The weakest assurance level a host at the site must reach (contract.assurance.LADDER).
    minimum_assurance: Level | None = None


@router.put("/sites/{site_id}/authorization")
def set_authorization(
    svc: SvcDep, request: Request, site_id: str, body: AuthorizationIn
) -> dict[str, Any]:
    """Terms of the site's authorization beyond its TPP: allowed chip models, weight storage,
    the assurance level its hosts must reach."""
    user = auth.admin(svc, request)
    with svc.db.write() as session:
        return ledger.set_authorization(
            session, site_id, body.model_dump(), now=svc.now(), actor=user.actor
        )


@router.post("/sites/{site_id}/refresh")
def refresh(svc: SvcDep, request: Request, site_id: str) -> dict[str, Any]:
    """Re-judge a site now (staleness, ledger) instead of waiting for the periodic task."""
    auth.admin(svc, request)
    with svc.db.write() as session:
        try:
            found = settle.refresh_site(session, svc.policy, site_id, svc.now(), svc.compliance)
        except LookupError:
            raise APIError(404, "not_found", f"no site {site_id[:64]!r}") from None
    return {"site_id": site_id, "findings": [f.to_json() for f in found]}


@router.get("/policy")
def policy_info(svc: SvcDep, request: Request) -> dict[str, Any]:
    """The policy packs in force and the digest every result records."""
    auth.reader(svc, request)
    return _policy_summary(svc, svc.policy)


def _policy_summary(svc: Services, policy: PolicySet) -> dict[str, Any]:
    """The packs, and what this process knows of the recorded pack set (``reload``)."""
    out = ledger.policy_summary(policy)
    if svc.policy_watch is not None:
        out["reload"] = svc.policy_watch.state()
    return out


@router.post("/policy/reload")
def policy_reload(svc: SvcDep, request: Request) -> dict[str, Any]:
    """Load the packs again and record them for every worker
    (server/compliance/policy_sync.py); a pack that fails to load never replaces the one in
    force."""
    user = auth.admin(svc, request)
    old = svc.policy.digest
    try:
        fresh = reload_policy(svc, user.actor)
    except PackError as exc:
        raise APIError(422, "bad_policy_pack", str(exc)) from None
    return {"previous": old, **_policy_summary(svc, fresh)}
