"""What each dashboard page shows, read in a fixed number of queries whatever the fleet's size.

Every list is one page (keyset pagination on a unique, indexed column) and everything shown per
row of that page is fetched with one grouped query over the page's ids — never one query per row.
``tests/server/api/dashboard/test_query_count.py`` holds these functions to that.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from server.findings import HEADLINE_PACK_STATUSES, SEVERITY_STATUS, STATUS_RANK
from server.store.compliance_models import (
    FindingRow,
    HostState,
    ModelFile,
    OrgState,
    RegisteredModel,
    Shipment,
    ShipmentItem,
    SiteAuthorization,
    SiteState,
)
from server.store.models import (
    AuditEntry,
    ChainHead,
    Host,
    InventoryAccelerator,
    InventoryWeight,
    Nonce,
    Organization,
    RepeatedRejection,
    Site,
    Snapshot,
)

PAGE = 50
SEVERITIES = ("violation", "cannot_attest", "warning")


@dataclass
class Paged:
    items: list[Any]
    next_after: str | None


def _page(rows: Sequence[Any], limit: int, key: Any) -> Paged:
    items = list(rows[:limit])
    nxt = str(key(items[-1])) if len(rows) > limit and items else None
    return Paged(items, nxt)


# --------------------------------------------------------------------------- sites


@dataclass
class SiteRow:
    id: str
    name: str
    org_id: str
    org_name: str
    country: str
    authorized_tpp: float
    test_site: bool
    status: str
    installed_tpp: int
    accelerators: int
    hosts: int = 0
    hosts_reporting: int = 0
    hosts_stale: int = 0
    findings: dict[str, int] = field(default_factory=dict)

    @property
    def hosts_fresh(self) -> int:
        return self.hosts_reporting - self.hosts_stale

    @property
    def hosts_silent(self) -> int:
        """Active hosts that never delivered accepted evidence."""
        return self.hosts - self.hosts_reporting

    @property
    def overall(self) -> str:
        """The site's own status, worsened by any open finding at the site (hosts included)."""
        worst = self.status
        for severity, count in self.findings.items():
            candidate = SEVERITY_STATUS.get(severity, "affirming")
            if count and STATUS_RANK[candidate] > STATUS_RANK.get(worst, 0):
                worst = candidate
        return worst

    @property
    def over_authorization(self) -> bool:
        return self.installed_tpp > self.authorized_tpp


def in_headline(include_proposed: bool = False) -> Any:
    """Open findings that count in a headline status: appraisal findings and packs in force
    (server.findings.HEADLINE_PACK_STATUSES), and proposed packs only when asked."""
    statuses = ["", *HEADLINE_PACK_STATUSES, *(["proposed"] if include_proposed else [])]
    return FindingRow.pack_status.in_(statuses)


def _aggregate(text: str | None) -> dict[str, Any]:
    if not text:
        return {"models": {}, "tpp_3a090": 0, "accelerators": 0, "hosts": 0}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def site_rows(
    session: Session,
    now: datetime,
    max_age: timedelta,
    *,
    org_id: str | None = None,
    after: str | None = None,
    limit: int = PAGE,
    site_ids: Sequence[str] | None = None,
    include_proposed: bool = False,
) -> Paged:
    """One page of sites with status, TPP, host freshness and open findings (those that count in
    the headline, :func:`in_headline`): three queries."""
    q = (
        select(Site, Organization.name, SiteState.status, SiteState.aggregate)
        .join(Organization, Organization.id == Site.org_id)
        .outerjoin(SiteState, SiteState.site_id == Site.id)
        .order_by(Site.id)
        .limit(limit + 1)
    )
    if org_id is not None:
        q = q.where(Site.org_id == org_id)
    if after:
        q = q.where(Site.id > after)
    if site_ids is not None:
        q = q.where(Site.id.in_(list(site_ids)))
    rows: list[SiteRow] = []
    for site, org_name, status, agg_text in session.execute(q).all():
        agg = _aggregate(agg_text)
        rows.append(
            SiteRow(
                id=site.id,
                name=site.name,
                org_id=site.org_id,
                org_name=org_name,
                country=site.country,
                authorized_tpp=site.authorized_tpp,
                test_site=site.test_site,
                status=status or "none",
                installed_tpp=int(agg.get("tpp_3a090", 0)),
                accelerators=int(agg.get("accelerators", 0)),
            )
        )
    page = _page(rows, limit, lambda r: r.id)
    by_id = {r.id: r for r in page.items}
    if not by_id:
        return page
    cutoff = now - max_age
    for site_id, hosts, reporting, stale in session.execute(
        select(
            Host.site_id,
            func.count(Host.key_id),
            func.count(HostState.key_id),
            func.coalesce(func.sum(case((HostState.collected_at < cutoff, 1), else_=0)), 0),
        )
        .outerjoin(HostState, HostState.key_id == Host.key_id)
        .where(Host.site_id.in_(list(by_id)), Host.status == "active")
        .group_by(Host.site_id)
    ).all():
        row = by_id[site_id]
        row.hosts, row.hosts_reporting, row.hosts_stale = int(hosts), int(reporting), int(stale)
    for site_id, severity, count in session.execute(
        select(FindingRow.site_id, FindingRow.severity, func.count(FindingRow.id))
        .where(
            FindingRow.site_id.in_(list(by_id)),
            FindingRow.is_open.is_(True),
            in_headline(include_proposed),
        )
        .group_by(FindingRow.site_id, FindingRow.severity)
    ).all():
        by_id[site_id].findings[severity] = int(count)
    return page


@dataclass
class FleetTotals:
    sites: int
    hosts: int
    hosts_reporting: int
    hosts_stale: int
    findings: dict[str, int]
    statuses: dict[str, int]

    @property
    def hosts_fresh(self) -> int:
        return self.hosts_reporting - self.hosts_stale


def fleet_totals(
    session: Session, now: datetime, max_age: timedelta, *, include_proposed: bool = False
) -> FleetTotals:
    cutoff = now - max_age
    hosts, reporting, stale = session.execute(
        select(
            func.count(Host.key_id),
            func.count(HostState.key_id),
            func.coalesce(func.sum(case((HostState.collected_at < cutoff, 1), else_=0)), 0),
        )
        .outerjoin(HostState, HostState.key_id == Host.key_id)
        .where(Host.status == "active")
    ).one()
    findings = {
        sev: int(n)
        for sev, n in session.execute(
            select(FindingRow.severity, func.count(FindingRow.id))
            .where(FindingRow.is_open.is_(True), in_headline(include_proposed))
            .group_by(FindingRow.severity)
        ).all()
    }
    rank = case(
        (FindingRow.severity == "violation", 3),
        (FindingRow.severity == "cannot_attest", 2),
        (FindingRow.severity == "warning", 1),
        else_=0,
    )
    worst = (
        select(FindingRow.site_id, func.max(rank).label("rank"))
        .where(
            FindingRow.is_open.is_(True),
            FindingRow.site_id.is_not(None),
            in_headline(include_proposed),
        )
        .group_by(FindingRow.site_id)
        .subquery()
    )
    by_rank = {3: "contraindicated", 2: "none", 1: "warning", 0: "affirming"}
    statuses: dict[str, int] = {}
    sites = 0
    for status, worst_rank in session.execute(
        select(func.coalesce(SiteState.status, "none"), worst.c.rank)
        .select_from(Site)
        .outerjoin(SiteState, SiteState.site_id == Site.id)
        .outerjoin(worst, worst.c.site_id == Site.id)
    ).all():
        from_findings = by_rank[int(worst_rank or 0)]
        overall = max(status, from_findings, key=lambda x: STATUS_RANK.get(x, 0))
        statuses[overall] = statuses.get(overall, 0) + 1
        sites += 1
    return FleetTotals(sites, int(hosts), int(reporting), int(stale), findings, statuses)


@dataclass
class OrgRow:
    id: str
    name: str
    veu: str
    hq_country: str
    parent_hq_country: str | None
    status: str
    aggregate: dict[str, Any]
    sites: int


def org_rows(session: Session, org_id: str | None = None) -> list[OrgRow]:
    site_count = (
        select(Site.org_id, func.count(Site.id).label("n")).group_by(Site.org_id).subquery()
    )
    q = (
        select(Organization, OrgState.status, OrgState.aggregate, site_count.c.n)
        .outerjoin(OrgState, OrgState.org_id == Organization.id)
        .outerjoin(site_count, site_count.c.org_id == Organization.id)
        .order_by(Organization.name)
        .limit(500)
    )
    if org_id is not None:
        q = q.where(Organization.id == org_id)
    out = []
    for org, status, agg, n in session.execute(q).all():
        out.append(
            OrgRow(
                org.id,
                org.name,
                org.veu,
                org.hq_country,
                org.parent_hq_country,
                status or "none",
                json.loads(agg) if agg else {"tpp_by_country": {}},
                int(n or 0),
            )
        )
    return out


# --------------------------------------------------------------------------- one site


@dataclass
class HostRow:
    key_id: str
    hostname: str | None
    status: str
    enrolled_at: datetime
    seq: int
    last_collected: datetime | None
    state_status: str | None
    accelerators: int
    tpp: int
    findings: int = 0

    def stale(self, cutoff: datetime) -> bool:
        return self.last_collected is not None and self.last_collected < cutoff


def host_rows(
    session: Session, site_id: str, *, after: str | None = None, limit: int = PAGE
) -> Paged:
    q = (
        select(
            Host,
            ChainHead.seq,
            HostState.collected_at,
            HostState.status,
            HostState.accelerators,
            HostState.tpp,
        )
        .outerjoin(ChainHead, ChainHead.key_id == Host.key_id)
        .outerjoin(HostState, HostState.key_id == Host.key_id)
        .where(Host.site_id == site_id)
        .order_by(Host.key_id)
        .limit(limit + 1)
    )
    if after:
        q = q.where(Host.key_id > after)
    rows = [
        HostRow(
            h.key_id,
            h.hostname,
            h.status,
            h.enrolled_at,
            int(seq or 0),
            collected,
            st,
            int(acc or 0),
            int(tpp or 0),
        )
        for h, seq, collected, st, acc, tpp in session.execute(q).all()
    ]
    page = _page(rows, limit, lambda r: r.key_id)
    by_id = {r.key_id: r for r in page.items}
    if by_id:
        for key_id, n in session.execute(
            select(FindingRow.scope_id, func.count(FindingRow.id))
            .where(
                FindingRow.scope == "host",
                FindingRow.scope_id.in_(list(by_id)),
                FindingRow.is_open.is_(True),
            )
            .group_by(FindingRow.scope_id)
        ).all():
            by_id[key_id].findings = int(n)
    return page


@dataclass
class WeightGroup:
    root: str
    encryption: str
    files: int
    bytes: int
    hosts: int


@dataclass
class ControlledFile:
    host: str
    hostname: str | None
    path: str
    size: int
    encryption: str
    model: str
    training_ops: float | None


def weight_storage(
    session: Session, site_id: str
) -> tuple[list[WeightGroup], list[ControlledFile]]:
    groups = [
        WeightGroup(root, enc, int(n), int(size or 0), int(hosts))
        for root, enc, n, size, hosts in session.execute(
            select(
                InventoryWeight.root,
                InventoryWeight.encryption,
                func.count(InventoryWeight.id),
                func.sum(InventoryWeight.size),
                func.count(func.distinct(InventoryWeight.key_id)),
            )
            .join(Host, Host.key_id == InventoryWeight.key_id)
            .where(Host.site_id == site_id)
            .group_by(InventoryWeight.root, InventoryWeight.encryption)
            .order_by(InventoryWeight.root)
            .limit(200)
        ).all()
    ]
    registered = [
        ControlledFile(key, hostname, path, int(size), enc, name, ops)
        for key, hostname, path, size, enc, name, ops in session.execute(
            select(
                Host.key_id,
                Host.hostname,
                InventoryWeight.path,
                InventoryWeight.size,
                InventoryWeight.encryption,
                RegisteredModel.name,
                RegisteredModel.training_ops,
            )
            .join(Host, Host.key_id == InventoryWeight.key_id)
            .join(ModelFile, ModelFile.digest == InventoryWeight.sha256)
            .join(RegisteredModel, RegisteredModel.id == ModelFile.model_id)
            .where(Host.site_id == site_id)
            .order_by(RegisteredModel.name, InventoryWeight.path)
            .limit(200)
        ).all()
    ]
    return groups, registered


@dataclass
class ShipmentRow:
    id: str
    shipped_on: Any
    consignee: str
    license_exception: str
    chip_model: str
    quantity: int
    items: int
    observed: int

    @property
    def missing(self) -> int:
        return self.items - self.observed


def shipments(session: Session, site_id: str, limit: int = 100) -> list[ShipmentRow]:
    seen = (
        select(literal("uuid:") + InventoryAccelerator.uuid)
        .join(Host, Host.key_id == InventoryAccelerator.key_id)
        .where(Host.site_id == site_id, InventoryAccelerator.uuid.is_not(None))
        .union(
            select(literal("serial:") + InventoryAccelerator.serial)
            .join(Host, Host.key_id == InventoryAccelerator.key_id)
            .where(Host.site_id == site_id, InventoryAccelerator.serial.is_not(None))
        )
    )
    observed = case((ShipmentItem.identity.in_(seen), 1), else_=0)
    rows = session.execute(
        select(
            Shipment,
            func.count(ShipmentItem.id),
            func.coalesce(func.sum(observed), 0),
        )
        .outerjoin(ShipmentItem, ShipmentItem.shipment_id == Shipment.id)
        .where(Shipment.site_id == site_id)
        .group_by(Shipment.id)
        .order_by(Shipment.shipped_on.desc(), Shipment.id)
        .limit(limit)
    ).all()
    return [
        ShipmentRow(
            s.id,
            s.shipped_on,
            s.consignee,
            s.license_exception,
            s.chip_model,
            s.quantity,
            int(items),
            int(obs),
        )
        for s, items, obs in rows
    ]


def authorization(session: Session, site_id: str) -> SiteAuthorization | None:
    return session.get(SiteAuthorization, site_id)


# --------------------------------------------------------------------------- one host


@dataclass
class TimelineRow:
    seq: int
    digest: str
    prev: str | None
    nonce: str | None
    collected_at: datetime
    received_at: datetime
    status: str
    size: int
    findings: list[dict[str, Any]]
    gap_before: int = 0  # snapshots missing between this one and the next older one shown


def timeline(
    session: Session, key_id: str, *, before: int | None = None, limit: int = PAGE
) -> Paged:
    """Snapshots newest first, without their envelopes (those are downloaded on request)."""
    q = (
        select(
            Snapshot.seq,
            Snapshot.digest,
            Snapshot.prev,
            Snapshot.nonce,
            Snapshot.collected_at,
            Snapshot.received_at,
            Snapshot.status,
            Snapshot.size,
            Snapshot.findings,
        )
        .where(Snapshot.key_id == key_id)
        .order_by(Snapshot.seq.desc())
        .limit(limit + 1)
    )
    if before is not None:
        q = q.where(Snapshot.seq < before)
    rows = session.execute(q).all()
    out = [
        TimelineRow(
            int(seq),
            digest,
            prev,
            nonce,
            collected,
            received,
            status,
            int(size),
            _findings(findings),
        )
        for seq, digest, prev, nonce, collected, received, status, size, findings in rows
    ]
    for newer, older in itertools.pairwise(out):
        newer.gap_before = max(0, newer.seq - older.seq - 1)
    page = _page(out, limit, lambda r: r.seq)
    return page


def _findings(text: str) -> list[dict[str, Any]]:
    value = json.loads(text)
    return value if isinstance(value, list) else []


@dataclass
class Rejection:
    at: str
    code: str
    detail: str
    digest: str | None
    #: Times it was refused (repeats are counted, not audited again), and the last time.
    count: int = 1
    last_seen: datetime | None = None


def rejections(session: Session, key_id: str, limit: int = 50) -> list[Rejection]:
    out = []
    for at, details in session.execute(
        select(AuditEntry.at, AuditEntry.details)
        .where(AuditEntry.action == "evidence.rejected", AuditEntry.subject == f"host:{key_id}")
        .order_by(AuditEntry.seq.desc())
        .limit(limit)
    ).all():
        d = json.loads(details)
        out.append(Rejection(at, str(d.get("code", "")), str(d.get("detail", "")), d.get("digest")))
    repeats = {
        row.key: row
        for row in session.scalars(
            select(RepeatedRejection).where(RepeatedRejection.key_id == key_id).limit(limit * 2)
        )
    }
    for i, r in enumerate(out):
        found = repeats.get(f"revoked:{key_id}" if r.code == "revoked_key" else r.digest or "")
        if found is not None and found.count > 1:
            out[i] = replace(r, count=found.count, last_seen=found.last_seen)
    return out


def chain_findings(session: Session, key_id: str, limit: int = 50) -> list[FindingRow]:
    return list(
        session.scalars(
            select(FindingRow)
            .where(
                FindingRow.scope == "host",
                FindingRow.scope_id == key_id,
                FindingRow.condition_id.like("chain.%"),
            )
            .order_by(FindingRow.id.desc())
            .limit(limit)
        )
    )


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class FindingFilter:
    site: str | None = None
    org: str | None = None
    severity: str | None = None
    condition: str | None = None
    subject: str | None = None
    state: str = "open"  # open | closed | all
    scope_id: str | None = None
    pack_status: str | None = None  # in-force | proposed | rescinded-not-enforced | ...


def findings(
    session: Session, flt: FindingFilter, *, after: int | None = None, limit: int = PAGE
) -> Paged:
    q = select(FindingRow, Site.name).outerjoin(Site, Site.id == FindingRow.site_id)
    if flt.site:
        q = q.where(FindingRow.site_id == flt.site)
    if flt.org:
        q = q.where(FindingRow.org_id == flt.org)
    if flt.severity:
        q = q.where(FindingRow.severity == flt.severity)
    if flt.condition:
        q = q.where(FindingRow.condition_id == flt.condition)
    if flt.subject:
        q = q.where(FindingRow.subject == flt.subject)
    if flt.scope_id:
        q = q.where(FindingRow.scope_id == flt.scope_id)
    if flt.pack_status:
        q = q.where(FindingRow.pack_status == flt.pack_status)
    if flt.state == "open":
        q = q.where(FindingRow.is_open.is_(True))
    elif flt.state == "closed":
        q = q.where(FindingRow.is_open.is_(False))
    if after is not None:
        q = q.where(FindingRow.id < after)
    rows = session.execute(q.order_by(FindingRow.id.desc()).limit(limit + 1)).all()
    return _page([(f, name) for f, name in rows], limit, lambda r: r[0].id)


def condition_ids(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(FindingRow.condition_id).distinct().order_by(FindingRow.condition_id).limit(500)
        )
    )


def open_findings_for(
    session: Session, *, site_id: str | None = None, org_id: str | None = None, limit: int = 100
) -> list[FindingRow]:
    q = select(FindingRow).where(FindingRow.is_open.is_(True))
    if site_id is not None:
        q = q.where(FindingRow.site_id == site_id)
    if org_id is not None:
        q = q.where(FindingRow.org_id == org_id, FindingRow.scope == "organization")
    order = case(
        (FindingRow.severity == "violation", 0),
        (FindingRow.severity == "cannot_attest", 1),
        (FindingRow.severity == "warning", 2),
        else_=3,
    )
    scope = case((FindingRow.scope == "host", 1), else_=0)  # site and organization first
    return list(session.scalars(q.order_by(order, scope, FindingRow.id).limit(limit)))


# --------------------------------------------------------------------------- attest now


@dataclass
class Answer:
    key_id: str
    hostname: str | None
    issued_at: datetime
    answered: bool
    answered_at: datetime | None


def attest_answers(session: Session, site_id: str, since: datetime) -> list[Answer]:
    """Challenges an administrator requested at this site since ``since``, and which were used."""
    rows = session.execute(
        select(
            Host.key_id,
            Host.hostname,
            func.max(Nonce.issued_at),
            func.max(case((Nonce.used.is_(True), 1), else_=0)),
            func.max(Nonce.used_at),
        )
        .join(Nonce, Nonce.key_id == Host.key_id)
        .where(
            Host.site_id == site_id,
            Nonce.origin == "request",
            Nonce.issued_at >= since,
        )
        .group_by(Host.key_id, Host.hostname)
        .order_by(Host.key_id)
        .limit(2000)
    ).all()
    return [
        Answer(key, hostname, issued, bool(used), used_at)
        for key, hostname, issued, used, used_at in rows
    ]
