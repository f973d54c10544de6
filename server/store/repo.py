"""Queries and state changes over the verifier's tables; each takes the caller's session.

Management (organizations, sites, tokens, API keys, hosts) and the reads the API serves. The
evidence write path lives in :mod:`server.store.ingest`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from server.errors import Conflict, Invalid, NotFound, RateLimited, Refused, Unauthenticated
from server.store import audit
from server.store.compliance_models import FindingRow, HostState
from server.store.iso3166 import is_country
from server.store.models import (
    ApiKey,
    ChainHead,
    EnrollToken,
    Host,
    InventoryAccelerator,
    InventoryWeight,
    Nonce,
    Organization,
    Site,
    Snapshot,
)

Role = Literal["admin", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "auditor")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def country(code: str, what: str = "country") -> str:
    code = code.strip().upper()
    if not is_country(code):
        raise Invalid("bad_country", f"{what} {code!r} is not an ISO 3166-1 alpha-2 code")
    return code


# --------------------------------------------------------------------------- organizations, sites


def add_org(
    session: Session, name: str, veu: str, hq: str, parent_hq: str | None, now: datetime
) -> Organization:
    if veu not in ("universal", "national"):
        raise Invalid("bad_veu", "--veu must be universal or national")
    name = name.strip()
    if not name:
        raise Invalid("bad_name", "organization name must not be empty")
    if session.scalar(select(Organization).where(Organization.name == name)) is not None:
        raise Conflict("exists", f"organization {name!r} already exists")
    org = Organization(
        id=new_id("org"),
        name=name,
        veu=veu,
        hq_country=country(hq, "--hq"),
        parent_hq_country=country(parent_hq, "--parent-hq") if parent_hq else None,
        created_at=now,
    )
    session.add(org)
    session.flush()
    audit.append(
        session,
        at=now,
        actor="cli",
        action="org.created",
        subject=f"org:{org.id}",
        details={"name": name, "veu": veu, "hq": org.hq_country, "parent_hq": parent_hq},
    )
    return org


def find_org(session: Session, ref: str) -> Organization:
    org = session.get(Organization, ref) or session.scalar(
        select(Organization).where(Organization.name == ref)
    )
    if org is None:
        raise NotFound("unknown_org", f"no organization with id or name {ref!r}")
    return org


def list_orgs(session: Session) -> Sequence[Organization]:
    return session.scalars(select(Organization).order_by(Organization.name)).all()


def add_site(
    session: Session,
    org_ref: str,
    name: str,
    site_country: str,
    authorized_tpp: float,
    authorization: str | None,
    test_site: bool,
    now: datetime,
) -> Site:
    org = find_org(session, org_ref)
    name = name.strip()
    if not name:
        raise Invalid("bad_name", "site name must not be empty")
    if not (authorized_tpp >= 0) or authorized_tpp == float("inf"):
        raise Invalid("bad_tpp", "--authorized-tpp must be a finite number >= 0")
    clash = select(Site).where(and_(Site.org_id == org.id, Site.name == name))
    if session.scalar(clash) is not None:
        raise Conflict("exists", f"site {name!r} already exists in {org.name!r}")
    site = Site(
        id=new_id("site"),
        org_id=org.id,
        name=name,
        country=country(site_country),
        authorized_tpp=float(authorized_tpp),
        authorization_ref=authorization,
        test_site=test_site,
        created_at=now,
    )
    session.add(site)
    session.flush()
    audit.append(
        session,
        at=now,
        actor="cli",
        action="site.created",
        subject=f"site:{site.id}",
        details={
            "org": org.id,
            "name": name,
            "country": site.country,
            "authorized_tpp": site.authorized_tpp,
            "authorization": authorization,
            "test_site": test_site,
        },
    )
    return site


def find_site(session: Session, ref: str) -> Site:
    site = session.get(Site, ref)
    if site is not None:
        return site
    matches = session.scalars(select(Site).where(Site.name == ref)).all()
    if len(matches) > 1:
        raise Invalid("ambiguous_site", f"several sites are named {ref!r}; use the site id")
    if not matches:
        raise NotFound("unknown_site", f"no site with id or name {ref!r}")
    return matches[0]


def list_sites(session: Session, limit: int = 100, cursor: str | None = None) -> Sequence[Site]:
    q = select(Site).order_by(Site.id).limit(limit)
    if cursor:
        q = q.where(Site.id > cursor)
    return session.scalars(q).all()


# --------------------------------------------------------------------------- secrets


def create_enroll_token(
    session: Session, site_ref: str, ttl: timedelta, now: datetime, actor: str = "cli"
) -> tuple[str, EnrollToken]:
    site = find_site(session, site_ref)
    if ttl <= timedelta(0):
        raise Invalid("bad_ttl", "--ttl must be positive")
    token = "veu_et_" + secrets.token_urlsafe(32)
    row = EnrollToken(
        id=new_id("et"),
        token_hash=hash_secret(token),
        site_id=site.id,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        at=now,
        actor=actor,
        action="enroll_token.created",
        subject=f"site:{site.id}",
        details={"token_id": row.id, "expires_at": row.expires_at.isoformat()},
    )
    return token, row


def create_api_key(
    session: Session, role: str, name: str | None, now: datetime, actor: str = "cli"
) -> tuple[str, ApiKey]:
    if role not in ROLES:
        raise Invalid("bad_role", "--role must be admin or auditor")
    key = "veu_ak_" + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("ak"), key_hash=hash_secret(key), role=role, name=name, created_at=now)
    session.add(row)
    session.flush()
    audit.append(
        session,
        at=now,
        actor=actor,
        action="api_key.created",
        subject=f"api_key:{row.id}",
        details={"role": role, "name": name},
    )
    return key, row


def lookup_api_key(session: Session, presented: str) -> ApiKey | None:
    """The active key whose hash matches; the final comparison is constant-time."""
    digest = hash_secret(presented)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None:
        return None
    return row if hmac.compare_digest(row.key_hash, digest) else None


# --------------------------------------------------------------------------- enrollment


@dataclass(frozen=True)
class Enrolled:
    host: Host
    site: Site


def enroll(
    session: Session,
    *,
    token: str,
    public_key_raw: bytes,
    key_id: str,
    facts: dict[str, Any],
    head_seq: int,
    head_digest: str | None,
    now: datetime,
    key_level: str = "self-reported",
    tpm: str | None = None,
) -> Enrolled:
    """Consume the token (conditionally: single use under races) and register the host.
    ``key_level``/``tpm``: what credential activation proved (see models.Host)."""
    digest = hash_secret(token)
    row = session.scalar(select(EnrollToken).where(EnrollToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthenticated("invalid_token", "enrollment token is not known")
    if row.used_at is not None:
        raise Unauthenticated("token_used", "enrollment token was already used")
    if row.expires_at <= now:
        raise Unauthenticated("token_expired", "enrollment token has expired")
    existing = session.get(Host, key_id)
    if existing is not None:
        if existing.status == "revoked":
            raise Refused("key_revoked", "this host key was revoked; create a new key")
        raise Conflict("already_enrolled", "this host key is already enrolled")
    claimed = session.execute(
        update(EnrollToken)
        .where(EnrollToken.id == row.id, EnrollToken.used_at.is_(None))
        .values(used_at=now, used_by=key_id)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise Unauthenticated("token_used", "enrollment token was already used")
    site = session.get(Site, row.site_id)
    assert site is not None
    host = Host(
        key_id=key_id,
        public_key=public_key_raw,
        site_id=site.id,
        status="active",
        key_level=key_level,
        tpm=tpm,
        machine_id=_short(facts.get("machine_id")),
        hostname=_short(facts.get("hostname")),
        facts=json.dumps(facts, sort_keys=True),
        enrolled_at=now,
    )
    session.add(host)
    session.flush()
    session.add(ChainHead(key_id=key_id, seq=head_seq, digest=head_digest, updated_at=now))
    audit.append(
        session,
        at=now,
        actor=f"host:{key_id}",
        action="host.enrolled",
        subject=f"host:{key_id}",
        details={
            "site": site.id,
            "token_id": row.id,
            "machine_id": host.machine_id,
            "hostname": host.hostname,
            "chain_head": {"seq": head_seq, "digest": head_digest},
            "key_level": key_level,
        },
    )
    return Enrolled(host=host, site=site)


def _short(value: Any, limit: int = 200) -> str | None:
    return str(value)[:limit] if value is not None else None


def revoke_host(session: Session, key_id: str, now: datetime, actor: str) -> Host:
    host = session.get(Host, key_id)
    if host is None:
        raise NotFound("unknown_host", f"no host with key id {key_id!r}")
    if host.status != "revoked":
        host.status = "revoked"
        host.revoked_at = now
        mark_hosts_inactive(session, key_id, now)  # a revoked host's chips stop counting
        audit.append(
            session,
            at=now,
            actor=actor,
            action="host.revoked",
            subject=f"host:{key_id}",
            details={"site": host.site_id},
        )
    return host


def mark_hosts_inactive(session: Session, key_id: str, now: datetime) -> None:
    """A revoked host stops counting: its contribution leaves the site total when the site next
    settles (the row is marked, not locked site-wide here), and its open findings close."""
    session.execute(
        update(HostState)
        .where(HostState.key_id == key_id)
        .values(revoked=True, pending=True, accelerators=0, tpp=0)
    )
    session.execute(
        update(FindingRow)
        .where(
            FindingRow.scope == "host", FindingRow.scope_id == key_id, FindingRow.is_open.is_(True)
        )
        .values(is_open=False, closed_at=now)
    )


# --------------------------------------------------------------------------- challenges


#: Unexpired, unused challenges one host may hold at once: a host that asks for more is looping.
MAX_OPEN_NONCES = 16


def issue_nonce(session: Session, key_id: str, origin: str, now: datetime, ttl: timedelta) -> Nonce:
    """A fresh challenge; expired ones of this host are purged, open ones are capped."""
    session.execute(
        delete(Nonce).where(Nonce.key_id == key_id, Nonce.expires_at < now - timedelta(days=1))
    )
    if origin == "agent":
        open_count = session.scalar(
            select(func.count())
            .select_from(Nonce)
            .where(
                Nonce.key_id == key_id,
                Nonce.origin == "agent",
                Nonce.used.is_(False),
                Nonce.expires_at > now,
            )
        )
        if (open_count or 0) >= MAX_OPEN_NONCES:
            raise RateLimited(
                "too_many_challenges",
                f"this host already holds {MAX_OPEN_NONCES} unused challenges; use one or wait "
                "for them to expire",
            )
    row = Nonce(
        nonce=secrets.token_hex(32),
        key_id=key_id,
        origin=origin,
        issued_at=now,
        expires_at=now + ttl,
        used=False,
    )
    session.add(row)
    return row


def pending_challenge(session: Session, key_id: str, now: datetime) -> Nonce | None:
    """The newest unexpired, unused challenge an administrator asked this host to answer."""
    return session.scalar(
        select(Nonce)
        .where(
            Nonce.key_id == key_id,
            Nonce.used.is_(False),
            Nonce.origin == "request",
            Nonce.expires_at > now,
        )
        .order_by(Nonce.issued_at.desc())
        .limit(1)
    )


def hosts_of(session: Session, *, site_id: str | None, key_id: str | None) -> Sequence[Host]:
    q = select(Host).where(Host.status == "active")
    if site_id is not None:
        q = q.where(Host.site_id == site_id)
    if key_id is not None:
        q = q.where(Host.key_id == key_id)
    return session.scalars(q.order_by(Host.key_id)).all()


# --------------------------------------------------------------------------- reads


def list_hosts(
    session: Session, *, site_id: str | None, limit: int, cursor: str | None
) -> Sequence[tuple[Host, ChainHead | None]]:
    q = (
        select(Host, ChainHead)
        .outerjoin(ChainHead, ChainHead.key_id == Host.key_id)
        .order_by(Host.key_id)
        .limit(limit)
    )
    if site_id is not None:
        q = q.where(Host.site_id == site_id)
    if cursor:
        q = q.where(Host.key_id > cursor)
    return [(h, c) for h, c in session.execute(q).all()]


def host_inventory(
    session: Session, key_id: str, *, weights: bool = True
) -> tuple[Sequence[InventoryAccelerator], Sequence[InventoryWeight]]:
    acc = session.scalars(
        select(InventoryAccelerator)
        .where(InventoryAccelerator.key_id == key_id)
        .order_by(InventoryAccelerator.pci_bus_id, InventoryAccelerator.id)
    ).all()
    if not weights:
        return acc, []
    files = session.scalars(
        select(InventoryWeight)
        .where(InventoryWeight.key_id == key_id)
        .order_by(InventoryWeight.path, InventoryWeight.id)
    ).all()
    return acc, files


def host_weights_page(
    session: Session, key_id: str, *, limit: int, after_id: int | None
) -> Sequence[InventoryWeight]:
    """One page of a host's weight files, in id order, after ``after_id``."""
    q = (
        select(InventoryWeight)
        .where(InventoryWeight.key_id == key_id)
        .order_by(InventoryWeight.id)
        .limit(limit)
    )
    if after_id is not None:
        q = q.where(InventoryWeight.id > after_id)
    return session.scalars(q).all()


def list_snapshots(
    session: Session, key_id: str, *, limit: int, before_seq: int | None
) -> Sequence[Snapshot]:
    q = select(Snapshot).where(Snapshot.key_id == key_id).order_by(Snapshot.seq.desc()).limit(limit)
    if before_seq is not None:
        q = q.where(Snapshot.seq < before_seq)
    return session.scalars(q).all()


def latest_snapshot(session: Session, key_id: str) -> Snapshot | None:
    return session.scalar(
        select(Snapshot).where(Snapshot.key_id == key_id).order_by(Snapshot.seq.desc()).limit(1)
    )


def snapshot_by_digest(session: Session, digest: str) -> Snapshot | None:
    if not _HEX64.match(digest):
        return None
    return session.scalar(select(Snapshot).where(Snapshot.digest == digest))


def row_counts(session: Session, tables: Sequence[str]) -> dict[str, int]:
    from server.store.models import Base

    out = {}
    for name in tables:
        table = Base.metadata.tables[name]
        out[name] = int(session.scalar(select(func.count()).select_from(table)) or 0)
    return out
