"""The ingest pipeline: envelope bytes in, a durably stored snapshot and its signed result out.

:class:`Ingest` is the orchestrator (the shape of python-tuf's ``ngclient/updater.py``): every
step reads "trusted state from the store -> hand the bytes to the pure core -> judge -> sign ->
persist", it catches only the domain errors it expects, and it knows nothing of HTTP. The API's
``POST /v1/snapshots`` (server/api/routes_snapshots.py) and the in-process benchmark drive the
same object.

1. :meth:`Ingest.appraise`: preparse (size, shape, signature inputs), read the trusted state in
   one lookup (host, chain head, nonce, site terms, a stored answer for this very envelope),
   appraise (:mod:`server.appraise`, pure), judge the host (CPU work, outside any write
   transaction), sign the result with the policy digest it was judged by, and build the rows.
   An envelope already accepted answers its stored result (idempotent delivery). Every refusal
   raises a :class:`~server.appraise.Rejected`; a signed one is recorded in the audit log first.
2. :meth:`Ingest.commit`: the accepted snapshots of a batch in ONE transaction (snapshot, chain
   head, spent nonce, inventory, host state, audit rows); when anything in it conflicts (a racing
   duplicate, a second child of a head, a spent nonce, a deadlock) each is retried alone, which
   settles its race as a lone commit would.
3. :meth:`Ingest.submit`: 1, then hand an accepted snapshot to this process's group committer
   (:mod:`server.ingest._groupcommit`); its future resolves after the commit, so an answer still
   means "durably stored".

Sites and organizations are judged later, when the site settles (:mod:`server.compliance`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from server.appraise import (
    Accepted,
    Fork,
    NonceReused,
    Rejected,
    VerifyConfig,
    appraise,
    preparse,
)
from server.compliance import hosts
from server.compliance.references import site_references
from server.compliance.registry import RegistryCache
from server.findings import Finding, condensed, status_of
from server.ingest._groupcommit import GroupCommitter
from server.ingest.metrics import Metrics
from server.log.entries import LOGGED_REJECTIONS, accepted_entry, entry_row, rejected_entry
from server.policy import PolicySet
from server.results import VerifierKey, sign_result
from server.store import audit, repo
from server.store.db import Database
from server.store.ingest import (
    AlreadyStored,
    HeadMoved,
    NonceSpent,
    Write,
    accepted_event,
    audit_rejection,
    lookup,
    prepare_write,
    send_accepted,
    snapshot_races,
)
from server.store.pipeline import Pipeline

__all__ = ["Ingest", "Outcome", "Pending"]

log = logging.getLogger("veu.ingest")


@dataclass(frozen=True)
class Outcome:
    """What the verifier answers for one envelope: its digest, status and signed result."""

    digest: str
    status: str
    result: str
    duplicate: bool

    def body(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "status": self.status,
            "duplicate": self.duplicate,
            "result": self.result,
        }


@dataclass(frozen=True)
class Pending:
    """An accepted snapshot, judged, its result signed and its rows built, waiting for its
    transaction (the writer thread only executes statements)."""

    accepted: Accepted
    raw: bytes
    status: str
    result: str
    write: Write
    host: hosts.HostUpdate
    event: audit.Event

    def outcome(self) -> Outcome:
        return Outcome(self.accepted.digest, self.status, self.result, False)


class Ingest:
    """One process's ingest pipeline over a database, a verifier key and the policy in force.

    ``policy`` is asked once per appraisal (a reload between two appraisals takes effect at the
    next one; one appraisal is judged by one pack set). ``models`` and ``judgements`` are this
    process's caches of the model registry and of each host's last judgement (both keyed so
    that any change of what they answer for is a miss: server/compliance/settle.py).
    """

    def __init__(
        self,
        db: Database,
        key: VerifierKey,
        *,
        policy: Callable[[], PolicySet],
        verifier_id: str,
        verify: VerifyConfig,
        metrics: Metrics,
        batch_max: int = 32,
        batch_wait_s: float = 0.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.key = key
        self.policy = policy
        self.verifier_id = verifier_id
        self.verify = verify
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.now = now or (lambda: datetime.now(UTC))
        #: Registered models by weight digest, kept per registry generation.
        self.models = RegistryCache()
        #: Each host's last judgement, answered again while its inputs are unchanged.
        self.judgements = hosts.JudgementMemo()
        self._committer: GroupCommitter[Pending, Outcome] | None = None
        self._committer_lock = threading.Lock()

    # ------------------------------------------------------------------ the pipeline

    def submit(self, data: bytes) -> Outcome | Future[Outcome]:
        """Appraise; an accepted snapshot goes to this process's group committer, and its
        future resolves after the commit. The committer knows an appraisal is running, and
        waits for it (briefly) before committing what is queued."""
        committer = self.committer()
        with committer.preparing():
            prepared = self.appraise(data)
            if isinstance(prepared, Pending):
                return committer.submit(prepared)
        return prepared

    def appraise(self, data: bytes) -> Outcome | Pending:
        """Everything before the write: the stored answer for an envelope already accepted,
        or the accepted snapshot with its judgement and signed result. Raises
        :class:`~server.appraise.Rejected` for every refusal."""
        policy = self.policy()  # one pack set for the whole appraisal, even if a reload happens
        try:
            parsed = preparse(data, self.verify)
            with self.db.lookup() as session:
                state = lookup(session, parsed.key_ids, parsed.digest, parsed.nonce)
                stored = (
                    Outcome(state.stored.digest, state.stored.status, state.stored.result, True)
                    if state.stored is not None
                    else None
                )
                now = self.now()
                references = (
                    site_references(session, state.host.site_id)
                    if state.host is not None and state.host.ak_public is not None
                    else None
                )
                verdict = appraise(
                    parsed,
                    host=state.host,
                    head=state.head,
                    nonce=state.nonce,
                    already_accepted=stored is not None,
                    now=now,
                    config=self.verify,
                    references=references,
                )
                if not isinstance(verdict, Accepted):
                    assert stored is not None
                    self.metrics.duplicates.inc()
                    return stored
                assert state.host is not None
                # Judged before the write transaction: CPU work (CEL) never holds a write lock.
                judged = hosts.judge_host(
                    session,
                    policy,
                    verdict.snapshot,
                    verdict.key_id,
                    state.host.site_id,
                    state.site,
                    models=self.models,
                    registry_generation=state.registry_generation,
                    memo=self.judgements,
                    key_assurance=verdict.assessment.key_level,
                )
        except Rejected as exc:
            self.record_rejection(exc, data)
            raise
        findings: tuple[Finding, ...] = verdict.findings + judged.findings
        status = status_of(findings)
        result = sign_result(
            self.key,
            verifier_id=self.verifier_id,
            issued_at=now,
            findings=condensed(findings),
            status=status,
            digest=verdict.digest,
            host_key_id=verdict.key_id,
            site_id=judged.site_id,
            seq=verdict.seq,
            nonce=verdict.nonce,
            policy_digest=policy.digest,
            assurance=verdict.assessment.level,
            sources={src.name: src.to_json() for src in verdict.assessment.sources},
        )
        leaf = accepted_entry(
            digest=verdict.digest,
            key_id=verdict.key_id,
            site_id=judged.site_id,
            seq=verdict.seq,
            result=result,
            at=now,
        )
        return Pending(
            accepted=verdict,
            raw=data,
            status=status,
            result=result,
            write=prepare_write(
                verdict,
                site_id=judged.site_id,
                head=state.head,
                raw=data,
                status=status,
                findings=findings,
                result=result,
                now=now,
                inventory_digest=state.inventory_digest,
                log_row=entry_row("accepted", verdict.digest, leaf, now),
            ),
            host=hosts.host_update(
                key_id=verdict.key_id,
                snapshot=verdict.snapshot,
                digest=verdict.digest,
                judgement=judged,
                findings=findings,
                now=now,
                assurance=verdict.assessment.level,
                quote_counters=verdict.quote_counters,
            ),
            event=accepted_event(verdict, status=status, findings=findings, now=now),
        )

    def commit(self, batch: Sequence[Pending]) -> list[Outcome | BaseException]:
        """Commit accepted snapshots: all in one transaction when nothing conflicts, else each
        alone. Answers one outcome, or the exception that refused it (a
        :class:`~server.appraise.Rejected` for a lost race), per item, in order.

        Any failure of the whole (a racing duplicate, a second child of a head, a spent nonce,
        a deadlock) rolls it all back, and each snapshot is then committed in its own
        transaction; so are batches that hold two snapshots of one host (they race each other).
        """
        if len(batch) > 1 and len({item.accepted.key_id for item in batch}) == len(batch):
            try:
                with self.db.write() as session:
                    _write(session, batch)
            except Exception as exc:
                self.metrics.batch_retries.inc()
                log.info(
                    "group commit of %d snapshots retried one by one (%s)",
                    len(batch),
                    type(exc).__name__,
                )
            else:
                self.metrics.accepted.inc(len(batch))
                return [item.outcome() for item in batch]
        return [self._commit_one(item) for item in batch]

    def record_rejection(self, exc: Rejected, data: bytes) -> None:
        """Count a refusal; a signed one (the key is enrolled) is a security event in the
        audit log, written before the caller answers."""
        self.metrics.rejected.labels(exc.code, str(exc.authenticated).lower()).inc()
        if exc.authenticated and exc.key_id:
            digest = None
            with contextlib.suppress(Rejected):
                digest = preparse(data, self.verify).digest
            now = self.now()
            log_row = None
            if digest is not None and exc.code in LOGGED_REJECTIONS:
                leaf = rejected_entry(code=exc.code, digest=digest, key_id=exc.key_id, at=now)
                log_row = entry_row("rejected", digest, leaf, now)
            with self.db.write() as session:
                audit_rejection(
                    session,
                    key_id=exc.key_id,
                    code=exc.code,
                    detail=exc.detail,
                    digest=digest,
                    now=now,
                    log_row=log_row,
                )
            log.warning(
                "security event: rejected signed evidence code=%s key=%s", exc.code, exc.key_id
            )
        else:
            log.info("rejected unauthenticated evidence code=%s", exc.code)

    # ------------------------------------------------------------------ the group committer

    def committer(self) -> GroupCommitter[Pending, Outcome]:
        """This process's group committer of accepted snapshots (built on first use)."""
        with self._committer_lock:
            if self._committer is None:
                self._committer = GroupCommitter(
                    self.commit,
                    max_batch=self.batch_max,
                    linger_s=self.batch_wait_s,
                    name="veu-ingest-commit",
                    on_batch=self.metrics.commit_batch.observe,
                )
            return self._committer

    def close(self) -> None:
        """Stop the group committer once it has written what is queued."""
        with self._committer_lock:
            if self._committer is not None:
                self._committer.close()
                self._committer = None

    def _commit_one(self, item: Pending) -> Outcome | BaseException:
        """One accepted snapshot in its own transaction; a lost race answers as the race
        ended."""
        accepted = item.accepted
        try:
            try:
                with self.db.write() as session:
                    _write(session, [item])
            except (AlreadyStored, HeadMoved):
                # A racing worker committed first. Which constraint fires first is up to the
                # database, so ask: if this very envelope is stored, answer its result;
                # otherwise the head moved.
                with self.db.read() as session:
                    row = repo.snapshot_by_digest(session, accepted.digest)
                    if row is not None:
                        self.metrics.duplicates.inc()
                        return Outcome(row.digest, row.status, row.result, True)
                raise Fork(
                    f"seq {accepted.seq} lost a race: another snapshot of this host was accepted "
                    "as the child of the same head first",
                    authenticated=True,
                    key_id=accepted.key_id,
                ) from None
            except NonceSpent:
                raise NonceReused(
                    f"nonce {str(accepted.nonce)[:40]} was consumed by a concurrent snapshot",
                    authenticated=True,
                    key_id=accepted.key_id,
                ) from None
        except Rejected as exc:
            try:
                self.record_rejection(exc, item.raw)
            except Exception as failure:  # its audit row could not be written: this fails
                return failure
            return exc
        except Exception as exc:  # the database is gone, say: this request fails, the next may not
            return exc
        self.metrics.accepted.inc()
        return item.outcome()


def _write(session: Session, items: Sequence[Pending]) -> None:
    """Snapshots, chain heads, nonces, inventories, host states and audit rows of accepted
    snapshots of distinct hosts, in host order (two workers' batches lock host rows in one
    order), the audit rows last with one claim of the audit head.

    Four round trips on PostgreSQL whatever the batch holds (server.store.pipeline): the
    evidence rows with the hosts' stored states; the host states with the audit claim (the
    claim waits for the findings' sync when a host's open findings changed); the audit rows;
    the commit.
    """
    ordered = sorted(items, key=lambda item: item.accepted.key_id)
    updates = [item.host for item in ordered]
    events = [item.event for item in ordered]
    pipe = Pipeline(session)
    with snapshot_races(pipe), pipe.batch():
        sent = send_accepted(pipe, [item.write for item in ordered])
        prior = hosts.host_states(pipe, updates)
    sent.check()
    plan = hosts.plan_hosts(updates, prior.fetchall())
    with pipe.batch():
        hosts.write_hosts(pipe, plan)
        claimed = None if plan.resync else audit.claim(pipe, len(events))
    if claimed is None:
        hosts.resync_findings(session, plan)
        session.flush()
        claimed = audit.claim(pipe, len(events))
    audit.append_claimed(pipe, events, claimed.fetchone())
