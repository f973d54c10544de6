"""The audit log: every state change, appended to one SHA-256 hash chain.

Each row is ``seq, at, actor, action, subject, details, prev_hash, hash`` where ``hash`` is the
lowercase hex SHA-256 of the RFC 8785 (JCS) encoding of the row without ``hash``. Rows are appended
inside the transaction that makes the change, so a change and its audit row commit together.

Appending locks the single ``audit_head`` row (``UPDATE ... RETURNING``): concurrent writers on
PostgreSQL queue there and extend one chain, never fork it. The lock is taken last in a transaction
and held only until its commit.

What is audited: enrollment, revocation, token and key creation, accepted evidence, and rejected
evidence that carried a valid signature of an enrolled key (a security event). Unauthenticated junk
is only counted in metrics, so nobody without a key can grow this log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from contract import canonical_bytes, format_timestamp
from server.store.models import AuditEntry, AuditHead
from server.store.pipeline import Pipeline

_LOG = cast(Table, AuditEntry.__table__)
_HEAD = cast(Table, AuditHead.__table__)
# Built once: statement construction costs more than executing these on SQLite.
_CLAIM_SEQS = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(seq=_HEAD.c.seq + bindparam("n"))
    .returning(_HEAD.c.seq, _HEAD.c.hash)
)
_INSERT = insert(_LOG)
_SET_HASH = update(_HEAD).where(_HEAD.c.id == 1).values(hash=bindparam("new_hash"))


def row_hash(
    *,
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    details: Any,
    prev_hash: str | None,
) -> str:
    body = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


@dataclass(frozen=True)
class Event:
    """One change to record: who did what to what, with details."""

    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any] | None = None


def append(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one row to the chain in the caller's transaction."""
    return append_many(session, [Event(at, actor, action, subject, details)])[0]


def append_many(session: Session, events: Sequence[Event]) -> list[AuditEntry]:
    """Append rows to the chain in the caller's transaction, in order: the head row is claimed
    (and locked) once for all of them, with one INSERT and one head update."""
    if not events:
        return []
    texts = _texts(events)
    row = session.execute(_CLAIM_SEQS, {"n": len(events)}).one()
    values, head_hash = _chained(events, texts, int(row[0]), row[1])
    session.execute(_INSERT, values)
    session.execute(_SET_HASH, {"new_hash": head_hash})
    return [AuditEntry(**v) for v in values]


def claim(pipe: Pipeline, n: int) -> Any:
    """Claim ``n`` rows of the chain (locks the head row): a cursor whose one row, once
    answered, goes to :func:`append_claimed`. Claim last in a transaction, like
    :func:`append_many`: the lock is then held the shortest time."""
    return pipe.execute(_CLAIM_SEQS, {"n": n})


def append_claimed(pipe: Pipeline, events: Sequence[Event], claimed: Sequence[Any]) -> None:
    """The rows of ``events`` in the places :func:`claim` answered (``claimed``: its row)."""
    values, head_hash = _chained(events, _texts(events), int(claimed[0]), claimed[1])
    with pipe.batch():
        pipe.executemany(_INSERT, values)
        pipe.execute(_SET_HASH, {"new_hash": head_hash})


def _texts(events: Sequence[Event]) -> list[str]:
    return [canonical_bytes(e.details or {}).decode("utf-8") for e in events]


def _chained(
    events: Sequence[Event], texts: Sequence[str], claimed_seq: int, prev_hash: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of ``events`` ending at ``claimed_seq`` after ``prev_hash``, and the new head."""
    seq = claimed_seq - len(events)
    values: list[dict[str, Any]] = []
    for event, text in zip(events, texts, strict=True):
        seq += 1
        stamp = format_timestamp(event.at)
        digest = row_hash(
            seq=seq,
            at=stamp,
            actor=event.actor,
            action=event.action,
            subject=event.subject,
            details=json.loads(text),
            prev_hash=prev_hash,
        )
        values.append(
            {
                "seq": seq,
                "at": stamp,
                "actor": event.actor,
                "action": event.action,
                "subject": event.subject,
                "details": text,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    return values, prev_hash


@dataclass(frozen=True)
class AuditBreak:
    """The first row where the chain does not hold, and why."""

    seq: int
    reason: str


def verify_audit(session: Session, *, batch: int = 5000) -> AuditBreak | None:
    """Walk the whole chain; ``None`` if it is unbroken, else the first bad row."""
    expected_seq = 1
    prev: str | None = None
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.seq > last).order_by(AuditEntry.seq).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                return AuditBreak(
                    expected_seq, f"row {expected_seq} is missing (next is {row.seq})"
                )
            if row.prev_hash != prev:
                return AuditBreak(row.seq, "prev_hash does not match the previous row's hash")
            try:
                details = json.loads(row.details)
            except ValueError:
                return AuditBreak(row.seq, "details are not valid JSON")
            digest = row_hash(
                seq=row.seq,
                at=row.at,
                actor=row.actor,
                action=row.action,
                subject=row.subject,
                details=details,
                prev_hash=row.prev_hash,
            )
            if digest != row.hash:
                return AuditBreak(row.seq, "hash does not match the row's content")
            prev = row.hash
            expected_seq += 1
            last = row.seq
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != last or head.hash != prev):
        return AuditBreak(last + 1, f"chain ends at row {last} but its head says {head.seq}")
    return None
