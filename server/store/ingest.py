"""The evidence write path: the trusted state appraisal needs, and committing what it accepted.

:func:`lookup` reads what :func:`server.appraise.appraise` asks for. :func:`send_accepted` writes
accepted snapshots (one, or a group commit of several) in the caller's single transaction, with
its statements pipelined (server.store.pipeline), and races are settled in the database:

- the snapshot row's ``digest`` is unique: the same envelope racing itself yields one row (the
  loser raises :class:`AlreadyStored` and answers the stored result);
- the chain head advances with ``UPDATE ... WHERE key_id = ? AND seq = <old> AND digest IS <old>``
  and ``(key_id, seq)`` is unique: of two children of one head exactly one wins; the loser raises
  :class:`HeadMoved` and is answered as a fork;
- the nonce is consumed with ``UPDATE ... WHERE used = false``: a nonce is spent once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contract.assurance import Level, is_level, parse_level
from contract.keys import PublicKey, public_from_raw
from server.appraise import Accepted, HostRecord, NonceRecord, utc
from server.appraise import ChainHead as HeadRecord
from server.findings import Finding
from server.store import audit
from server.store import log as log_store
from server.store.compliance_models import HostState, RegistryState, SiteAuthorization
from server.store.models import (
    ChainHead,
    Host,
    InventoryAccelerator,
    InventoryWeight,
    Nonce,
    RepeatedRejection,
    Site,
    Snapshot,
)
from server.store.pipeline import Pipeline
from server.store.sqllist import values_in

_NONCE = re.compile(r"^[0-9a-f]{64}$")  # the only nonces this verifier issues


def db_text(value: str | None, limit: int | None = None) -> str | None:
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
class StoredResult:
    digest: str
    key_id: str
    status: str
    result: str


@dataclass(frozen=True)
class SiteTerms:
    """What host judgement needs to know about the host's site (read with the host)."""

    country: str
    test_site: bool
    org_id: str
    may_store_controlled_weights: bool
    #: The authorization's demanded assurance level (None: none beyond the pack's).
    minimum_assurance: Level | None = None


@dataclass(frozen=True)
class TrustedState:
    host: HostRecord | None
    head: HeadRecord | None
    nonce: NonceRecord | None
    stored: StoredResult | None
    inventory_digest: str | None = None
    site: SiteTerms | None = None
    #: The model registry's generation when this was read (None: no enrolled host named).
    registry_generation: int | None = None


_HOSTS = cast(Table, Host.__table__)
_HEADS = cast(Table, ChainHead.__table__)
_SNAPSHOTS = cast(Table, Snapshot.__table__)
_NONCES = cast(Table, Nonce.__table__)
_ACCELERATORS = cast(Table, InventoryAccelerator.__table__)
_WEIGHTS = cast(Table, InventoryWeight.__table__)
_SITES = cast(Table, Site.__table__)
#: The snapshot the chain head names (for its ``prev``: a second child of it is a fork).
_HEAD_SNAPSHOT = _SNAPSHOTS.alias("head_snapshot")
_AUTHS = cast(Table, SiteAuthorization.__table__)
_REGISTRY_STATE = cast(Table, RegistryState.__table__)
_HOST_STATE = cast(Table, HostState.__table__)


#: A site's terms alone, for callers that do not come through :func:`lookup`.
_SITE_TERMS_OF = (
    select(
        _SITES.c.country,
        _SITES.c.test_site,
        _SITES.c.org_id,
        _AUTHS.c.may_store_controlled_weights,
        _AUTHS.c.minimum_assurance,
    )
    .select_from(_SITES.outerjoin(_AUTHS, _AUTHS.c.site_id == _SITES.c.id))
    .where(_SITES.c.id == bindparam("site"))
)


#: The hosts named by an envelope, with their chain heads (and the head snapshot's ``prev``), this
#: digest if it is already stored under the host's key, and the site's terms: one round trip,
#: built once (constructing it per call cost more than running it).
_LOOKUP = (
    select(
        _HOSTS.c.key_id,
        _HOSTS.c.public_key,
        _HOSTS.c.site_id,
        _HOSTS.c.status,
        _HOSTS.c.machine_id,
        _HOSTS.c.key_level,
        _HOSTS.c.tpm,
        _HOST_STATE.c.quote_reset,
        _HOST_STATE.c.quote_restart,
        _HOST_STATE.c.quote_clock,
        _HEADS.c.seq,
        _HEADS.c.digest,
        _HEADS.c.inventory_digest,
        _SNAPSHOTS.c.digest,
        _SNAPSHOTS.c.status,
        _SNAPSHOTS.c.result,
        _SITES.c.country,
        _SITES.c.test_site,
        _SITES.c.org_id,
        _AUTHS.c.may_store_controlled_weights,
        _AUTHS.c.minimum_assurance,
        _HEAD_SNAPSHOT.c.digest,
        _HEAD_SNAPSHOT.c.prev,
        # The model registry's generation (server.compliance.registry.RegistryCache).
        select(_REGISTRY_STATE.c.generation)
        .where(_REGISTRY_STATE.c.id == 1)
        .scalar_subquery()
        .label("registry_generation"),
    )
    .select_from(
        _HOSTS.outerjoin(_HEADS, _HEADS.c.key_id == _HOSTS.c.key_id)
        .outerjoin(
            _SNAPSHOTS,
            and_(
                _SNAPSHOTS.c.key_id == _HOSTS.c.key_id,
                _SNAPSHOTS.c.digest == bindparam("digest"),
            ),
        )
        .outerjoin(_SITES, _SITES.c.id == _HOSTS.c.site_id)
        .outerjoin(_AUTHS, _AUTHS.c.site_id == _HOSTS.c.site_id)
        .outerjoin(_HEAD_SNAPSHOT, _HEAD_SNAPSHOT.c.digest == _HEADS.c.digest)
        .outerjoin(_HOST_STATE, _HOST_STATE.c.key_id == _HOSTS.c.key_id)
    )
    .where(values_in(_HOSTS.c.key_id, "keys"))
)

#: A nonce's record.
_NONCE_OF = select(
    _NONCES.c.nonce,
    _NONCES.c.key_id,
    _NONCES.c.issued_at,
    _NONCES.c.expires_at,
    _NONCES.c.used,
).where(_NONCES.c.nonce == bindparam("nonce"))


def site_terms(session: Session, site_id: str) -> SiteTerms | None:
    row = session.connection().execute(_SITE_TERMS_OF, {"site": site_id}).first()
    if row is None:
        return None
    return SiteTerms(
        row.country,
        bool(row.test_site),
        row.org_id,
        bool(row.may_store_controlled_weights),
        _level_or_none(row.minimum_assurance),
    )


def _level_or_none(value: object) -> Level | None:
    return parse_level(value) if is_level(value) else None


_HEAD_VALUES: dict[str, Any] = {
    "seq": bindparam("new_seq"),
    "digest": bindparam("new_digest"),
    "inventory_digest": bindparam("inv"),
    "updated_at": bindparam("at"),
}
# The conditional advance of the chain head: it matches only the head appraisal saw.
_ADVANCE = (
    update(_HEADS)
    .where(
        _HEADS.c.key_id == bindparam("k"),
        _HEADS.c.seq == bindparam("old_seq"),
        _HEADS.c.digest == bindparam("old_digest"),
    )
    .values(**_HEAD_VALUES)
)
_ADVANCE_FROM_START = (
    update(_HEADS)
    .where(
        _HEADS.c.key_id == bindparam("k"),
        _HEADS.c.seq == bindparam("old_seq"),
        _HEADS.c.digest.is_(None),
    )
    .values(**_HEAD_VALUES)
)
_SNAPSHOT_INSERT = _SNAPSHOTS.insert()
_INSERT_ACCELERATORS = _ACCELERATORS.insert()
_INSERT_WEIGHTS = _WEIGHTS.insert()
_DROP_ACCELERATORS = delete(_ACCELERATORS).where(values_in(_ACCELERATORS.c.key_id, "keys"))
_DROP_WEIGHTS = delete(_WEIGHTS).where(values_in(_WEIGHTS.c.key_id, "keys"))
_SPEND_NONCE = (
    update(_NONCES)
    .where(
        _NONCES.c.nonce == bindparam("n"),
        _NONCES.c.key_id == bindparam("k"),
        _NONCES.c.used.is_(False),
    )
    .values(used=True, used_at=bindparam("at"))
)


@lru_cache(maxsize=65536)
def _public_key(raw: bytes) -> PublicKey:
    """A host's public key never changes for its key id; parse it once."""
    return public_from_raw(raw)


def _host_record(
    key_id: str,
    public_key: bytes,
    site_id: str,
    status: str,
    machine_id: str | None,
    key_level: str | None = None,
    tpm: str | None = None,
) -> HostRecord:
    known = status if status in ("pending", "active", "revoked") else "pending"
    return HostRecord(
        key_id=key_id,
        public_key=_public_key(bytes(public_key)),
        site_id=site_id,
        status=known,  # type: ignore[arg-type]
        machine_id=machine_id,
        # Only the two levels a host key can reach; anything else read as the weaker.
        key_level="tpm-bound-key" if key_level == "tpm-bound-key" else "self-reported",
        ak_public=_ak_public(tpm),
    )


@lru_cache(maxsize=65536)
def _ak_public(tpm: str | None) -> bytes | None:
    """The attestation key credential activation recorded (hosts.tpm JSON), parsed once."""
    if not tpm:
        return None
    try:
        value = json.loads(tpm).get("ak_public")
        return base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None


def host_record(session: Session, key_id: str) -> HostRecord | None:
    row = session.get(Host, key_id)
    if row is None:
        return None
    return _host_record(
        row.key_id, row.public_key, row.site_id, row.status, row.machine_id, row.key_level, row.tpm
    )


def lookup(
    session: Session, key_ids: Sequence[str], digest: str, nonce: str | None
) -> TrustedState:
    """Everything appraisal needs, in one indexed read (two with a nonce)."""
    host: HostRecord | None = None
    head: HeadRecord | None = None
    inventory_digest: str | None = None
    stored: StoredResult | None = None
    site: SiteTerms | None = None
    generation: int | None = None
    if key_ids:
        # On the driver's connection: SQLAlchemy's execution layer cost more than the query.
        found = Pipeline(session).execute(_LOOKUP, {"keys": list(key_ids), "digest": digest})
        rows = {r[0]: r for r in found.fetchall()}
        for key_id in key_ids:  # the first enrolled key named by the envelope
            if key_id in rows:
                # In _LOOKUP's column order.
                (
                    _,
                    public_key,
                    site_id,
                    status,
                    machine_id,
                    key_level,
                    tpm,
                    quote_reset,
                    quote_restart,
                    quote_clock,
                    head_seq,
                    head_digest,
                    inventory_digest,
                    stored_digest,
                    stored_status,
                    stored_result,
                    country,
                    test_site,
                    org_id,
                    may_store_controlled_weights,
                    minimum_assurance,
                    head_snapshot_digest,
                    head_snapshot_prev,
                    registry_generation,
                ) = rows[key_id]
                host = _host_record(key_id, public_key, site_id, status, machine_id, key_level, tpm)
                if None not in (quote_reset, quote_restart, quote_clock):
                    last = (int(quote_reset), int(quote_restart), int(quote_clock))
                    host = replace(host, last_quote=last)
                if head_seq is not None and not (head_seq == 0 and head_digest is None):
                    known = head_snapshot_digest is not None
                    head = HeadRecord(
                        seq=int(head_seq),
                        digest=head_digest,
                        parent=head_snapshot_prev if known else None,
                        parent_known=known,
                    )
                if stored_digest is not None:
                    stored = StoredResult(stored_digest, key_id, stored_status, stored_result)
                if country is not None:
                    site = SiteTerms(
                        country,
                        bool(test_site),
                        org_id,
                        bool(may_store_controlled_weights),
                        _level_or_none(minimum_assurance),
                    )
                generation = None if registry_generation is None else int(registry_generation)
                break
    nonce_record: NonceRecord | None = None
    # ``stored`` came with the join: this digest under this host's key (a digest stored under
    # another key is not this host's evidence and gets no cached answer).
    if host is not None and nonce is not None and _NONCE.match(nonce):
        n = session.execute(_NONCE_OF, {"nonce": nonce}).first()
        if n is not None:
            nonce_record = NonceRecord(
                nonce=n.nonce,
                key_id=n.key_id,
                issued_at=utc(n.issued_at),
                expires_at=utc(n.expires_at),
                used=bool(n.used),
            )
    return TrustedState(
        host=host,
        head=head,
        nonce=nonce_record,
        stored=stored,
        inventory_digest=inventory_digest,
        site=site,
        registry_generation=generation,
    )


_Rows = tuple[list[dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Write:
    """One accepted snapshot's rows, built by :func:`prepare_write` before the write
    transaction (CPU work stays out of the single writer)."""

    key_id: str
    digest: str
    nonce: str | None
    head: HeadRecord | None
    snapshot_row: dict[str, Any]
    #: The host's inventory rows, or None when they are unchanged since the head.
    inventory: _Rows | None
    inventory_digest: str
    now: datetime
    #: The snapshot's transparency-log leaf row (server/log/entries.py), appended with it.
    log_row: dict[str, Any] | None = None


def prepare_write(
    accepted: Accepted,
    *,
    site_id: str,
    head: HeadRecord | None,
    raw: bytes,
    status: str,
    findings: Sequence[Finding],
    result: str,
    now: datetime,
    inventory_digest: str | None = None,
    log_row: dict[str, Any] | None = None,
) -> Write:
    """The rows of one accepted snapshot (``head``: the head appraisal saw;
    ``inventory_digest``: the stored inventory's)."""
    rows, new_inventory = _inventory(accepted)
    return Write(
        key_id=accepted.key_id,
        digest=accepted.digest,
        nonce=accepted.nonce,
        head=head,
        snapshot_row={
            "digest": accepted.digest,
            "key_id": accepted.key_id,
            "site_id": site_id,
            "seq": accepted.seq,
            "prev": accepted.prev,
            "nonce": accepted.nonce,
            "collected_at": accepted.collected_at,
            "received_at": now,
            "status": status,
            "findings": json.dumps([f.to_json() for f in findings], sort_keys=True),
            "result": result,
            "size": len(raw),
            "envelope": raw,
        },
        inventory=rows if new_inventory != inventory_digest else None,
        inventory_digest=new_inventory,
        now=now,
        log_row=log_row,
    )


@dataclass(frozen=True)
class Sent:
    """The statements of accepted snapshots, sent by :func:`send_accepted`; :meth:`check` them
    once answered (after the batch)."""

    #: (cursor, rows expected to move, a key id) of each conditional head advance.
    advances: tuple[tuple[Any, int, str], ...]
    #: (cursor, nonces to spend, the first) of the nonce spend, if any.
    spends: tuple[Any, int, str] | None

    def check(self) -> None:
        """Raise :class:`HeadMoved` or :class:`NonceSpent` if a race was lost."""
        for cursor, expected, key_id in self.advances:
            if cursor.rowcount != expected:
                raise HeadMoved(key_id)
        if self.spends is not None:
            cursor, expected, nonce = self.spends
            if cursor.rowcount != expected:
                raise NonceSpent(nonce)


def send_accepted(pipe: Pipeline, writes: Sequence[Write]) -> Sent:
    """Send accepted snapshots' rows in the caller's transaction, each statement once for all
    of them: the snapshots, the conditional chain-head advances, the nonce spends, the changed
    inventories. Run it in a batch under :func:`snapshot_races`, then :meth:`Sent.check` it: a
    lost race raises (the caller's transaction rolls back).

    Which of several snapshots lost is not told apart: a caller with more than one retries
    each alone to learn it.
    """
    pipe.executemany(_SNAPSHOT_INSERT, [w.snapshot_row for w in writes])
    # The leaves of the transparency log, in the same transaction: no snapshot without its leaf.
    log_store.send_entries(pipe, [w.log_row for w in writes if w.log_row is not None])
    advances: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for w in writes:
        old_digest = w.head.digest if w.head is not None else None
        advances[old_digest is None].append(
            {
                "k": w.key_id,
                "old_seq": w.head.seq if w.head is not None else 0,
                "old_digest": old_digest,
                "new_seq": w.snapshot_row["seq"],
                "new_digest": w.digest,
                "inv": w.inventory_digest,
                "at": w.now,
            }
        )
    moved = tuple(
        (
            pipe.executemany(_ADVANCE_FROM_START if from_start else _ADVANCE, params),
            len(params),
            params[0]["k"],
        )
        for from_start, params in advances.items()
        if params
    )
    spends = [{"n": w.nonce, "k": w.key_id, "at": w.now} for w in writes if w.nonce is not None]
    spent = None
    if spends:
        spent = (pipe.executemany(_SPEND_NONCE, spends), len(spends), str(spends[0]["n"]))
    replaced = [(w.key_id, w.inventory) for w in writes if w.inventory is not None]
    if replaced:
        _replace_inventory(pipe, replaced)
    return Sent(moved, spent)


@contextmanager
def snapshot_races(pipe: Pipeline) -> Iterator[None]:
    """A broken unique constraint of the snapshots table is a lost race: this very envelope is
    stored (:class:`AlreadyStored`, ``digest``) or another child of the head is
    (:class:`HeadMoved`, ``key_id, seq``). Other integrity errors pass as they are."""
    try:
        yield
    except pipe.IntegrityError as exc:
        diag = getattr(exc, "diag", None)
        text = f"{exc} {getattr(diag, 'constraint_name', '') or ''}".lower()
        if "snapshots_digest" in text or "snapshots.digest" in text:
            raise AlreadyStored(str(exc)) from None
        if "snapshots_key_seq" in text or "snapshots.key_id, snapshots.seq" in text:
            raise HeadMoved(str(exc)) from None
        raise


def accepted_event(
    accepted: Accepted, *, status: str, findings: Sequence[Finding], now: datetime
) -> audit.Event:
    """The audit row of accepted evidence. Append it LAST in the ingest transaction: appending
    locks the single audit head row, so everything before it runs concurrently across workers."""
    return audit.Event(
        at=now,
        actor=f"host:{accepted.key_id}",
        action="evidence.accepted",
        subject=f"host:{accepted.key_id}",
        details={
            "digest": accepted.digest,
            "seq": accepted.seq,
            "status": status,
            "findings": sorted({f.condition_id for f in findings}),
            "nonce": accepted.nonce,
        },
    )


def _inventory(accepted: Accepted) -> tuple[_Rows, str]:
    """The host's inventory rows from a snapshot, and a digest that names them."""
    snap = accepted.snapshot
    key_id = accepted.key_id
    accelerators = [
        {
            "key_id": key_id,
            "uuid": db_text(a.uuid, 100),
            "serial": db_text(a.serial, 100),
            "vendor": db_text(a.vendor, 100),
            "model": db_text(a.model, 200),
            "pci_device_id": db_text(a.pci_device_id, 16),
            "pci_bus_id": db_text(a.pci_bus_id, 32),
            "memory_mib": a.memory_mib,
            "source": a.source,
        }
        for a in snap.accelerators
    ]
    weights = [
        {
            "key_id": key_id,
            "sha256": f.sha256,
            "path": db_text(f.path),
            "size": f.size,
            "format": f.format,
            "root": db_text(root.root),
            "encryption": root.encryption.status,
        }
        for root in snap.storage
        for f in root.files
    ]
    digest = hashlib.sha256(
        json.dumps([accelerators, weights], sort_keys=True).encode("utf-8")
    ).hexdigest()
    for row in accelerators:
        row["snapshot_digest"] = accepted.digest
    for row in weights:
        row["snapshot_digest"] = accepted.digest
    return (accelerators, weights), digest


def _replace_inventory(pipe: Pipeline, replaced: Sequence[tuple[str, _Rows]]) -> None:
    keys = {"keys": [key_id for key_id, _ in replaced]}
    pipe.execute(_DROP_ACCELERATORS, keys)
    pipe.execute(_DROP_WEIGHTS, keys)
    accelerators = [row for _, (rows, _w) in replaced for row in rows]
    weights = [row for _, (_a, rows) in replaced for row in rows]
    if accelerators:
        pipe.executemany(_INSERT_ACCELERATORS, accelerators)
    if weights:
        pipe.executemany(_INSERT_WEIGHTS, weights)


def audit_rejection(
    session: Session,
    *,
    key_id: str,
    code: str,
    detail: str,
    digest: str | None,
    now: datetime,
    log_row: dict[str, Any] | None = None,
) -> None:
    """A security event: evidence that a valid signature of an enrolled key vouched for (and,
    for a fork or a replay, its transparency-log leaf, in the same transaction).

    Written once per envelope digest (a resent fork or replay only counts in
    ``repeated_rejections``, with its last-seen time), and once per hour per revoked key."""
    key = f"revoked:{key_id}" if code == "revoked_key" else digest
    if key is not None and not _first_rejection(session, key, key_id, code, now):
        return
    if log_row is not None:
        log_store.append_entries(session, [log_row])
    audit.append(
        session,
        at=now,
        actor=f"host:{key_id}",
        action="evidence.rejected",
        subject=f"host:{key_id}",
        details={"code": code, "detail": detail[:500], "digest": digest},
    )


#: How often a revoked key's attempts reach the audit log (the rest are counted).
REVOKED_AUDIT_INTERVAL = timedelta(hours=1)


def _first_rejection(session: Session, key: str, key_id: str, code: str, now: datetime) -> bool:
    """Count this refusal; whether it is to be audited (the first, or a revoked key's first
    this interval)."""
    row = session.get(RepeatedRejection, key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(
                    RepeatedRejection(
                        key=key,
                        key_id=key_id,
                        code=code,
                        first_seen=now,
                        last_seen=now,
                        last_audited=now,
                        count=1,
                    )
                )
            return True
        except IntegrityError:  # a racing worker recorded it first: count this one
            row = session.get(RepeatedRejection, key, with_for_update=True, populate_existing=True)
            if row is None:  # pragma: no cover - the row cannot vanish
                return True
    row.count += 1
    row.last_seen = now
    if code == "revoked_key" and now - utc(row.last_audited) >= REVOKED_AUDIT_INTERVAL:
        row.last_audited = now
        return True
    return False
