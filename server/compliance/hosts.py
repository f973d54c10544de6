"""Per-host judgement and host state, for the ingest pipeline.

:func:`judge_host` gives the host-scope findings of one accepted snapshot, judged against its
site's country, test flag, authorization and the model registry, and the host's contribution
to its site; :class:`JudgementMemo` answers it again while nothing it was judged from changed.
:func:`host_update`, :func:`plan_hosts`, :func:`write_hosts` and :func:`resync_findings` are the
host's rows in the ingest transaction: its new contribution (marked ``pending`` for settling)
and its findings history. They touch only this host's rows (docs: server/compliance/settle.py,
"Lock order").
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from contract import SnapshotV1
from contract.assurance import Level
from server.compliance.findings import findings_key, sync_findings
from server.compliance.registry import RegistryCache, model_registry
from server.findings import Finding, status_of
from server.policy import (
    HostContext,
    HostContribution,
    PolicySet,
)
from server.policy.facts import snapshot_digests
from server.store.compliance_models import (
    FindingRow,
    HostState,
)
from server.store.ingest import SiteTerms, site_terms
from server.store.pipeline import Pipeline
from server.store.sqllist import values_in

_HOST_STATE = cast(Table, HostState.__table__)
_FINDINGS = cast(Table, FindingRow.__table__)


@dataclass(frozen=True)
class HostJudgement:
    findings: tuple[Finding, ...]
    site_id: str
    org_id: str
    country: str
    on: date
    #: What the snapshot adds to its site's and organization's aggregates.
    contribution: HostContribution


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
    key_assurance: Level = "self-reported",
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
        key = (
            *JudgementMemo.key(policy, snapshot, site_id, terms, registry_generation, on),
            key_assurance,
        )
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
        org_id=terms.org_id,
        key_assurance=key_assurance,
        site_minimum_assurance=terms.minimum_assurance,
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
        assurance=bindparam("assurance"),
        # A snapshot without a quote keeps the last quote's counters as the bar to clear.
        quote_reset=func.coalesce(bindparam("quote_reset"), _HOST_STATE.c.quote_reset),
        quote_restart=func.coalesce(bindparam("quote_restart"), _HOST_STATE.c.quote_restart),
        quote_clock=func.coalesce(bindparam("quote_clock"), _HOST_STATE.c.quote_clock),
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
    assurance: Level | None = None,
    quote_counters: tuple[int, int, int] | None = None,
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
            "assurance": assurance,
            **(
                dict(
                    zip(
                        ("quote_reset", "quote_restart", "quote_clock"), quote_counters, strict=True
                    )
                )
                if quote_counters is not None
                else {"quote_reset": None, "quote_restart": None, "quote_clock": None}
            ),
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
