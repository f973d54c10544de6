"""The compliance shell: trusted state from the database in, policy judgement out, recorded.

The policy engine (:mod:`server.policy`) is pure; this module feeds it what the store knows and
writes down what it said, inside the caller's ingest transaction:

1. :func:`judge_host` — the host-scope findings of one accepted snapshot, judged against its
   site's country, test flag, authorization and the model registry (only the digests in the
   snapshot are looked up).
2. :func:`record` — the host's contribution replaces its previous one in the site and
   organization aggregates (a delta, O(chip models), never a rescan); the duplicate-identity check
   looks up only this host's accelerator identities; stale hosts come from an index range scan;
   then site and organization conditions are evaluated and the findings tables synchronized
   (new findings open, vanished ones close, with timestamps).
3. :func:`refresh_site` — the same site/organization evaluation without a new snapshot, for the
   periodic task (hosts going stale, shipped chips never seen).

Lock order inside a transaction is always site state, then organization state, so two ingest
transactions never deadlock on each other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from agent.evidence import SnapshotV1
from server.findings import Finding, status_of
from server.policy import (
    HostContext,
    HostContribution,
    ModelRecord,
    ModelRegistry,
    OrgAggregate,
    OrgFacts,
    PolicySet,
    SiteAggregate,
    SiteFacts,
)
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
from server.store.ingest import db_text
from server.store.models import Host, InventoryAccelerator, Organization, Site

#: Citation for ledger reconciliation findings (chip installation reporting and diversion risk).
LEDGER_CITATION = "15 CFR part 748, Supp. No. 10, para. 10 (reporting of chip installations)"
LPP_CITATION = "15 CFR 740.29 (License Exception LPP)"
LPP_ANNUAL_TPP = 26_900_000


@dataclass(frozen=True)
class ComplianceConfig:
    #: A host whose last accepted snapshot is older than this is stale (default 3 x 15 min).
    max_host_age: timedelta = timedelta(minutes=45)
    #: Shipped chips not seen at their site within this many days are "missing".
    missing_after: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class HostJudgement:
    findings: tuple[Finding, ...]
    site: Site
    org: Organization
    on: date


# --------------------------------------------------------------------------- host scope


def model_registry(session: Session, digests: Iterable[str]) -> ModelRegistry:
    wanted = sorted({d.lower() for d in digests if d})
    if not wanted:
        return ModelRegistry()
    rows = session.execute(
        select(ModelFile.digest, RegisteredModel)
        .join(RegisteredModel, RegisteredModel.id == ModelFile.model_id)
        .where(ModelFile.digest.in_(wanted))
    ).all()
    registry = ModelRegistry()
    for digest, model in rows:
        registry.by_digest[digest] = _model_record(model, (digest,))
    return registry


def _model_record(model: RegisteredModel, digests: tuple[str, ...]) -> ModelRecord:
    return ModelRecord(
        name=model.name,
        training_ops=model.training_ops,
        published=model.published,
        derived_from=model.derived_from,
        derived_from_published=model.derived_from_published,
        added_training_ops=model.added_training_ops,
        less_capable_than_published=model.less_capable_than_published,
        digests=digests,
    )


def _authorization(session: Session, site_id: str) -> SiteAuthorization | None:
    return session.get(SiteAuthorization, site_id)


def judge_host(
    session: Session, policy: PolicySet, snapshot: SnapshotV1, key_id: str, site_id: str
) -> HostJudgement:
    site = session.get(Site, site_id)
    if site is None:
        raise LookupError(f"site {site_id} vanished")
    org = session.get(Organization, site.org_id)
    if org is None:
        raise LookupError(f"organization {site.org_id} vanished")
    auth = _authorization(session, site_id)
    on = snapshot.collected_at_datetime().date()
    digests = [f.sha256 for root in snapshot.storage for f in root.files if f.sha256]
    ctx = HostContext(
        site_id=site_id,
        site_country=site.country,
        site_is_test=site.test_site,
        site_may_store_controlled_weights=bool(auth and auth.may_store_controlled_weights),
        models=model_registry(session, digests),
        host_id=key_id,
    )
    return HostJudgement(tuple(policy.evaluate_host(snapshot, ctx, on)), site, org, on)


# --------------------------------------------------------------------------- aggregates


def _ensure(session: Session, row: SiteState | OrgState) -> None:
    """Insert the state row if no one has; a concurrent creator wins harmlessly (savepoint)."""
    from sqlalchemy.exc import IntegrityError

    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        pass


_State = TypeVar("_State", SiteState, OrgState)


def _locked_state(
    session: Session, model: type[_State], key: str, now: datetime, empty: dict[str, Any]
) -> _State:
    """The aggregate row of one site or organization, locked until commit (created if new)."""
    column = model.site_id if model is SiteState else model.org_id  # type: ignore[attr-defined]
    query = select(model).where(column == key).with_for_update()
    row = session.scalar(query)
    if row is None:
        id_field = "site_id" if model is SiteState else "org_id"
        fresh = model(
            **{id_field: key},
            aggregate=json.dumps(empty),
            status="none",
            policy_digest=None,
            updated_at=now,
        )
        _ensure(session, fresh)
        row = session.scalar(query.execution_options(populate_existing=True))
        assert row is not None
    return row


def _locked_site_state(session: Session, site_id: str, now: datetime) -> SiteState:
    return _locked_state(session, SiteState, site_id, now, SiteAggregate().to_json())


def _locked_org_state(session: Session, org_id: str, now: datetime) -> OrgState:
    return _locked_state(session, OrgState, org_id, now, OrgAggregate().to_json())


def record(
    session: Session,
    policy: PolicySet,
    *,
    key_id: str,
    snapshot: SnapshotV1,
    digest: str,
    judgement: HostJudgement,
    findings: Sequence[Finding],
    now: datetime,
    config: ComplianceConfig,
) -> None:
    """Fold one accepted snapshot into the site and organization state, and judge them."""
    site, org = judgement.site, judgement.org
    new = policy.contribution(snapshot, judgement.on, country=site.country)
    prior = session.get(HostState, key_id)
    old = HostContribution.from_json(json.loads(prior.contribution)) if prior else None
    site_state = _locked_site_state(session, site.id, now)
    org_state = _locked_org_state(session, org.id, now)
    site_agg = SiteAggregate.from_json(json.loads(site_state.aggregate))
    org_agg = OrgAggregate.from_json(json.loads(org_state.aggregate))
    old_for_site = old if prior is not None and prior.site_id == site.id else None
    site_agg.apply(old_for_site, new)
    org_agg.apply(old if prior is not None and prior.org_id == org.id else None, new)
    values = {
        "site_id": site.id,
        "org_id": org.id,
        "contribution": json.dumps(new.to_json()),
        "collected_at": snapshot.collected_at_datetime(),
        "status": status_of(list(findings)),
        "snapshot_digest": digest,
        "accelerators": len(snapshot.accelerators),
        "tpp": sum(m.tpp for m in new.models.values()),
    }
    if prior is None:
        session.add(HostState(key_id=key_id, **values))
    else:
        for name, value in values.items():
            setattr(prior, name, value)
    site_state.aggregate = json.dumps(site_agg.to_json())
    org_state.aggregate = json.dumps(org_agg.to_json())
    session.flush()
    sync_findings(
        session, "host", key_id, site_id=site.id, org_id=org.id, findings=findings, now=now
    )
    duplicates = duplicate_identities(session, key_id, snapshot)
    _judge_site(session, policy, site, site_state, site_agg, now, config, duplicates, key_id)
    _judge_org(session, policy, org, org_state, org_agg, now)


def duplicate_identities(
    session: Session, key_id: str, snapshot: SnapshotV1
) -> list[tuple[str, list[str]]]:
    """UUIDs or serials of this host's accelerators that another host also reports.

    Both are checked: a cloned board may keep its serial under a new UUID, or the reverse.
    Two indexed lookups, whatever the size of the fleet.
    """
    # As stored in the inventory table (NUL escaped, cut to the column), so the lookup matches.
    uuids = sorted({db_text(a.uuid, 100) or "" for a in snapshot.accelerators if a.uuid})
    serials = sorted({db_text(a.serial, 100) or "" for a in snapshot.accelerators if a.serial})
    found: dict[str, set[str]] = {}
    if uuids:
        for other, value in session.execute(
            select(InventoryAccelerator.key_id, InventoryAccelerator.uuid).where(
                InventoryAccelerator.uuid.in_(uuids), InventoryAccelerator.key_id != key_id
            )
        ):
            found.setdefault(f"uuid:{value}", {key_id}).add(other)
    if serials:
        for other, value in session.execute(
            select(InventoryAccelerator.key_id, InventoryAccelerator.serial).where(
                InventoryAccelerator.serial.in_(serials), InventoryAccelerator.key_id != key_id
            )
        ):
            found.setdefault(f"serial:{value}", {key_id}).add(other)
    return [(ident, sorted(hosts)) for ident, hosts in sorted(found.items())]


def _open_duplicates_elsewhere(session: Session, site_id: str) -> list[tuple[str, list[str]]]:
    """Duplicate findings already open at this site that a new snapshot did not re-derive.

    A duplicate found when host B reported a serial that host A holds stays open at both sites
    until one of them stops reporting it; re-checking it costs one query per open finding.
    """
    rows = session.scalars(
        select(FindingRow.subject).where(
            FindingRow.scope == "site",
            FindingRow.scope_id == site_id,
            FindingRow.is_open.is_(True),
            FindingRow.condition_id.like("%unique-accelerator-identity"),
        )
    ).all()
    out: list[tuple[str, list[str]]] = []
    for subject in rows:
        ident = subject.split("accelerator:", 1)[-1]
        column = (
            InventoryAccelerator.uuid if ident.startswith("uuid:") else InventoryAccelerator.serial
        )
        value = ident.split(":", 1)[-1]
        hosts = sorted(
            set(session.scalars(select(InventoryAccelerator.key_id).where(column == value)))
        )
        if len(hosts) > 1:
            out.append((ident, hosts))
    return out


def stale_hosts(session: Session, site_id: str, now: datetime, max_age: timedelta) -> list[str]:
    cutoff = now - max_age
    return list(
        session.scalars(
            select(HostState.key_id)
            .join(Host, Host.key_id == HostState.key_id)
            .where(
                HostState.site_id == site_id,
                HostState.collected_at < cutoff,
                Host.status == "active",
            )
            .order_by(HostState.collected_at, HostState.key_id)  # walks the (site, time) index
            .limit(1000)
        )
    )


def _judge_site(
    session: Session,
    policy: PolicySet,
    site: Site,
    state: SiteState,
    agg: SiteAggregate,
    now: datetime,
    config: ComplianceConfig,
    duplicates: list[tuple[str, list[str]]],
    key_id: str | None,
) -> list[Finding]:
    auth = _authorization(session, site.id)
    allowed = json.loads(auth.allowed_models) if auth and auth.allowed_models else None
    known = {ident for ident, _ in duplicates}
    for ident, hosts in _open_duplicates_elsewhere(session, site.id):
        if ident not in known:
            duplicates.append((ident, hosts))
    facts = SiteFacts(
        site_id=site.id,
        country=site.country,
        authorized_tpp=int(site.authorized_tpp),
        aggregate=agg,
        allowed_models=allowed,
        stale_hosts=stale_hosts(session, site.id, now, config.max_host_age),
        host_count=agg.hosts,
        duplicate_accelerators=duplicates,
    )
    findings = policy.evaluate_site(facts, now.date())
    findings.extend(ledger_findings(session, site, key_id, now, config))
    state.status = status_of(findings)
    state.policy_digest = policy.digest
    state.updated_at = now
    sync_findings(
        session, "site", site.id, site_id=site.id, org_id=site.org_id, findings=findings, now=now
    )
    return findings


def _judge_org(
    session: Session,
    policy: PolicySet,
    org: Organization,
    state: OrgState,
    agg: OrgAggregate,
    now: datetime,
) -> list[Finding]:
    national = ""
    if org.veu == "national":
        national = session.scalar(select(Site.country).where(Site.org_id == org.id).limit(1)) or ""
    facts = OrgFacts(
        org_id=org.id,
        veu_type=org.veu,
        hq_country=org.hq_country,
        parent_hq_country=org.parent_hq_country or org.hq_country,
        aggregate=agg,
        national_country=national,
    )
    findings = policy.evaluate_org(facts, now.date())
    state.status = status_of(findings)
    state.policy_digest = policy.digest
    state.updated_at = now
    sync_findings(
        session, "organization", org.id, site_id=None, org_id=org.id, findings=findings, now=now
    )
    return findings


def refresh_site(
    session: Session, policy: PolicySet, site_id: str, now: datetime, config: ComplianceConfig
) -> list[Finding]:
    """Re-judge a site (and its organization) without new evidence: staleness, ledger."""
    site = session.get(Site, site_id)
    if site is None:
        raise LookupError(site_id)
    org = session.get(Organization, site.org_id)
    assert org is not None
    state = _locked_site_state(session, site.id, now)
    org_state = _locked_org_state(session, org.id, now)
    agg = SiteAggregate.from_json(json.loads(state.aggregate))
    findings = _judge_site(session, policy, site, state, agg, now, config, [], None)
    _judge_org(
        session,
        policy,
        org,
        org_state,
        OrgAggregate.from_json(json.loads(org_state.aggregate)),
        now,
    )
    return findings


# --------------------------------------------------------------------------- findings history


def _key(f: Finding) -> tuple[str, str]:
    return (db_text(f.condition_id, 200) or "", db_text(f.subject, 500) or "")


def sync_findings(
    session: Session,
    scope: str,
    scope_id: str,
    *,
    site_id: str | None,
    org_id: str | None,
    findings: Sequence[Finding],
    now: datetime,
) -> None:
    """Open new findings, refresh those still present, close those gone (with timestamps)."""
    current = {_key(f): f for f in findings if f.severity != "info"}
    open_rows = session.scalars(
        select(FindingRow).where(
            FindingRow.scope == scope, FindingRow.scope_id == scope_id, FindingRow.is_open.is_(True)
        )
    ).all()
    seen: set[tuple[str, str]] = set()
    for row in open_rows:
        key = (row.condition_id, row.subject)
        f = current.get(key)
        if f is None or key in seen:
            row.is_open = False
            row.closed_at = now
            continue
        seen.add(key)
        row.last_seen_at = now
        message, seen_text = db_text(f.message, 4000) or "", db_text(f.seen, 4000)
        if (row.severity, row.message, row.seen) != (f.severity, message, seen_text):
            row.severity, row.message, row.seen = f.severity, message, seen_text
            row.expected = db_text(f.expected, 4000)
    for key, f in current.items():
        if key in seen:
            continue
        session.add(
            FindingRow(
                scope=scope,
                scope_id=scope_id,
                site_id=site_id,
                org_id=org_id,
                condition_id=db_text(f.condition_id, 200) or "",
                subject=db_text(f.subject, 500) or "",
                severity=f.severity,
                message=db_text(f.message, 4000) or "",
                expected=db_text(f.expected, 4000),
                seen=db_text(f.seen, 4000),
                citation=db_text(f.citation, 1000),
                confidence=",".join(f.confidence),
                opened_at=now,
                last_seen_at=now,
                closed_at=None,
                is_open=True,
            )
        )


def finding_of(row: FindingRow) -> Finding:
    return Finding(
        condition_id=row.condition_id,
        severity=row.severity,  # type: ignore[arg-type]
        subject=row.subject,
        message=row.message,
        expected=row.expected,
        seen=row.seen,
        citation=row.citation,
        confidence=tuple(c for c in row.confidence.split(",") if c),
    )


# --------------------------------------------------------------------------- ledger


def ledger_findings(
    session: Session, site: Site, key_id: str | None, now: datetime, config: ComplianceConfig
) -> list[Finding]:
    """Shipments vs observed chips at a site that keeps a ledger (has at least one shipment)."""
    has_ledger = session.scalar(
        select(func.count()).select_from(ShipmentItem).where(ShipmentItem.site_id == site.id)
    )
    if not has_ledger:
        return []
    findings: list[Finding] = []
    # Missing: shipped long enough ago and not reported by any host at this site.
    cutoff = (now - config.missing_after).date()
    seen_uuid = (
        select(InventoryAccelerator.uuid)
        .join(Host, Host.key_id == InventoryAccelerator.key_id)
        .where(Host.site_id == site.id)
    )
    seen_serial = (
        select(InventoryAccelerator.serial)
        .join(Host, Host.key_id == InventoryAccelerator.key_id)
        .where(Host.site_id == site.id)
    )
    missing = session.execute(
        select(ShipmentItem.identity, Shipment.id, Shipment.shipped_on)
        .join(Shipment, Shipment.id == ShipmentItem.shipment_id)
        .where(
            ShipmentItem.site_id == site.id,
            Shipment.shipped_on <= cutoff,
            ~and_(
                ShipmentItem.identity.like("uuid:%"),
                func.substr(ShipmentItem.identity, 6).in_(seen_uuid),
            ),
            ~and_(
                ShipmentItem.identity.like("serial:%"),
                func.substr(ShipmentItem.identity, 8).in_(seen_serial),
            ),
        )
        .limit(500)
    ).all()
    for identity, shipment_id, shipped_on in missing:
        findings.append(
            Finding(
                condition_id="ledger.shipped-chip-missing",
                severity="violation",
                subject=f"accelerator:{identity}",
                message=(
                    f"chip {identity} shipped to this site on {shipped_on} (shipment "
                    f"{shipment_id}) has not been reported by any host here: diversion risk"
                ),
                expected=f"reported at site {site.id} within {config.missing_after.days} days",
                seen="not reported",
                citation=LEDGER_CITATION,
                confidence=("U",),
            )
        )
    if key_id is not None:
        findings.extend(_unexpected(session, site, key_id))
    return findings


def _unexpected(session: Session, site: Site, key_id: str) -> list[Finding]:
    rows = session.execute(
        select(InventoryAccelerator.uuid, InventoryAccelerator.serial).where(
            InventoryAccelerator.key_id == key_id
        )
    ).all()
    idents = [f"uuid:{u}" for u, _ in rows if u] + [f"serial:{s}" for _, s in rows if s]
    if not idents:
        return []
    shipped = set(
        session.scalars(select(ShipmentItem.identity).where(ShipmentItem.identity.in_(idents)))
    )
    out: list[Finding] = []
    for uuid_, serial in rows:
        names = [
            n for n in (f"uuid:{uuid_}" if uuid_ else "", f"serial:{serial}" if serial else "") if n
        ]
        if names and not any(n in shipped for n in names):
            out.append(
                Finding(
                    condition_id="ledger.unexpected-chip",
                    severity="warning",
                    subject=f"accelerator:{names[0]}",
                    message=(
                        f"chip {names[0]} reported by host {key_id[:16]}… at site {site.id} "
                        "appears in no recorded shipment"
                    ),
                    expected="every chip at a site with a ledger was shipped to it",
                    seen="no shipment lists it",
                    citation=LEDGER_CITATION,
                    confidence=("U",),
                )
            )
    return out


def lpp_used(session: Session, consignee: str, year: int) -> int:
    start, end = date(year, 1, 1), date(year, 12, 31)
    total = session.scalar(
        select(func.coalesce(func.sum(Shipment.tpp), 0)).where(
            Shipment.consignee == consignee,
            Shipment.license_exception == "LPP",
            Shipment.shipped_on >= start,
            Shipment.shipped_on <= end,
        )
    )
    return int(total or 0)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def mark_hosts_inactive(session: Session, key_id: str, now: datetime) -> None:
    """A revoked host stops counting: its contribution leaves the aggregates."""
    prior = session.get(HostState, key_id)
    if prior is None:
        return
    old = HostContribution.from_json(json.loads(prior.contribution))
    site_state = _locked_site_state(session, prior.site_id, now)
    org_state = _locked_org_state(session, prior.org_id, now)
    site_agg = SiteAggregate.from_json(json.loads(site_state.aggregate))
    org_agg = OrgAggregate.from_json(json.loads(org_state.aggregate))
    site_agg.apply(old, None)
    org_agg.apply(old, None)
    site_state.aggregate = json.dumps(site_agg.to_json())
    org_state.aggregate = json.dumps(org_agg.to_json())
    session.delete(prior)
    session.execute(
        update(FindingRow)
        .where(
            FindingRow.scope == "host", FindingRow.scope_id == key_id, FindingRow.is_open.is_(True)
        )
        .values(is_open=False, closed_at=now)
    )


def site_snapshot_counts(session: Session, site_id: str) -> dict[str, Any]:
    row = session.execute(
        select(
            func.count(HostState.key_id), func.coalesce(func.sum(HostState.accelerators), 0)
        ).where(HostState.site_id == site_id)
    ).one()
    return {"hosts": int(row[0]), "accelerators": int(row[1])}
