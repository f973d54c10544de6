"""The transparency log's SQL (server/log/ says what it means): leaves appended in the caller's
transaction, the integrator's reads and writes, and the reads the log's routes serve."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, text, update
from sqlalchemy.orm import Session

from server.store.log_models import LogCheckpoint, LogEntry, LogNode
from server.store.models import Snapshot
from server.store.pipeline import Pipeline

__all__ = [
    "CheckpointRow",
    "accepted_leaves",
    "accepted_snapshots",
    "all_checkpoints",
    "all_entries",
    "append_entries",
    "assign_indices",
    "checkpoint_at",
    "count_accepted_leaves",
    "count_entries",
    "entries_by_index",
    "entry_of_envelope",
    "first_orphan_leaf",
    "insert_checkpoint",
    "insert_nodes",
    "latest_checkpoint",
    "level_range",
    "nodes",
    "pending_entries",
    "send_entries",
    "try_integrator_lock",
]

_ENTRIES = cast(Table, LogEntry.__table__)
_NODES = cast(Table, LogNode.__table__)
_CHECKPOINTS = cast(Table, LogCheckpoint.__table__)
_INSERT_ENTRY = _ENTRIES.insert()
_INSERT_NODE = _NODES.insert()
_ASSIGN = update(_ENTRIES).where(_ENTRIES.c.id == bindparam("entry_id")).values(idx=bindparam("i"))
#: Any constant names the integrator's lock among the database's advisory locks; this one is
#: "VEUL" in ASCII.
_ADVISORY_KEY = 0x5645554C


@dataclass(frozen=True)
class CheckpointRow:
    size: int
    root: bytes
    note: str
    created_at: datetime


def send_entries(pipe: Pipeline, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append leaves in the ingest transaction's pipeline (one statement for all of them)."""
    if rows:
        pipe.executemany(_INSERT_ENTRY, rows)


def append_entries(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append leaves in the caller's transaction."""
    if rows:
        session.execute(_INSERT_ENTRY, list(rows))


def try_integrator_lock(session: Session, *, wait: bool = False) -> bool:
    """Become this log's single integrator for the caller's transaction. PostgreSQL: a
    transaction-level advisory lock, so of several workers one integrates and the others skip
    the round (their leaves are integrated by the holder). SQLite: the database's single writer
    already serialises integrations (one server process per file). ``wait``: block until the
    lock is free (a command or a shutdown that must integrate)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    if wait:
        session.execute(select(func.pg_advisory_xact_lock(_ADVISORY_KEY)))
        return True
    got = session.execute(select(func.pg_try_advisory_xact_lock(_ADVISORY_KEY))).scalar()
    return bool(got)


def _checkpoint(row: Any) -> CheckpointRow:
    return CheckpointRow(int(row.size), bytes(row.root), row.note, row.created_at)


def latest_checkpoint(session: Session) -> CheckpointRow | None:
    row = session.execute(
        select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.size.desc()).limit(1)
    ).first()
    return (
        None if row is None else CheckpointRow(row.size, bytes(row.root), row.note, row.created_at)
    )


def checkpoint_at(session: Session, size: int) -> CheckpointRow | None:
    row = session.execute(select(_CHECKPOINTS).where(_CHECKPOINTS.c.size == size)).first()
    return (
        None if row is None else CheckpointRow(row.size, bytes(row.root), row.note, row.created_at)
    )


def pending_entries(session: Session, limit: int) -> list[tuple[int, bytes]]:
    """Leaves not yet in the tree, in the order they were appended."""
    rows = session.execute(
        select(_ENTRIES.c.id, _ENTRIES.c.data)
        .where(_ENTRIES.c.idx.is_(None))
        .order_by(_ENTRIES.c.id)
        .limit(limit)
    )
    return [(int(r.id), bytes(r.data)) for r in rows]


def nodes(session: Session, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored perfect nodes among ``wanted``, in one query: ``level = ? AND idx IN (...)``
    per level, OR-ed, so both databases probe the primary key (a row-value ``IN`` made SQLite
    scan the table: 30 ms a proof at 200,000 leaves)."""
    by_level: dict[int, list[int]] = {}
    for level, idx in set(wanted):
        by_level.setdefault(level, []).append(idx)
    out: dict[tuple[int, int], bytes] = {}
    items = sorted(by_level.items())
    for start in range(0, len(items), 64):
        terms = [
            and_(_NODES.c.level == level, _NODES.c.idx.in_(sorted(idxs)))
            for level, idxs in items[start : start + 64]
        ]
        rows = session.execute(
            select(_NODES.c.level, _NODES.c.idx, _NODES.c.hash).where(or_(*terms))
        )
        out.update({(int(r.level), int(r.idx)): bytes(r.hash) for r in rows})
    return out


def level_range(session: Session, level: int, start: int, end: int) -> list[bytes]:
    """The hashes of level ``level``, indices ``[start, end)``, in order (a tile's content)."""
    rows = session.execute(
        select(_NODES.c.hash)
        .where(_NODES.c.level == level, _NODES.c.idx >= start, _NODES.c.idx < end)
        .order_by(_NODES.c.idx)
    )
    return [bytes(r.hash) for r in rows]


def entries_by_index(session: Session, start: int, end: int) -> list[tuple[int, bytes]]:
    """The integrated leaves ``[start, end)``: (index, data), in order."""
    rows = session.execute(
        select(_ENTRIES.c.idx, _ENTRIES.c.data)
        .where(_ENTRIES.c.idx >= start, _ENTRIES.c.idx < end)
        .order_by(_ENTRIES.c.idx)
    )
    return [(int(r.idx), bytes(r.data)) for r in rows]


def entry_of_envelope(session: Session, digest: str) -> tuple[int | None, bytes] | None:
    """The ``accepted`` leaf of an envelope: (its index, or None before integration; data)."""
    row = session.execute(
        select(_ENTRIES.c.idx, _ENTRIES.c.data)
        .where(_ENTRIES.c.envelope_digest == digest, _ENTRIES.c.kind == "accepted")
        .limit(1)
    ).first()
    if row is None:
        return None
    return (None if row.idx is None else int(row.idx)), bytes(row.data)


def insert_nodes(session: Session, made: Mapping[tuple[int, int], bytes]) -> None:
    if made:
        session.execute(
            _INSERT_NODE, [{"level": lv, "idx": i, "hash": h} for (lv, i), h in made.items()]
        )


def assign_indices(session: Session, pairs: Sequence[tuple[int, int]]) -> None:
    """Give leaves (entry id, index) their place in the tree: on PostgreSQL one statement over
    two arrays instead of one statement a leaf, on SQLite one
    prepared statement run for each (in process, no round trips)."""
    if not pairs:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text(
                "UPDATE log_entries AS e SET idx = v.i FROM unnest("
                "CAST(:ids AS bigint[]), CAST(:idxs AS bigint[])) AS v(id, i) WHERE e.id = v.id"
            ),
            {"ids": [e for e, _ in pairs], "idxs": [i for _, i in pairs]},
        )
        return
    session.connection().execute(_ASSIGN, [{"entry_id": e, "i": i} for e, i in pairs])


def insert_checkpoint(session: Session, row: CheckpointRow) -> None:
    """Record a signed checkpoint; a second checkpoint of one size breaks the primary key (the
    caller's transaction then rolls back)."""
    session.execute(
        _CHECKPOINTS.insert(),
        {"size": row.size, "root": row.root, "note": row.note, "created_at": row.created_at},
    )


def accepted_snapshots(session: Session, after: str | None, limit: int) -> list[Any]:
    """Accepted snapshots in digest order (for ``veu-server log verify``), from ``after``."""
    s = cast(Table, Snapshot.__table__)
    q = select(s.c.digest, s.c.key_id, s.c.site_id, s.c.seq, s.c.result, s.c.received_at)
    if after is not None:
        q = q.where(s.c.digest > after)
    return list(session.execute(q.order_by(s.c.digest).limit(limit)))


def count_entries(session: Session) -> tuple[int, int]:
    """(all leaves, leaves not yet integrated)."""
    total = session.execute(select(func.count()).select_from(_ENTRIES)).scalar_one()
    pending = session.execute(
        select(func.count()).select_from(_ENTRIES).where(_ENTRIES.c.idx.is_(None))
    ).scalar_one()
    return int(total), int(pending)


def all_entries(session: Session, after_id: int, limit: int) -> list[Any]:
    """Every leaf row by id (for ``veu-server log verify``)."""
    return list(
        session.execute(
            select(
                _ENTRIES.c.id,
                _ENTRIES.c.idx,
                _ENTRIES.c.kind,
                _ENTRIES.c.envelope_digest,
                _ENTRIES.c.data,
            )
            .where(_ENTRIES.c.id > after_id)
            .order_by(_ENTRIES.c.id)
            .limit(limit)
        )
    )


def all_checkpoints(session: Session) -> list[CheckpointRow]:
    rows = session.execute(select(_CHECKPOINTS).order_by(_CHECKPOINTS.c.size))
    return [_checkpoint(r) for r in rows]


def accepted_leaves(session: Session, digests: Sequence[str]) -> dict[str, list[bytes]]:
    """The ``accepted`` leaves naming each of ``digests``."""
    out: dict[str, list[bytes]] = {}
    rows = session.execute(
        select(_ENTRIES.c.envelope_digest, _ENTRIES.c.data).where(
            _ENTRIES.c.kind == "accepted", _ENTRIES.c.envelope_digest.in_(list(digests))
        )
    )
    for r in rows:
        out.setdefault(r.envelope_digest, []).append(bytes(r.data))
    return out


def count_accepted_leaves(session: Session) -> int:
    q = select(func.count()).select_from(_ENTRIES).where(_ENTRIES.c.kind == "accepted")
    return int(session.execute(q).scalar_one())


def first_orphan_leaf(session: Session) -> str | None:
    """The envelope digest of the first ``accepted`` leaf with no snapshot row."""
    s = cast(Table, Snapshot.__table__)
    row = session.execute(
        select(_ENTRIES.c.envelope_digest)
        .select_from(_ENTRIES.outerjoin(s, s.c.digest == _ENTRIES.c.envelope_digest))
        .where(_ENTRIES.c.kind == "accepted", s.c.digest.is_(None))
        .order_by(_ENTRIES.c.id)
        .limit(1)
    ).first()
    return None if row is None else str(row.envelope_digest)
