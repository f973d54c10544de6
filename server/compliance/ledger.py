"""The compliance team's records and the status reads built on them.

Shipments (summed per consignee and year for License Exception LPP and per country for the
Tier 2 allocation of licensed non-VEU exports, judged by server.policy.shipments), the model
registry (with its ECCN 4E091 classification), site authorization terms, and the
site/organization status documents that the API and the dashboard show. Writes are audited in
the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract import Accelerator
from contract.assurance import LADDER, is_level
from server.compliance.assurance import host_levels, level_of
from server.compliance.ledger_facts import lpp_used
from server.compliance.registry import bump_registry, model_record
from server.compliance.settle import ComplianceConfig, stale_hosts
from server.errors import Conflict, Invalid, NotFound, Unprocessable
from server.findings import PACK_STATUSES, SEVERITY_STATUS, STATUS_RANK, counts_in_headline
from server.policy import (
    ModelRecord,
    OrgAggregate,
    OrgFacts,
    PolicySet,
    SiteAggregate,
    classify_model,
)
from server.policy.catalog import ChipMatch
from server.policy.engine import org_variables
from server.policy.shipments import allocation_warnings, lpp_warnings
from server.store import audit
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
from server.store.models import Host, Organization, Site
from server.store.repo import new_id

# --------------------------------------------------------------------------- status documents


def status_view(
    stored: str, rows: Sequence[FindingRow], scope: str, *, include_proposed: bool
) -> dict[str, Any]:
    """The headline status and the findings by pack, from the stored status (judged counting the
    packs of :data:`HEADLINE_PACK_STATUSES`) and the open findings of ``scope``.

    With ``include_proposed`` the open findings of ``proposed`` packs count too: "what if the
    bill passed?". Each pack's entry says its version, status and the status its own findings
    alone imply.
    """
    by_pack: dict[str, dict[str, Any]] = {}
    worst = stored
    for row in rows:
        if row.scope != scope or not row.pack_status:
            continue
        pack_id = row.condition_id.split("/", 1)[0]
        entry = by_pack.setdefault(
            pack_id,
            {
                "pack_id": pack_id,
                "version": row.pack_version,
                "pack_status": row.pack_status,
                "counts_in_headline": counts_in_headline(
                    row.pack_status, include_proposed=include_proposed
                ),
                "status": "affirming",
                "open_findings": 0,
            },
        )
        entry["open_findings"] += 1
        implied = SEVERITY_STATUS[row.severity]
        if STATUS_RANK[implied] > STATUS_RANK[entry["status"]]:
            entry["status"] = implied
        if (
            include_proposed
            and row.pack_status == "proposed"
            and STATUS_RANK[implied] > STATUS_RANK.get(worst, 0)
        ):
            worst = implied
    return {
        "status": worst,
        "status_view": "with-proposed" if include_proposed else "in-force",
        "status_counts": [
            s for s in PACK_STATUSES if counts_in_headline(s, include_proposed=include_proposed)
        ],
        "packs": [by_pack[k] for k in sorted(by_pack)],
    }


def site_status(
    session: Session,
    policy: PolicySet,
    site_id: str,
    now: datetime,
    config: ComplianceConfig,
    *,
    include_proposed: bool = False,
) -> dict[str, Any] | None:
    site = session.get(Site, site_id)
    if site is None:
        return None
    state = session.get(SiteState, site_id)
    agg = SiteAggregate.from_json(json.loads(state.aggregate)) if state else SiteAggregate()
    stale = stale_hosts(session, site_id, now, config.max_host_age)
    rows = session.scalars(
        select(FindingRow)
        .where(FindingRow.site_id == site_id, FindingRow.is_open.is_(True))
        .order_by(FindingRow.id)
        .limit(1000)
    ).all()
    hosts = session.scalar(
        select(func.count())
        .select_from(Host)
        .where(Host.site_id == site_id, Host.status == "active")
    )
    view = status_view(
        state.status if state else "none", rows, "site", include_proposed=include_proposed
    )
    by_level = host_levels(session, site_id)
    return {
        "site_id": site.id,
        "name": site.name,
        "country": site.country,
        "status": view["status"] if state else "none",
        "status_view": view["status_view"],
        "status_counts": view["status_counts"],
        "packs": view["packs"],
        "status_reason": None if state else "no accepted evidence from this site yet",
        "policy_digest": state.policy_digest if state else None,
        "updated_at": state.updated_at.isoformat() if state else None,
        "authorized_tpp": int(site.authorized_tpp),
        "installed_tpp": agg.tpp_3a090,
        "installed_h100e": round(policy.h100e(agg.tpp_3a090, now.date()), 1),
        "accelerators": agg.accelerators,
        "unidentified_accelerators": agg.unidentified,
        "models": {
            name: {"count": t.count, "tpp": t.tpp, "classification": t.classification}
            for name, t in sorted(agg.models.items())
        },
        "hosts_reporting": agg.hosts,
        "hosts_active": int(hosts or 0),
        "stale_hosts": stale,
        "assurance": level_of(by_level),
        "hosts_by_assurance": by_level,
        "finding_rows": rows,
    }


def org_status(
    session: Session,
    policy: PolicySet,
    org_id: str,
    now: datetime,
    *,
    include_proposed: bool = False,
) -> dict[str, Any] | None:
    org = session.get(Organization, org_id)
    if org is None:
        return None
    state = session.get(OrgState, org_id)
    agg = OrgAggregate.from_json(json.loads(state.aggregate)) if state else OrgAggregate()
    facts = OrgFacts(
        org_id=org.id,
        veu_type=org.veu,
        hq_country=org.hq_country,
        parent_hq_country=org.parent_hq_country or org.hq_country,
        aggregate=agg,
    )
    packs = policy.active_packs(now.date())
    table: dict[str, Any] = {}
    if packs:
        variables = org_variables(packs[0], facts, now.date())
        table = {
            "denominator": variables["org"]["denominator"],
            "total_tpp": variables["org"]["total_tpp"],
            "tier1_share": variables["org"]["tier1_share"],
            "us_share": variables["org"]["us_share"],
            "thresholds": {
                k: v
                for k, v in variables["params"].items()
                if "share" in k or "tier1" in k or k.startswith("us_")
            },
            "countries": variables["countries"],
        }
    rows = session.scalars(
        select(FindingRow)
        .where(FindingRow.org_id == org_id, FindingRow.scope == "organization")
        .where(FindingRow.is_open.is_(True))
        .order_by(FindingRow.id)
    ).all()
    view = status_view(
        state.status if state else "none", rows, "organization", include_proposed=include_proposed
    )
    return {
        "org_id": org.id,
        "name": org.name,
        "veu": org.veu,
        "hq_country": org.hq_country,
        "parent_hq_country": org.parent_hq_country,
        "status": view["status"] if state else "none",
        "status_view": view["status_view"],
        "status_counts": view["status_counts"],
        "packs": view["packs"],
        "policy_digest": state.policy_digest if state else None,
        "distribution": table,
        "finding_rows": rows,
    }


def find(
    session: Session,
    *,
    site: str | None,
    org: str | None,
    severity: str | None,
    condition: str | None,
    is_open: bool | None,
    limit: int,
    after: int,
    pack_status: str | None = None,
) -> list[FindingRow]:
    query = select(FindingRow).where(FindingRow.id > after)
    if site is not None:
        query = query.where(FindingRow.site_id == site)
    if org is not None:
        query = query.where(FindingRow.org_id == org)
    if severity is not None:
        query = query.where(FindingRow.severity == severity)
    if condition is not None:
        query = query.where(FindingRow.condition_id == condition)
    if pack_status is not None:
        query = query.where(FindingRow.pack_status == pack_status)
    if is_open is not None:
        query = query.where(FindingRow.is_open.is_(is_open))
    return list(session.scalars(query.order_by(FindingRow.id).limit(limit)))


# --------------------------------------------------------------------------- shipments


def chip_by_name(policy: PolicySet, name: str, on: date) -> ChipMatch | None:
    """A catalog chip by its catalog id (``H100-SXM``) or a name the driver reports."""
    for pack in policy.active_packs(on) or policy.packs:
        for chip in pack.catalog.chips:
            if chip.id.lower() == name.lower():
                return pack.catalog.identify(
                    Accelerator(
                        model=chip.names[0] if chip.names else chip.id, source="inventory-file"
                    )
                ) or ChipMatch(
                    chip.id,
                    chip.title,
                    chip.tpp_value,
                    None,
                    chip.classification,
                    (chip.tpp.confidence,),
                    chip.tpp.source,
                    "name",
                )
    return policy.identify(Accelerator(model=name, source="inventory-file"), on)


def add_shipment(
    session: Session, policy: PolicySet, data: dict[str, Any], *, now: datetime, actor: str
) -> dict[str, Any]:
    from server.store import repo

    site = repo.find_site(session, data["site"]) if data.get("site") else None
    country = (data.get("destination_country") or (site.country if site else "")).upper()
    if not country:
        raise Unprocessable("usage", "give the site or the destination country")
    identities = [f"uuid:{u}" for u in data.get("uuids", [])] + [
        f"serial:{s}" for s in data.get("serials", [])
    ]
    quantity = data.get("quantity") or len(identities)
    if quantity < 1:
        raise Unprocessable("usage", "give a quantity or the shipped chips' UUIDs/serials")
    shipped_on: date = data["shipped_on"]
    lab_test = data.get("lab_test")
    if lab_test is not None:
        lab_test = str(lab_test).strip()
        if not lab_test or len(lab_test) > 200 or not lab_test.isprintable():
            raise Unprocessable(
                "bad_lab_test", "the lab test reference is printable text of 1 to 200 characters"
            )
    chip = chip_by_name(policy, data["chip_model"], shipped_on)
    if chip is None:
        raise Unprocessable(
            "unknown_chip_model",
            f"{data['chip_model']!r} is not in the chip catalog of the packs in force; "
            "use a catalog name (see GET /v1/policy)",
        )
    tpp = chip.tpp * quantity
    row = Shipment(
        id=new_id("shp"),
        shipped_on=shipped_on,
        site_id=site.id if site else None,
        destination_country=country,
        consignee=data["consignee"],
        license_exception=data.get("license_exception", "VEU"),
        end_user=data.get("end_user", "veu"),
        chip_model=chip.chip_id,
        quantity=quantity,
        tpp=tpp,
        lab_test=lab_test,
        created_at=now,
    )
    session.add(row)
    session.flush()
    for ident in identities:
        session.add(ShipmentItem(shipment_id=row.id, site_id=row.site_id, identity=ident))
    warnings: list[dict[str, Any]] = []
    if row.license_exception == "LPP":
        used = lpp_used(session, row.consignee, shipped_on.year)
        warnings += lpp_warnings(policy, row.consignee, used, shipped_on)
    if row.end_user == "non-veu" and row.license_exception == "license":
        used = int(
            session.scalar(
                select(func.coalesce(func.sum(Shipment.tpp), 0)).where(
                    Shipment.destination_country == country,
                    Shipment.end_user == "non-veu",
                    Shipment.license_exception == "license",
                )
            )
            or 0
        )
        warnings += allocation_warnings(policy, country, used, shipped_on)
    audit.append(
        session,
        at=now,
        actor=actor,
        action="shipment.added",
        subject=f"shipment:{row.id}",
        details={
            "site": row.site_id,
            "chip_model": row.chip_model,
            "quantity": quantity,
            "tpp": tpp,
            "license_exception": row.license_exception,
            "lab_test": lab_test,
        },
    )
    return {"id": row.id, "tpp": tpp, "chip_model": row.chip_model, "warnings": warnings}


def list_shipments(session: Session, *, site: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(Shipment).order_by(Shipment.shipped_on.desc(), Shipment.id).limit(limit)
    if site is not None:
        query = query.where(Shipment.site_id == site)
    return [
        {
            "id": s.id,
            "shipped_on": s.shipped_on.isoformat(),
            "site_id": s.site_id,
            "destination_country": s.destination_country,
            "consignee": s.consignee,
            "license_exception": s.license_exception,
            "end_user": s.end_user,
            "chip_model": s.chip_model,
            "quantity": s.quantity,
            "tpp": s.tpp,
            "lab_test": s.lab_test,
        }
        for s in session.scalars(query)
    ]


# --------------------------------------------------------------------------- models


def add_model(
    session: Session, policy: PolicySet, data: dict[str, Any], *, now: datetime, actor: str
) -> dict[str, Any]:
    if session.scalar(select(RegisteredModel).where(RegisteredModel.name == data["name"])):
        raise Conflict("conflict", f"a model named {data['name']!r} is registered")
    taken = session.scalars(
        select(ModelFile.digest).where(ModelFile.digest.in_(data.get("digests", [])))
    ).all()
    if taken:
        raise Conflict(
            "conflict",
            f"digest {taken[0][:16]}… already belongs to another model",
        )
    row = RegisteredModel(
        id=new_id("mdl"),
        name=data["name"],
        training_ops=data.get("training_ops"),
        published=bool(data.get("published")),
        derived_from=data.get("derived_from"),
        derived_from_published=bool(data.get("derived_from_published")),
        added_training_ops=data.get("added_training_ops"),
        less_capable_than_published=bool(data.get("less_capable_than_published")),
        created_at=now,
    )
    session.add(row)
    session.flush()
    for digest in sorted(set(data.get("digests", []))):
        session.add(ModelFile(digest=digest, model_id=row.id))
    bump_registry(session)
    verdict = classify_model(model_record(row, ()), policy, now.date())
    audit.append(
        session,
        at=now,
        actor=actor,
        action="model.registered",
        subject=f"model:{row.id}",
        details={
            "name": row.name,
            "digests": len(data.get("digests", [])),
            "classification": verdict.classification,
        },
    )
    return {"id": row.id, "name": row.name, **_classification_json(verdict)}


def _classification_json(verdict: Any) -> dict[str, Any]:
    return {
        "classification": verdict.classification,
        "controlled": verdict.controlled,
        "reason": verdict.reason,
        "confidence": list(verdict.confidence),
    }


def list_models(session: Session, policy: PolicySet, on: date) -> list[dict[str, Any]]:
    rows = session.scalars(select(RegisteredModel).order_by(RegisteredModel.name)).all()
    counts = dict(
        session.execute(select(ModelFile.model_id, func.count()).group_by(ModelFile.model_id)).all()
    )
    out = []
    for row in rows:
        record: ModelRecord = model_record(row, ())
        out.append(
            {
                "id": row.id,
                "name": row.name,
                "training_ops": row.training_ops,
                "published": row.published,
                "files": int(counts.get(row.id, 0)),
                **_classification_json(classify_model(record, policy, on)),
            }
        )
    return out


# --------------------------------------------------------------------------- authorization


def set_authorization(
    session: Session, site_id: str, data: dict[str, Any], *, now: datetime, actor: str
) -> dict[str, Any]:
    if session.get(Site, site_id) is None:
        raise NotFound("not_found", f"no site {site_id[:64]!r}")
    row = session.get(SiteAuthorization, site_id)
    allowed = data.get("allowed_models")
    encoded = json.dumps(sorted(allowed)) if allowed is not None else None
    if row is None:
        row = SiteAuthorization(site_id=site_id)
        session.add(row)
    row.allowed_models = encoded
    row.may_store_controlled_weights = bool(data.get("may_store_controlled_weights"))
    demanded = data.get("minimum_assurance")
    if demanded is not None and not is_level(demanded):
        raise Invalid(
            "bad_assurance",
            f"minimum_assurance {str(demanded)[:40]!r} is not a level; the ladder is "
            + ", ".join(LADDER),
        )
    row.minimum_assurance = demanded
    audit.append(
        session,
        at=now,
        actor=actor,
        action="site.authorization",
        subject=f"site:{site_id}",
        details={
            "allowed_models": allowed,
            "may_store_controlled_weights": row.may_store_controlled_weights,
            "minimum_assurance": row.minimum_assurance,
        },
    )
    return {
        "site_id": site_id,
        "allowed_models": allowed,
        "may_store_controlled_weights": row.may_store_controlled_weights,
        "minimum_assurance": row.minimum_assurance,
    }


def request_attestation(
    session: Session,
    *,
    site: str | None,
    host: str | None,
    actor: str,
    now: datetime,
    ttl: timedelta,
) -> list[dict[str, Any]]:
    """On-demand attestation: one challenge per active host of a site (or one host), audited.

    Each host picks its nonce up at its next check-in and answers with a nonce-bound snapshot.
    """
    from contract import format_timestamp
    from server.store import repo

    site_id = repo.find_site(session, site).id if site else None
    out = []
    for h in repo.hosts_of(session, site_id=site_id, key_id=host):
        row = repo.issue_nonce(session, h.key_id, "request", now, ttl)
        out.append(
            {
                "host_id": h.key_id,
                "nonce": row.nonce,
                "expires_at": format_timestamp(row.expires_at),
            }
        )
    audit.append(
        session,
        at=now,
        actor=actor,
        action="attest.requested",
        subject=f"site:{site_id}" if site_id else f"host:{host}",
        details={"hosts": [c["host_id"] for c in out]},
    )
    return out


def challenge_answers(session: Session, nonces: list[str]) -> dict[str, bool]:
    """Which of these challenges have been answered with accepted evidence."""
    from server.store.models import Nonce

    rows = session.execute(select(Nonce.nonce, Nonce.used).where(Nonce.nonce.in_(nonces))).all()
    return {n: bool(u) for n, u in rows}


def policy_summary(policy: PolicySet) -> dict[str, Any]:
    return {
        "digest": policy.digest,
        "packs": [
            {
                "id": p.id,
                "version": p.version,
                "title": p.title,
                "status": p.status,
                "status_note": p.status_note,
                "effective": p.effective.isoformat(),
                "expires": p.expires.isoformat() if p.expires else None,
                "source": p.source,
            }
            for p in policy.packs
        ],
    }


def host_count(session: Session, site_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(HostState).where(HostState.site_id == site_id)
        )
        or 0
    )
