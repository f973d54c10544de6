"""What compliance users read (auditor or admin), admin actions on hosts, and public endpoints."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import select, text

from contract import format_timestamp
from contract.keys import public_from_raw, public_pem
from contract.results import ALG
from server.api import auth
from server.api.deps import SvcDep
from server.api.errors import APIError
from server.store import repo
from server.store.compliance_models import HostState
from server.store.models import AuditEntry, ChainHead, Host, Site, Snapshot

router = APIRouter(tags=["read"])

LIMIT = Query(100, ge=1, le=1000, description="page size")
CURSOR = Query(None, max_length=100, description="next_cursor of the previous page")


class Page(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class VerifierKeyOut(BaseModel):
    key_id: str
    alg: str
    public_key: str


def _ts(value: Any) -> str | None:
    return format_timestamp(value) if value is not None else None


def _host(h: Host, head: ChainHead | None) -> dict[str, Any]:
    return {
        "host_id": h.key_id,
        "key_id": h.key_id,
        "site_id": h.site_id,
        "status": h.status,
        "hostname": h.hostname,
        "machine_id": h.machine_id,
        "enrolled_at": _ts(h.enrolled_at),
        "revoked_at": _ts(h.revoked_at),
        "last_seen_at": _ts(head.updated_at if head is not None and head.seq > 0 else None),
        "chain_head": {"seq": head.seq, "digest": head.digest} if head is not None else None,
    }


def _snapshot(s: Snapshot) -> dict[str, Any]:
    return {
        "digest": s.digest,
        "host_id": s.key_id,
        "site_id": s.site_id,
        "seq": s.seq,
        "prev": s.prev,
        "nonce": s.nonce,
        "collected_at": _ts(s.collected_at),
        "received_at": _ts(s.received_at),
        "status": s.status,
        "size": s.size,
        "findings": json.loads(s.findings),
    }


def _site(s: Site) -> dict[str, Any]:
    return {
        "site_id": s.id,
        "org_id": s.org_id,
        "name": s.name,
        "country": s.country,
        "authorized_tpp": s.authorized_tpp,
        "authorization_ref": s.authorization_ref,
        "test_site": s.test_site,
    }


@router.get("/v1/hosts", response_model=Page)
def hosts(
    svc: SvcDep,
    request: Request,
    site: str | None = Query(None, max_length=100),
    limit: int = LIMIT,
    cursor: str | None = CURSOR,
) -> Page:
    auth.reader(svc, request)
    with svc.db.read() as session:
        rows = repo.list_hosts(session, site_id=site, limit=limit, cursor=cursor)
        items = [_host(h, c) for h, c in rows]
    nxt = items[-1]["host_id"] if len(items) == limit else None
    return Page(items=items, next_cursor=nxt)


@router.get("/v1/hosts/{host_id}")
def host(
    svc: SvcDep,
    request: Request,
    host_id: str,
    limit: int = Query(500, ge=1, le=1000, description="weight files per page"),
    cursor: int | None = Query(
        None, ge=0, le=2**63 - 1, description="weights_next_cursor of the previous page"
    ),
) -> dict[str, Any]:
    """The host, its accelerators and one page of its weight files (``weights_next_cursor``
    names the next page; None on the last)."""
    auth.reader(svc, request)
    with svc.db.read() as session:
        h = session.get(Host, host_id) if len(host_id) == 64 else None
        if h is None:
            raise APIError(404, "not_found", "no host with that id")
        head = session.get(ChainHead, host_id)
        acc, _ = repo.host_inventory(session, host_id, weights=False)
        weights = repo.host_weights_page(session, host_id, limit=limit, after_id=cursor)
        latest = repo.latest_snapshot(session, host_id)
        out = _host(h, head)
        out["facts"] = json.loads(h.facts)
        out["latest_snapshot"] = _snapshot(latest) if latest is not None else None
        state = session.get(HostState, host_id)
        # The level its latest accepted snapshot reached (None: none yet, or not recorded).
        out["assurance"] = state.assurance if state is not None else None
        out["accelerators"] = [
            {
                "uuid": a.uuid,
                "serial": a.serial,
                "vendor": a.vendor,
                "model": a.model,
                "pci_device_id": a.pci_device_id,
                "pci_bus_id": a.pci_bus_id,
                "memory_mib": a.memory_mib,
                "source": a.source,
            }
            for a in acc
        ]
        out["weights"] = [
            {
                "sha256": w.sha256,
                "path": w.path,
                "size": w.size,
                "format": w.format,
                "root": w.root,
                "encryption": w.encryption,
            }
            for w in weights
        ]
        out["weights_next_cursor"] = weights[-1].id if len(weights) == limit else None
    return out


@router.get("/v1/hosts/{host_id}/snapshots", response_model=Page)
def host_snapshots(
    svc: SvcDep, request: Request, host_id: str, limit: int = LIMIT, cursor: str | None = CURSOR
) -> Page:
    auth.reader(svc, request)
    before: int | None = None
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 17:
            raise APIError(400, "bad_cursor", "cursor must be a next_cursor from a previous page")
        before = int(cursor)
    with svc.db.read() as session:
        if session.get(Host, host_id) is None:
            raise APIError(404, "not_found", "no host with that id")
        rows = repo.list_snapshots(session, host_id, limit=limit, before_seq=before)
        items = [_snapshot(s) for s in rows]
    nxt = str(items[-1]["seq"]) if len(items) == limit else None
    return Page(items=items, next_cursor=nxt)


@router.get("/v1/hosts/{host_id}/key")
def host_key(svc: SvcDep, request: Request, host_id: str) -> dict[str, Any]:
    """The host's public key and the audited enrollment that bound it, so that anyone can
    re-verify its stored envelopes (``veu-agent verify --pubkey``) without the host."""
    auth.reader(svc, request)
    with svc.db.read() as session:
        h = session.get(Host, host_id) if len(host_id) == 64 else None
        if h is None:
            raise APIError(404, "not_found", "no host with that id")
        return host_key_record(session, h)


def host_key_record(session: Any, h: Host) -> dict[str, Any]:
    """Key, PEM and the ``host.enrolled`` audit entry (its hash links it into the audit chain)."""
    entry = session.scalar(
        select(AuditEntry)
        .where(AuditEntry.action == "host.enrolled", AuditEntry.subject == f"host:{h.key_id}")
        .order_by(AuditEntry.seq)
        .limit(1)
    )
    public = public_from_raw(bytes(h.public_key))
    return {
        "key_id": h.key_id,
        "alg": "Ed25519",
        "public_key": base64.b64encode(bytes(h.public_key)).decode(),
        "public_key_pem": public_pem(public).decode(),
        "status": h.status,
        "site_id": h.site_id,
        "enrolled_at": _ts(h.enrolled_at),
        "revoked_at": _ts(h.revoked_at),
        "enrollment": None
        if entry is None
        else {
            "audit_seq": entry.seq,
            "at": entry.at,
            "actor": entry.actor,
            "details": json.loads(entry.details),
            "hash": entry.hash,
            "prev_hash": entry.prev_hash,
        },
    }


@router.post("/v1/hosts/{host_id}/revoke")
def revoke(svc: SvcDep, request: Request, host_id: str) -> dict[str, Any]:
    user = auth.admin(svc, request)
    with svc.db.write() as session:
        h = repo.revoke_host(session, host_id, svc.now(), user.actor)
        return {"host_id": h.key_id, "status": h.status}


@router.get("/v1/sites", response_model=Page)
def sites(svc: SvcDep, request: Request, limit: int = LIMIT, cursor: str | None = CURSOR) -> Page:
    auth.reader(svc, request)
    with svc.db.read() as session:
        items = [_site(s) for s in repo.list_sites(session, limit=limit, cursor=cursor)]
    nxt = items[-1]["site_id"] if len(items) == limit else None
    return Page(items=items, next_cursor=nxt)


@router.get("/v1/verifier-key", response_model=VerifierKeyOut)
def verifier_key(svc: SvcDep) -> VerifierKeyOut:
    """The public key that signs attestation results (public: relying parties need it)."""
    return VerifierKeyOut(key_id=svc.key.key_id, alg=ALG, public_key=svc.key.public_pem())


@router.get("/healthz")
def healthz(svc: SvcDep) -> dict[str, str]:
    try:
        with svc.db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise APIError(503, "unavailable", "the database is not reachable") from exc
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
def metrics(svc: SvcDep) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
