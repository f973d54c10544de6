"""Retention: bound the growth of the database without losing what a verdict rests on.

Two settings, each in days (``None`` = keep forever, the default):

- **raw envelopes** (``--envelopes-days N``): a snapshot received more than N days ago loses its
  raw envelope bytes — by far the largest column (about 9 KB for an 8-GPU host with 4 weight
  files). The row stays: digest, host, seq, prev, times, status, findings and the signed
  attestation result, so the chain, the history and every verdict remain, and ``pruned_at`` says
  when the bytes went (``envelope`` becomes empty; the column is NOT NULL). The latest accepted
  snapshot of each host (its chain head) is always kept whole, however old, so the current state
  of every host can still be re-verified from its evidence. Keep N at least as long as your
  record-keeping obligation for raw evidence (e.g. 5 years for export records, 15 CFR 762.6);
  pruning is for deployments that archive envelopes elsewhere first (``GET /v1/snapshots/{d}``).
- **derived rows** (``--findings-days N``): findings closed more than N days ago are deleted.
  Open findings are never deleted, whatever their age.

Both run in batches (``batch`` rows per transaction, default 1,000), so no long lock is held and
ingest goes on meanwhile; each batch commits on its own, so an interrupted run keeps what it did
and the next run continues. One audit row records each run (counts and settings).

On SQLite the freed pages are reused by new rows but the file does not shrink until ``VACUUM``;
on PostgreSQL autovacuum reclaims the space for reuse (``VACUUM FULL`` returns it to the OS).

``veu-server retention apply --envelopes-days N --findings-days N`` (server/cli/retention.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update

from server.store.compliance_models import FindingRow
from server.store.db import Database
from server.store.models import ChainHead, Snapshot


@dataclass(frozen=True)
class RetentionResult:
    envelopes_pruned: int
    envelope_bytes_dropped: int
    findings_deleted: int
    batches: int

    def to_json(self) -> dict[str, int]:
        return {
            "envelopes_pruned": self.envelopes_pruned,
            "envelope_bytes_dropped": self.envelope_bytes_dropped,
            "findings_deleted": self.findings_deleted,
            "batches": self.batches,
        }


def prune_envelopes(
    db: Database, older_than: datetime, now: datetime, *, batch: int = 1000, max_batches: int = 0
) -> tuple[int, int, int]:
    """Drop the envelope bytes of snapshots received before ``older_than`` (heads kept).

    Returns (snapshots pruned, envelope bytes dropped, batches). ``max_batches`` 0 = until done.
    """
    heads = select(ChainHead.digest).where(ChainHead.digest.is_not(None))
    pruned = dropped = batches = 0
    while max_batches <= 0 or batches < max_batches:
        with db.write() as s:
            rows = s.execute(
                select(Snapshot.id, Snapshot.size)
                .where(
                    Snapshot.received_at < older_than,
                    Snapshot.pruned_at.is_(None),
                    Snapshot.digest.not_in(heads),
                )
                .order_by(Snapshot.id)
                .limit(batch)
            ).all()
            if not rows:
                break
            ids = [r[0] for r in rows]
            s.execute(
                update(Snapshot)
                .where(Snapshot.id.in_(ids), Snapshot.pruned_at.is_(None))
                .values(envelope=b"", pruned_at=now)
            )
        batches += 1
        pruned += len(ids)
        dropped += sum(int(r[1]) for r in rows)
        if len(rows) < batch:
            break
    return pruned, dropped, batches


def delete_closed_findings(
    db: Database, older_than: datetime, *, batch: int = 1000, max_batches: int = 0
) -> tuple[int, int]:
    """Delete findings closed before ``older_than``; open findings stay. (deleted, batches)"""
    deleted = batches = 0
    while max_batches <= 0 or batches < max_batches:
        with db.write() as s:
            ids = list(
                s.scalars(
                    select(FindingRow.id)
                    .where(FindingRow.is_open.is_(False), FindingRow.closed_at < older_than)
                    .order_by(FindingRow.id)
                    .limit(batch)
                )
            )
            if not ids:
                break
            s.execute(delete(FindingRow).where(FindingRow.id.in_(ids)))
        batches += 1
        deleted += len(ids)
        if len(ids) < batch:
            break
    return deleted, batches


def apply(
    db: Database,
    *,
    envelopes_days: float | None,
    findings_days: float | None,
    now: datetime | None = None,
    batch: int = 1000,
    actor: str = "retention",
) -> RetentionResult:
    """Apply both settings (``None`` skips one) and record the run in the audit log."""
    from server.store import audit

    if batch < 1:
        raise ValueError("batch must be at least 1")
    for days in (envelopes_days, findings_days):
        if days is not None and days < 0:
            raise ValueError("retention days must be >= 0")
    now = now or datetime.now(UTC)
    pruned = dropped = deleted = batches = 0
    if envelopes_days is not None:
        pruned, dropped, b = prune_envelopes(
            db, now - timedelta(days=envelopes_days), now, batch=batch
        )
        batches += b
    if findings_days is not None:
        deleted, b = delete_closed_findings(db, now - timedelta(days=findings_days), batch=batch)
        batches += b
    result = RetentionResult(pruned, dropped, deleted, batches)
    with db.write() as s:
        audit.append(
            s,
            at=now,
            actor=actor,
            action="retention.applied",
            subject="database",
            details={
                "envelopes_days": envelopes_days,
                "findings_days": findings_days,
                **result.to_json(),
            },
        )
    return result


def pruned_count(db: Database) -> int:
    with db.read() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(Snapshot).where(Snapshot.pruned_at.is_not(None))
            )
            or 0
        )
