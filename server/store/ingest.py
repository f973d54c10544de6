"""The evidence write path: the trusted state appraisal needs, and committing what it accepted.

:func:`lookup` reads what :func:`server.verify.appraise` asks for. :func:`commit_accepted` writes
an accepted snapshot in the caller's single transaction and settles races in the database:

- the snapshot row's ``digest`` is unique: the same envelope racing itself yields one row (the
  loser raises :class:`AlreadyStored` and answers the stored result);
- the chain head advances with ``UPDATE ... WHERE key_id = ? AND seq = <old> AND digest IS <old>``
  and ``(key_id, seq)`` is unique: of two children of one head exactly one wins; the loser raises
  :class:`HeadMoved` and is answered as a fork;
- the nonce is consumed with ``UPDATE ... WHERE used = false``: a nonce is spent once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.keys import public_from_raw
from server import audit
from server.findings import Finding
from server.store.models import (
    ChainHead,
    Host,
    InventoryAccelerator,
    InventoryWeight,
    Nonce,
    Snapshot,
)
from server.verify import Accepted, HostRecord, NonceRecord
from server.verify import ChainHead as HeadRecord

_NONCE = re.compile(r"^[0-9a-f]{64}$")  # the only nonces this verifier issues


def _text(value: str | None, limit: int | None = None) -> str | None:
    """Evidence text for a derived column: PostgreSQL text cannot hold NUL, so escape it, and
    cut it to the column's width (the raw envelope keeps the whole value)."""
    if value is None:
        return None
    value = value.replace("\x00", "\\x00")
    return value[:limit] if limit is not None else value


class AlreadyStored(Exception):
    """This digest was committed by someone else first."""


class HeadMoved(Exception):
    """The chain head changed between lookup and commit (a concurrent child of the same head)."""


class NonceSpent(Exception):
    """The nonce was consumed between lookup and commit."""


@dataclass(frozen=True)
class TrustedState:
    host: HostRecord | None
    head: HeadRecord | None
    nonce: NonceRecord | None
    stored: Snapshot | None


def _host_record(row: Host) -> HostRecord:
    status = row.status if row.status in ("pending", "active", "revoked") else "pending"
    return HostRecord(
        key_id=row.key_id,
        public_key=public_from_raw(row.public_key),
        site_id=row.site_id,
        status=status,  # type: ignore[arg-type]
        machine_id=row.machine_id,
    )


def host_record(session: Session, key_id: str) -> HostRecord | None:
    row = session.get(Host, key_id)
    return _host_record(row) if row is not None else None


def lookup(
    session: Session, key_ids: Sequence[str], digest: str, nonce: str | None
) -> TrustedState:
    """Everything appraisal needs, in at most four indexed reads."""
    host: HostRecord | None = None
    if key_ids:
        rows = {h.key_id: h for h in session.scalars(select(Host).where(Host.key_id.in_(key_ids)))}
        for key_id in key_ids:  # the first enrolled key named by the envelope
            if key_id in rows:
                host = _host_record(rows[key_id])
                break
    head: HeadRecord | None = None
    stored: Snapshot | None = None
    nonce_record: NonceRecord | None = None
    if host is not None:
        head_row = session.get(ChainHead, host.key_id)
        if head_row is not None and not (head_row.seq == 0 and head_row.digest is None):
            head = HeadRecord(seq=head_row.seq, digest=head_row.digest)
        stored = session.scalar(select(Snapshot).where(Snapshot.digest == digest))
        if stored is not None and stored.key_id != host.key_id:
            stored = None
        if nonce is not None and _NONCE.match(nonce):
            n = session.get(Nonce, nonce)
            if n is not None:
                nonce_record = NonceRecord(
                    nonce=n.nonce,
                    key_id=n.key_id,
                    issued_at=n.issued_at,
                    expires_at=n.expires_at,
                    used=n.used,
                )
    return TrustedState(host=host, head=head, nonce=nonce_record, stored=stored)


def commit_accepted(
    session: Session,
    accepted: Accepted,
    *,
    site_id: str,
    head: HeadRecord | None,
    raw: bytes,
    status: str,
    findings: Sequence[Finding],
    result: str,
    now: datetime,
) -> Snapshot:
    """Write one accepted snapshot; raise on a lost race (the caller's transaction rolls back)."""
    row = Snapshot(
        digest=accepted.digest,
        key_id=accepted.key_id,
        site_id=site_id,
        seq=accepted.seq,
        prev=accepted.prev,
        nonce=accepted.nonce,
        collected_at=accepted.collected_at,
        received_at=now,
        status=status,
        findings=json.dumps([f.to_json() for f in findings], sort_keys=True),
        result=result,
        size=len(raw),
        envelope=raw,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        text = str(exc.orig).lower()
        if "digest" in text:
            raise AlreadyStored(accepted.digest) from None
        raise HeadMoved(accepted.key_id) from None
    old_seq = head.seq if head is not None else 0
    old_digest = head.digest if head is not None else None
    cond = ChainHead.digest.is_(None) if old_digest is None else ChainHead.digest == old_digest
    moved = session.execute(
        update(ChainHead)
        .where(ChainHead.key_id == accepted.key_id, ChainHead.seq == old_seq, cond)
        .values(seq=accepted.seq, digest=accepted.digest, updated_at=now)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise HeadMoved(accepted.key_id)
    if accepted.nonce is not None:
        spent = session.execute(
            update(Nonce)
            .where(
                Nonce.nonce == accepted.nonce,
                Nonce.key_id == accepted.key_id,
                Nonce.used.is_(False),
            )
            .values(used=True, used_at=now)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            raise NonceSpent(accepted.nonce)
    _replace_inventory(session, accepted, now)
    audit.append(
        session,
        at=now,
        actor=f"host:{accepted.key_id}",
        action="evidence.accepted",
        subject=f"host:{accepted.key_id}",
        details={
            "digest": accepted.digest,
            "seq": accepted.seq,
            "status": status,
            "findings": [f.condition_id for f in findings],
            "nonce": accepted.nonce,
        },
    )
    return row


def _replace_inventory(session: Session, accepted: Accepted, now: datetime) -> None:
    snap = accepted.snapshot
    key_id = accepted.key_id
    session.execute(delete(InventoryAccelerator).where(InventoryAccelerator.key_id == key_id))
    session.execute(delete(InventoryWeight).where(InventoryWeight.key_id == key_id))
    if snap.accelerators:
        session.execute(
            insert(InventoryAccelerator),
            [
                {
                    "key_id": key_id,
                    "uuid": _text(a.uuid, 100),
                    "serial": _text(a.serial, 100),
                    "vendor": _text(a.vendor, 100),
                    "model": _text(a.model, 200),
                    "pci_device_id": _text(a.pci_device_id, 16),
                    "pci_bus_id": _text(a.pci_bus_id, 32),
                    "memory_mib": a.memory_mib,
                    "source": a.source,
                    "snapshot_digest": accepted.digest,
                }
                for a in snap.accelerators
            ],
        )
    weights = [
        {
            "key_id": key_id,
            "sha256": f.sha256,
            "path": _text(f.path),
            "size": f.size,
            "format": f.format,
            "root": _text(root.root),
            "encryption": root.encryption.status,
            "snapshot_digest": accepted.digest,
        }
        for root in snap.storage
        for f in root.files
    ]
    if weights:
        session.execute(insert(InventoryWeight), weights)
    session.execute(update(Host).where(Host.key_id == key_id).values(last_seen_at=now))


def audit_rejection(
    session: Session,
    *,
    key_id: str,
    code: str,
    detail: str,
    digest: str | None,
    now: datetime,
) -> None:
    """A security event: evidence that a valid signature of an enrolled key vouched for."""
    audit.append(
        session,
        at=now,
        actor=f"host:{key_id}",
        action="evidence.rejected",
        subject=f"host:{key_id}",
        details={"code": code, "detail": detail[:500], "digest": digest},
    )
