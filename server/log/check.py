"""``veu-server log verify``: the whole log against the database, naming the first discrepancy.

1. The tree: leaves in index order, with no gap and no index past the latest checkpoint; every
   stored node equal to the hash of its leaf or of its two children; every checkpoint signed by
   the log's key over the root of the leaves up to its size (so each is consistent with every
   other).
2. The evidence: every accepted snapshot has exactly one ``accepted`` leaf, byte for byte the
   record its row gives (server/log/entries.py); and no ``accepted`` leaf names a snapshot the
   database does not hold.

It reads in pages (memory stays small: the tree is folded as a compact range) and writes
nothing. Leaves not yet integrated are counted, not faults (the integrator signs them within a
second while it runs).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy.orm import Session

from contract.errors import EvidenceError
from contract.tlog import empty_root, leaf_hash, node_hash, verify_checkpoint
from server.log.entries import accepted_entry
from server.log.note import LogKey
from server.store import log as store
from server.store.db import Database

__all__ = ["LogReport", "verify_log"]

_PAGE = 5000


@dataclass(frozen=True)
class LogReport:
    leaves: int
    integrated: int
    accepted: int
    checkpoint_size: int
    checkpoints: int
    #: The first discrepancy found, or None when the log and the database agree.
    problem: str | None


class _Range:
    """A compact range from leaf 0: the perfect subtrees of the leaves so far (their root)."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, bytes]] = []

    def append(self, h: bytes) -> None:
        level = 0
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            h = node_hash(left, h)
            level += 1
        self.stack.append((level, h))

    def root(self) -> bytes:
        if not self.stack:
            return empty_root()
        h = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            h = node_hash(left, h)
        return h


def verify_log(db: Database, key: LogKey) -> LogReport:
    with db.read() as session:
        checkpoints = store.all_checkpoints(session)
        total, pending = store.count_entries(session)
        latest = checkpoints[-1].size if checkpoints else 0
        problem = _check_tree(session, key, checkpoints, total - pending)
        accepted = 0
        if problem is None:
            problem, accepted = _check_evidence(session)
    return LogReport(total, total - pending, accepted, latest, len(checkpoints), problem)


def _check_tree(
    session: Session, key: LogKey, checkpoints: list[store.CheckpointRow], integrated: int
) -> str | None:
    latest = checkpoints[-1].size if checkpoints else 0
    if integrated != latest:
        return (
            f"{integrated} leaves have an index but the latest checkpoint is of {latest}: "
            "an integration was not all or nothing"
        )
    sizes = {c.size: c for c in checkpoints}
    acc = _Range()
    if 0 in sizes:
        problem = _check_checkpoint(sizes[0], acc.root(), key)
        if problem:
            return problem
    index = 0
    while index < latest:
        rows = store.entries_by_index(session, index, min(latest, index + _PAGE))
        stored = store.level_range(session, 0, index, index + len(rows))
        for offset, (idx, data) in enumerate(rows):
            if idx != index:
                return f"leaf index {index} is missing (the next leaf has index {idx})"
            h = leaf_hash(data)
            if offset >= len(stored) or not hmac.compare_digest(stored[offset], h):
                return f"the stored hash of leaf {index} is not the hash of its entry"
            acc.append(h)
            index += 1
            if index in sizes:
                problem = _check_checkpoint(sizes[index], acc.root(), key)
                if problem:
                    return problem
        if not rows:
            return f"leaf index {index} is missing"
    return _check_nodes(session, latest)


def _check_checkpoint(row: store.CheckpointRow, root: bytes, key: LogKey) -> str | None:
    try:
        cp = verify_checkpoint(row.note, key.note_key)
    except EvidenceError as exc:
        return f"checkpoint of size {row.size}: {exc.detail}"
    if cp.size != row.size or cp.root != row.root:
        return f"checkpoint of size {row.size}: its note says size {cp.size} or another root"
    if not hmac.compare_digest(root, row.root):
        return (
            f"checkpoint of size {row.size} does not sign the root of the first {row.size} leaves"
        )
    return None


def _check_nodes(session: Session, size: int) -> str | None:
    """Every stored interior node is the hash of its two children."""
    level = 1
    while (size >> level) > 0:
        count = size >> level
        start = 0
        while start < count:
            end = min(count, start + _PAGE)
            parents = store.level_range(session, level, start, end)
            children = store.level_range(session, level - 1, 2 * start, 2 * end)
            if len(parents) != end - start or len(children) != 2 * (end - start):
                return f"nodes of level {level} from index {start} are missing"
            for i, parent in enumerate(parents):
                if not hmac.compare_digest(parent, node_hash(children[2 * i], children[2 * i + 1])):
                    return f"the stored node ({level}, {start + i}) is not the hash of its children"
            start = end
        level += 1
    return None


def _check_evidence(session: Session) -> tuple[str | None, int]:
    after: str | None = None
    seen = 0
    while True:
        snaps = store.accepted_snapshots(session, after, _PAGE)
        if not snaps:
            break
        leaves = store.accepted_leaves(session, [s.digest for s in snaps])
        for s in snaps:
            found = leaves.get(s.digest, [])
            if not found:
                return f"accepted snapshot {s.digest} has no leaf in the log", seen
            if len(found) > 1:
                return f"accepted snapshot {s.digest} has {len(found)} leaves", seen
            want = accepted_entry(
                digest=s.digest,
                key_id=s.key_id,
                site_id=s.site_id,
                seq=int(s.seq),
                result=s.result,
                at=s.received_at,
            )
            if not hmac.compare_digest(found[0], want):
                return f"the leaf of snapshot {s.digest} does not match its row", seen
            seen += 1
        after = snaps[-1].digest
    leaves_total = store.count_accepted_leaves(session)
    if leaves_total != seen:
        orphan = store.first_orphan_leaf(session)
        return f"the log has an accepted leaf for {orphan}, which the database does not hold", seen
    return None, seen
