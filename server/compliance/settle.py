"""The compliance shell: trusted state from the database in, policy judgement out, recorded.

The policy engine (:mod:`server.policy`) is pure; this module feeds it what the store knows and
writes down what it said. Judgement is split in two so that ingest never waits on a site-wide
or organization-wide lock:

1. In the ingest transaction, per host (server/compliance/hosts.py): ``judge_host`` (the
   host-scope findings of one accepted snapshot, judged against its site's country, test flag,
   authorization and the model registry) and ``record_hosts`` (the host's new contribution and
   its findings history; it only touches this host's rows and marks the row ``pending``).
2. Settling, per site (:func:`settle_site`): under the site's row lock, every pending host's
   ``contribution - applied`` is folded into the site aggregate (a delta, O(chip models) per
   host, never a rescan), duplicate identities of those hosts are looked up, stale hosts come
   from an index range scan, the site is judged and its findings synchronized; then the
   organization is judged under its own lock, its aggregate derived from its sites' aggregates
   (O(sites)). Settling runs in every worker's background task about once a second
   (:func:`settle_pending`), before any compliance read (so a reader never sees a status older
   than the evidence already acknowledged), and for the periodic re-judgement of every site
   (hosts going stale, shipped chips never seen).

Lock order: ingest takes only its hosts' rows (a group commit takes several hosts' rows, in key
order), then the audit head; settling takes site state, then organization state, then the
pending host rows in key order. No cycle, so no deadlock; and no lock is shared by the ingests
of two different hosts except the audit head at the very end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Table, bindparam, delete, select, true, update
from sqlalchemy.orm import Session

from server.compliance.assurance import site_level
from server.compliance.findings import sync_findings
from server.compliance.ledger_facts import ledger_facts, shipped_units
from server.findings import Finding, status_of
from server.policy import (
    HostContribution,
    OrgAggregate,
    OrgFacts,
    PolicySet,
    SiteAggregate,
    SiteFacts,
)
from server.store.compliance_models import (
    FindingRow,
    HostState,
    OrgState,
    SiteAuthorization,
    SiteState,
)
from server.store.models import Host, InventoryAccelerator, Organization, Site

if TYPE_CHECKING:
    from server.store.db import Database

log = logging.getLogger("veu.compliance")

_SITES = cast(Table, Site.__table__)
_HOST_STATE = cast(Table, HostState.__table__)
_SITE_STATE = cast(Table, SiteState.__table__)
_INVENTORY = cast(Table, InventoryAccelerator.__table__)


@dataclass(frozen=True)
class ComplianceConfig:
    #: A host whose last accepted snapshot is older than this is stale (default 3 x 15 min).
    max_host_age: timedelta = timedelta(minutes=45)


def _authorization(session: Session, site_id: str) -> SiteAuthorization | None:
    return session.get(SiteAuthorization, site_id)


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
    session: Session,
    model: type[_State],
    key: str,
    now: datetime,
    empty: dict[str, Any],
    *,
    skip_locked: bool = False,
) -> _State | None:
    """The aggregate row of one site or organization, locked until commit (created if new).

    ``skip_locked``: answer None instead of waiting when another transaction holds the row
    (the background settler skips a site another worker is settling right now).
    """
    column = model.site_id if model is SiteState else model.org_id  # type: ignore[attr-defined]
    query = select(model).where(column == key)
    row = session.scalar(query.with_for_update(skip_locked=skip_locked))
    if row is None:
        if skip_locked and session.scalar(select(column).where(column == key)) is not None:
            return None  # it exists: someone else holds it
        id_field = "site_id" if model is SiteState else "org_id"
        fresh = model(
            **{id_field: key},
            aggregate=json.dumps(empty),
            status="none",
            policy_digest=None,
            updated_at=now,
        )
        _ensure(session, fresh)
        row = session.scalar(query.with_for_update().execution_options(populate_existing=True))
        assert row is not None
    return row


_PENDING_OF_SITE = select(
    _HOST_STATE.c.key_id,
    _HOST_STATE.c.contribution,
    _HOST_STATE.c.applied,
    _HOST_STATE.c.revoked,
).where(_HOST_STATE.c.site_id == bindparam("site"), _HOST_STATE.c.pending == true())
# Read without a row lock (the site row's lock already keeps other settlers out). What was folded
# is recorded at the very end of the transaction: ``applied`` = the contribution read, and the
# row stays pending if an ingest replaced the contribution meanwhile (READ COMMITTED re-checks
# the row after waiting for that ingest). So an ingest of a host of this site never waits for
# the site's judgement, only for this final UPDATE and the commit.
_MARK_SETTLED = (
    update(_HOST_STATE)
    .where(_HOST_STATE.c.key_id == bindparam("k"))
    .values(
        applied=bindparam("folded"),
        pending=_HOST_STATE.c.contribution != bindparam("folded"),
    )
)


def settle_site(
    session: Session,
    policy: PolicySet,
    site_id: str,
    now: datetime,
    config: ComplianceConfig,
    *,
    skip_locked: bool = False,
) -> list[Finding] | None:
    """Fold the site's pending host contributions into its aggregate and judge the site and its
    organization. Returns the site's findings, or None when ``skip_locked`` found the site busy.
    """
    site = session.get(Site, site_id)
    if site is None:
        raise LookupError(site_id)
    org = session.get(Organization, site.org_id)
    if org is None:
        raise LookupError(f"organization {site.org_id} vanished")
    state = _locked_state(
        session, SiteState, site.id, now, SiteAggregate().to_json(), skip_locked=skip_locked
    )
    if state is None:
        return None
    conn = session.connection()
    agg = SiteAggregate.from_json(json.loads(state.aggregate))
    settled: list[str] = []
    gone: list[str] = []
    folded: list[dict[str, str]] = []
    for key_id, contribution, applied, revoked in conn.execute(_PENDING_OF_SITE, {"site": site.id}):
        old = HostContribution.from_json(json.loads(applied)) if applied else None
        new = None if revoked else HostContribution.from_json(json.loads(contribution))
        agg.apply(old, new)
        if revoked:
            gone.append(key_id)
        else:
            settled.append(key_id)
            folded.append({"k": key_id, "folded": contribution})
    if settled or gone:
        state.aggregate = json.dumps(agg.to_json())
    duplicates = duplicate_identities(session, settled)
    findings = _judge_site(session, policy, site, state, agg, now, config, duplicates, settled)
    _judge_org(session, policy, org, now)
    if folded:
        # In key order, as the group commit of ingest writes host rows (server/api/
        # routes_snapshots.py, write_batch): two transactions locking host rows in one order
        # cannot deadlock.
        conn.execute(_MARK_SETTLED, sorted(folded, key=lambda row: row["k"]))
    for chunk in _chunks(sorted(gone)):
        conn.execute(delete(_HOST_STATE).where(_HOST_STATE.c.key_id.in_(chunk)))
    return findings


def refresh_site(
    session: Session, policy: PolicySet, site_id: str, now: datetime, config: ComplianceConfig
) -> list[Finding]:
    """Re-judge a site (and its organization) now: pending hosts, staleness, ledger."""
    found = settle_site(session, policy, site_id, now, config)
    assert found is not None
    return found


def pending_sites(session: Session, limit: int = 10_000) -> list[str]:
    """Sites with host contributions not yet folded into their aggregate (index scan)."""
    return list(
        session.scalars(
            select(_HOST_STATE.c.site_id)
            .where(_HOST_STATE.c.pending == true())
            .group_by(_HOST_STATE.c.site_id)
            .order_by(_HOST_STATE.c.site_id)
            .limit(limit)
        )
    )


def settle_pending(
    db: Database,
    policy: PolicySet,
    config: ComplianceConfig,
    now: Callable[[], datetime],
    *,
    skip_locked: bool = False,
) -> int:
    """Settle every site with pending hosts, each in its own short transaction.

    Several workers may run it at once: with ``skip_locked`` a site being settled elsewhere is
    skipped (its settler picks up whatever arrived meanwhile on its next round). A site that
    fails to settle (a database error, a deadlock victim) is logged and left pending for the next
    round; the others go on, and a compliance read that settled first still answers. Returns the
    number of sites settled here.
    """
    with db.read() as session:
        site_ids = pending_sites(session)
    done = 0
    for site_id in site_ids:
        try:
            with db.write() as session:
                found = settle_site(
                    session, policy, site_id, now(), config, skip_locked=skip_locked
                )
        except LookupError:
            continue
        except Exception:
            log.exception("settling site %s failed; it stays pending for the next round", site_id)
            continue
        done += found is not None
    return done


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def duplicate_identities(session: Session, key_ids: Sequence[str]) -> list[tuple[str, list[str]]]:
    """UUIDs or serials reported by one of ``key_ids`` that another host also reports.

    Both are checked: a cloned board may keep its serial under a new UUID, or the reverse.
    Two indexed lookups per batch of hosts (their identities by key id, then other holders by
    identity), whatever the size of the fleet. Deliberately not one self-join: SQLite's planner
    may drive such a join from the other side and scan the whole inventory.
    """
    conn = session.connection()
    mine: dict[str, set[str]] = {}
    for chunk in _chunks(sorted(key_ids)):
        for key_id, uuid_, serial in conn.execute(
            select(_INVENTORY.c.key_id, _INVENTORY.c.uuid, _INVENTORY.c.serial).where(
                _INVENTORY.c.key_id.in_(chunk)
            )
        ):
            if uuid_:
                mine.setdefault(f"uuid:{uuid_}", set()).add(key_id)
            if serial:
                mine.setdefault(f"serial:{serial}", set()).add(key_id)
    found: dict[str, set[str]] = {}
    for kind in ("uuid", "serial"):
        column = _INVENTORY.c[kind]
        values = sorted(i.split(":", 1)[1] for i in mine if i.startswith(f"{kind}:"))
        for chunk in _chunks(values):
            for key_id, value in conn.execute(
                select(_INVENTORY.c.key_id, column).where(column.in_(chunk))
            ):
                ident = f"{kind}:{value}"
                holders = found.setdefault(ident, set(mine[ident]))
                holders.add(key_id)
    return [(ident, sorted(hosts)) for ident, hosts in sorted(found.items()) if len(hosts) > 1]


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
    key_ids: Sequence[str],
) -> list[Finding]:
    auth = _authorization(session, site.id)
    allowed = json.loads(auth.allowed_models) if auth and auth.allowed_models else None
    known = {ident for ident, _ in duplicates}
    for ident, hosts in _open_duplicates_elsewhere(session, site.id):
        if ident not in known:
            duplicates.append((ident, hosts))
    ledger = ledger_facts(session, site, key_ids, now)
    org = session.get(Organization, site.org_id)
    facts = SiteFacts(
        site_id=site.id,
        country=site.country,
        authorized_tpp=int(site.authorized_tpp),
        aggregate=agg,
        allowed_models=allowed,
        stale_hosts=stale_hosts(session, site.id, now, config.max_host_age),
        host_count=agg.hosts,
        duplicate_accelerators=duplicates,
        has_ledger=ledger.has_ledger,
        ledger_unseen=list(ledger.unseen),
        ledger_reported=list(ledger.reported),
        org_id=site.org_id,
        site_name=site.name,
        org_type=org.veu if org is not None else "",
        org_hq_country=org.hq_country if org is not None else "",
        org_parent_hq_country=(org.parent_hq_country or org.hq_country) if org is not None else "",
        assurance=site_level(session, site.id),
    )
    findings = policy.evaluate_site(facts, now.date())
    state.status = status_of(findings)
    state.policy_digest = policy.digest
    state.updated_at = now
    sync_findings(
        session, "site", site.id, site_id=site.id, org_id=site.org_id, findings=findings, now=now
    )
    return findings


def org_aggregate(session: Session, org_id: str) -> OrgAggregate:
    """The organization's installed 3A090 TPP per country, summed from its sites' aggregates."""
    agg = OrgAggregate()
    rows = session.connection().execute(
        select(_SITES.c.country, _SITE_STATE.c.aggregate)
        .select_from(_SITES.join(_SITE_STATE, _SITE_STATE.c.site_id == _SITES.c.id))
        .where(_SITES.c.org_id == org_id)
    )
    for country, text in rows:
        tpp = int(json.loads(text).get("tpp_3a090", 0))
        if tpp:
            agg.tpp_by_country[country] = agg.tpp_by_country.get(country, 0) + tpp
    return agg


def _judge_org(session: Session, policy: PolicySet, org: Organization, now: datetime) -> None:
    """Judge the organization under its row lock (taken before its sites' aggregates are read,
    so two sites settling at once judge it one after the other, the second seeing both)."""
    state = _locked_state(session, OrgState, org.id, now, OrgAggregate().to_json())
    assert state is not None
    agg = org_aggregate(session, org.id)
    cn_mo, us = shipped_units(session, org.id)
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
        site_countries=tuple(
            sorted(set(session.scalars(select(Site.country).where(Site.org_id == org.id))))
        ),
        cn_mo_shipped_units=cn_mo,
        us_shipped_units=us,
    )
    findings = policy.evaluate_org(facts, now.date())
    state.aggregate = json.dumps(agg.to_json())
    state.status = status_of(findings)
    state.policy_digest = policy.digest
    state.updated_at = now
    sync_findings(
        session, "organization", org.id, site_id=None, org_id=org.id, findings=findings, now=now
    )


# --------------------------------------------------------------------------- findings history
