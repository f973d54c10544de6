"""The compliance shell: trusted state from the database in, policy judgement out, recorded.

The policy engine (:mod:`server.policy`) is pure; this module feeds it what the store knows and
writes down what it said. Judgement is split in two so that ingest never waits on a site-wide
or organization-wide lock:

1. In the ingest transaction, per host: :func:`judge_host` (the host-scope findings of one
   accepted snapshot, judged against its site's country, test flag, authorization and the model
   registry) and :func:`record_hosts` (the host's new contribution and its findings history; it
   only touches this host's rows and marks the row ``pending``).
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

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, true, update
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
from server.policy.facts import snapshot_digests
from server.store.compliance_models import (
    FindingRow,
    HostState,
    ModelFile,
    OrgState,
    RegisteredModel,
    RegistryState,
    Shipment,
    ShipmentItem,
    SiteAuthorization,
    SiteState,
)
from server.store.ingest import SiteTerms, db_text, site_terms
from server.store.models import Host, InventoryAccelerator, Organization, Site
from server.store.pipeline import Pipeline
from server.store.sqllist import values_in

if TYPE_CHECKING:
    from server.db import Database

log = logging.getLogger("veu.compliance")

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
    site_id: str
    org_id: str
    country: str
    on: date
    #: What the snapshot adds to its site's and organization's aggregates.
    contribution: HostContribution


# --------------------------------------------------------------------------- host scope


_MODEL_FILES = cast(Table, ModelFile.__table__)
_MODELS = cast(Table, RegisteredModel.__table__)
#: The registered models of a set of digests, built once (the list bound as one parameter).
_MODELS_OF_DIGESTS = (
    select(_MODEL_FILES.c.digest, _MODELS)
    .select_from(_MODEL_FILES.join(_MODELS, _MODELS.c.id == _MODEL_FILES.c.model_id))
    .where(values_in(_MODEL_FILES.c.digest, "digests"))
)


def model_registry(session: Session, digests: Iterable[str]) -> ModelRegistry:
    wanted = sorted({d.lower() for d in digests if d})
    if not wanted:
        return ModelRegistry()
    registry = ModelRegistry()
    registry.by_digest.update(_registered(session, wanted))
    return registry


def _registered(session: Session, digests: Sequence[str]) -> dict[str, ModelRecord]:
    return {
        row.digest: _model_record(row, (row.digest,))
        for row in session.connection().execute(_MODELS_OF_DIGESTS, {"digests": digests})
    }


_REGISTRY_STATE = cast(Table, RegistryState.__table__)


def bump_registry(session: Session) -> None:
    """Mark the model registry changed (call in the transaction that changes it)."""
    session.execute(
        update(_REGISTRY_STATE)
        .where(_REGISTRY_STATE.c.id == 1)
        .values(generation=_REGISTRY_STATE.c.generation + 1)
    )


class RegistryCache:
    """One process's memory of the model registry's answers (registered or not) per weight digest.

    Every snapshot's judgement asks the registry about each of the host's weight files; hosts
    report the same files snapshot after snapshot, so a per-snapshot query mostly re-reads the
    same rows. The answers are kept as long as the registry's generation (read with the
    snapshot's lookup, no extra query) is the one they were read under; any change empties the
    cache. Bounded: a host reporting endless new digests empties it; it never holds more than
    ``max_entries`` plus one snapshot's digests.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._known: dict[str, ModelRecord | None] = {}

    def registry(
        self, session: Session, digests: Iterable[str], generation: int | None
    ) -> ModelRegistry:
        """The registry's records of ``digests``; ``generation``: read in this transaction
        (None, e.g. a database not migrated yet: ask the database every time)."""
        wanted = sorted({d.lower() for d in digests if d})
        if generation is None:
            return model_registry(session, wanted)
        with self._lock:
            if generation != self._generation:
                self._generation, self._known = generation, {}
            known = self._known
        answers = {d: known[d] for d in wanted if d in known}
        missing = [d for d in wanted if d not in answers]
        if missing:
            found = _registered(session, missing)
            fetched = {d: found.get(d) for d in missing}
            answers.update(fetched)
            with self._lock:
                # Read under this generation: kept only if it is still the current one.
                if self._generation == generation:
                    if len(self._known) + len(fetched) > self.max_entries:
                        self._known = {}
                    self._known.update(fetched)
        registry = ModelRegistry()
        registry.by_digest.update({d: r for d, r in answers.items() if r is not None})
        return registry


def _model_record(model: Any, digests: tuple[str, ...]) -> ModelRecord:
    """From a :class:`RegisteredModel` or a row with the same column names."""
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


_SITES = cast(Table, Site.__table__)
_HOST_STATE = cast(Table, HostState.__table__)
_FINDINGS = cast(Table, FindingRow.__table__)
_SITE_STATE = cast(Table, SiteState.__table__)
_INVENTORY = cast(Table, InventoryAccelerator.__table__)


#: The parts of a snapshot that host judgement reads (server.policy.engine.host_variables and
#: PolicySet.contribution): a snapshot that differs from another only outside them (its seq,
#: prev, nonce, time of day, uptime, posture) is judged the same.
_JUDGED_FACTS: dict[str, Any] = {
    "agent": {"key_id"},
    "site_id": True,
    "host": {"hostname"},
    "accelerators": True,
    "storage": True,
    "errors": True,
}


class JudgementMemo:
    """The last host judgement of each host in this process, reused while none of its inputs
    changed.

    A host's judgement (its host-scope findings and its contribution to the site) is a pure
    function of the facts of the snapshot that the policy reads (:data:`_JUDGED_FACTS`), the day
    the snapshot was collected, the site's terms, the model registry's answers for its weight
    digests (pinned by the registry's generation) and the policy files (pinned by their digest).
    A fleet reports the same facts snapshot after snapshot, so each host keeps one entry: the
    key of those inputs and the judgement they gave. Any change of any input is a miss and is
    judged afresh. Without a registry generation (a database not migrated yet) nothing is kept.

    Bounded by ``max_entries`` hosts (emptied when full, like :class:`RegistryCache`). An entry
    holds about 2 KB (tracemalloc over 2,000 hosts of 8 GPUs and 4 weight files), so the default
    bound is ~200 MB per worker at most; a fleet of 10,000 hosts takes ~20 MB.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._last: dict[str, tuple[tuple[Any, ...], HostJudgement]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        policy: PolicySet,
        snapshot: SnapshotV1,
        site_id: str,
        terms: SiteTerms,
        generation: int,
        on: date,
    ) -> tuple[Any, ...]:
        facts = snapshot.__pydantic_serializer__.to_json(snapshot, include=_JUDGED_FACTS)
        return (policy.digest, generation, site_id, terms, on, hashlib.sha256(facts).digest())

    def get(self, key_id: str, key: tuple[Any, ...]) -> HostJudgement | None:
        entry = self._last.get(key_id)
        if entry is not None and entry[0] == key:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key_id: str, key: tuple[Any, ...], judgement: HostJudgement) -> None:
        with self._lock:
            if key_id not in self._last and len(self._last) >= self.max_entries:
                self._last = {}
            self._last[key_id] = (key, judgement)


def judge_host(
    session: Session,
    policy: PolicySet,
    snapshot: SnapshotV1,
    key_id: str,
    site_id: str,
    terms: SiteTerms | None = None,
    *,
    models: RegistryCache | None = None,
    registry_generation: int | None = None,
    memo: JudgementMemo | None = None,
) -> HostJudgement:
    """Host-scope findings and contribution. ``terms``: the site's facts if the caller already
    read them (ingest reads them with the host in one query); otherwise one query here.
    ``models``: this process's registry cache, valid for ``registry_generation`` (ingest reads
    it with the host); without them the registry is queried. ``memo``: this process's last
    judgement of each host, answered again when nothing it was judged from changed."""
    if terms is None:
        terms = site_terms(session, site_id)
        if terms is None:
            raise LookupError(f"site {site_id} vanished")
    on = snapshot.collected_at_datetime().date()
    key = None
    if memo is not None and registry_generation is not None:
        key = JudgementMemo.key(policy, snapshot, site_id, terms, registry_generation, on)
        known = memo.get(key_id, key)
        if known is not None:
            return known
    digests = snapshot_digests(snapshot)
    ctx = HostContext(
        site_id=site_id,
        site_country=terms.country,
        site_is_test=terms.test_site,
        site_may_store_controlled_weights=terms.may_store_controlled_weights,
        models=(
            models.registry(session, digests, registry_generation)
            if models is not None
            else model_registry(session, digests)
        ),
        host_id=key_id,
    )
    findings = tuple(policy.evaluate_host(snapshot, ctx, on))
    judged = HostJudgement(
        findings,
        site_id,
        terms.org_id,
        terms.country,
        on,
        policy.contribution(snapshot, on, country=terms.country),
    )
    if memo is not None and key is not None:
        memo.put(key_id, key, judged)
    return judged


_HOST_STATE_INSERT = insert(_HOST_STATE)
_HOST_STATES_OF = select(_HOST_STATE.c.key_id, _HOST_STATE.c.findings_key).where(
    values_in(_HOST_STATE.c.key_id, "keys")
)
_HOST_STATE_UPDATE = (
    update(_HOST_STATE)
    .where(_HOST_STATE.c.key_id == bindparam("k"))
    .values(
        contribution=bindparam("contribution"),
        collected_at=bindparam("collected_at"),
        status=bindparam("status"),
        snapshot_digest=bindparam("snapshot_digest"),
        accelerators=bindparam("accelerators"),
        tpp=bindparam("tpp"),
        findings_key=bindparam("findings_key"),
        pending=True,
    )
)
_HOST_FINDINGS_SEEN = (
    update(_FINDINGS)
    .where(
        _FINDINGS.c.scope == "host",
        _FINDINGS.c.scope_id == bindparam("k"),
        _FINDINGS.c.is_open.is_(True),
    )
    .values(last_seen_at=bindparam("at"))
)


def findings_key(findings: Sequence[Finding]) -> str:
    """Names a set of open findings as :func:`sync_findings` would store them."""
    rows = sorted(
        (
            *_key(f),
            f.severity,
            db_text(f.message, 4000) or "",
            db_text(f.seen, 4000) or "",
            db_text(f.expected, 4000) or "",
        )
        for f in findings
        if f.severity != "info"
    )
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class HostUpdate:
    """One accepted snapshot's effect on its host's compliance rows, built by
    :func:`host_update` before the write transaction."""

    key_id: str
    site_id: str
    org_id: str
    findings: Sequence[Finding]
    now: datetime
    #: The ``host_state`` columns this snapshot sets.
    values: dict[str, Any]


def host_update(
    *,
    key_id: str,
    snapshot: SnapshotV1,
    digest: str,
    judgement: HostJudgement,
    findings: Sequence[Finding],
    now: datetime,
) -> HostUpdate:
    """The host's new contribution (pending until its site settles) and findings key."""
    new = judgement.contribution
    return HostUpdate(
        key_id=key_id,
        site_id=judgement.site_id,
        org_id=judgement.org_id,
        findings=findings,
        now=now,
        values={
            "contribution": json.dumps(new.to_json()),
            "collected_at": snapshot.collected_at_datetime(),
            "status": status_of(list(findings)),
            "snapshot_digest": digest,
            "accelerators": len(snapshot.accelerators),
            "tpp": sum(m.tpp for m in new.models.values()),
            "findings_key": findings_key(findings),
        },
    )


def record_hosts(session: Session, updates: Sequence[HostUpdate]) -> None:
    """Each host's new contribution and findings history.

    Touches only these hosts' rows, each statement once for all of them. An unchanged set of
    open findings costs a ``last_seen_at`` update instead of reading and comparing every open
    row. One update per host: a group commit never holds two snapshots of one host. (Ingest
    runs the same steps, pipelined with its other statements: server.store.ingest.)
    """
    if not updates:
        return
    pipe = Pipeline(session)
    plan = plan_hosts(updates, host_states(pipe, updates).fetchall())
    write_hosts(pipe, plan)
    resync_findings(session, plan)


def host_states(pipe: Pipeline, updates: Sequence[HostUpdate]) -> Any:
    """A cursor of these hosts' stored ``(key_id, findings_key)`` (for :func:`plan_hosts`)."""
    return pipe.execute(_HOST_STATES_OF, {"keys": [u.key_id for u in updates]})


@dataclass(frozen=True)
class HostPlan:
    """What :func:`write_hosts` and :func:`resync_findings` do for a set of host updates."""

    inserts: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    seen: list[dict[str, Any]]
    #: Hosts whose open findings changed (or that are new): their findings rows are synced.
    resync: list[HostUpdate]


def plan_hosts(updates: Sequence[HostUpdate], prior_rows: Sequence[Sequence[Any]]) -> HostPlan:
    prior = {row[0]: row[1] for row in prior_rows}
    plan = HostPlan([], [], [], [])
    for u in updates:
        if u.key_id not in prior:
            plan.inserts.append(
                {
                    "key_id": u.key_id,
                    "site_id": u.site_id,
                    "org_id": u.org_id,
                    "applied": None,
                    "pending": True,
                    "revoked": False,
                    **u.values,
                }
            )
            plan.resync.append(u)
            continue
        plan.changes.append({"k": u.key_id, **u.values})
        if prior[u.key_id] == u.values["findings_key"]:
            plan.seen.append({"k": u.key_id, "at": u.now})
        else:
            plan.resync.append(u)
    return plan


def write_hosts(pipe: Pipeline, plan: HostPlan) -> None:
    """The ``host_state`` rows of the plan, and ``last_seen_at`` of unchanged open findings."""
    with pipe.batch():
        if plan.inserts:
            pipe.executemany(_HOST_STATE_INSERT, plan.inserts)
        if plan.changes:
            pipe.executemany(_HOST_STATE_UPDATE, plan.changes)
        if plan.seen:
            pipe.executemany(_HOST_FINDINGS_SEEN, plan.seen)


def resync_findings(session: Session, plan: HostPlan) -> None:
    """Open, refresh and close the findings rows of the plan's hosts whose findings changed."""
    for u in plan.resync:
        sync_findings(
            session,
            "host",
            u.key_id,
            site_id=u.site_id,
            org_id=u.org_id,
            findings=u.findings,
            now=u.now,
        )


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
    findings.extend(ledger_findings(session, site, key_ids, now, config))
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
    state.aggregate = json.dumps(agg.to_json())
    state.status = status_of(findings)
    state.policy_digest = policy.digest
    state.updated_at = now
    sync_findings(
        session, "organization", org.id, site_id=None, org_id=org.id, findings=findings, now=now
    )


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
    session: Session, site: Site, key_ids: Sequence[str], now: datetime, config: ComplianceConfig
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
    for key_id in key_ids:
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
    """A revoked host stops counting: its contribution leaves the site total when the site next
    settles (the row is marked, not locked site-wide here), and its open findings close."""
    session.execute(
        update(_HOST_STATE)
        .where(_HOST_STATE.c.key_id == key_id)
        .values(revoked=True, pending=True, accelerators=0, tpp=0)
    )
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
