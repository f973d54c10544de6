"""The log over the database: integrating appended leaves into the tree and signing checkpoints
(one writer at a time), and answering proofs, tiles and bundles from what is stored.

Leaves are appended by whoever commits evidence, in that commit's transaction
(server/ingest/__init__.py), so no accepted snapshot is without its leaf. The integrator gives
pending leaves their indices in append order, writes the tree's new nodes and signs the new size,
all in ONE transaction: a crash anywhere in it loses nothing (the leaves stay pending) and
publishes nothing. Before it signs it checks the stored tree against the last checkpoint (the
root of its right edge must be the signed root) and proves the new tree consistent with it, so it
never signs a size smaller than, or a tree inconsistent with, one it signed before; a second
checkpoint of one size breaks the table's primary key. On PostgreSQL with several workers the
integrator holds a transaction-level advisory lock; the others skip their round.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contract.tlog import MAX_TREE_SIZE, leaf_hash, verify_consistency
from server.errors import Conflict, Invalid, NotFound
from server.log import merkle
from server.log.note import LogKey
from server.log.tiles import HEIGHT, WIDTH, TileRef, bundle
from server.store import log as store
from server.store.db import Database
from server.store.log import CheckpointRow

__all__ = ["Integrator", "Log", "LogInconsistent"]

log = logging.getLogger("veu.log")


class LogInconsistent(Conflict):
    """The stored tree does not match the last signed checkpoint: nothing is signed until an
    operator looks (``veu-server log verify``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("log_inconsistent", detail)


@dataclass(frozen=True)
class Bundle:
    """A leaf, its index and its inclusion proof in the tree of a signed checkpoint."""

    index: int
    entry: bytes
    proof: list[bytes]
    checkpoint: str


class Log:
    """One verifier's transparency log: its database, its key, and how much one round takes."""

    def __init__(
        self,
        db: Database,
        key: LogKey,
        *,
        batch_max: int = 20_000,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.key = key
        self.batch_max = batch_max
        self.now = now or (lambda: datetime.now(UTC))
        #: Leaves the last round integrated (a full round means more are waiting).
        self.last_batch = 0

    # ------------------------------------------------------------------ integrating

    def integrate(self, *, wait: bool = False) -> CheckpointRow | None:
        """One round: integrate up to ``batch_max`` pending leaves and sign the new size
        (the empty tree's checkpoint when the log has none). Answers the latest checkpoint,
        or None when another worker holds the integrator's lock (``wait``: wait for it)."""
        self.last_batch = 0
        with self.db.write() as session:
            if not store.try_integrator_lock(session, wait=wait):
                return None
            last = store.latest_checkpoint(session)
            pending = store.pending_entries(session, self.batch_max)
            self.last_batch = len(pending)
            if last is not None and not pending:
                return last
            size = last.size if last is not None else 0
            edge = merkle.root_nodes(size)
            frontier = store.nodes(session, edge)
            if len(frontier) != len(edge):
                raise LogInconsistent(
                    f"the tree of {size} leaves is missing nodes of its right edge"
                )
            if last is not None and not hmac.compare_digest(
                merkle.tree_root(size, frontier), last.root
            ):
                raise LogInconsistent(
                    f"the stored tree of {size} leaves does not have the signed root"
                )
            made = merkle.new_nodes(size, [leaf_hash(data) for _, data in pending], frontier)
            new_size = size + len(pending)
            known = {**frontier, **made}
            new_root = merkle.tree_root(new_size, known)
            if last is not None and size > 0:
                needed = [n for n in merkle.consistency_nodes(size, new_size) if n not in known]
                known.update(store.nodes(session, needed))
                proof = merkle.consistency_proof(size, new_size, known)
                verify_consistency(size, new_size, proof, last.root, new_root)
            store.insert_nodes(session, made)
            store.assign_indices(session, [(eid, size + i) for i, (eid, _) in enumerate(pending)])
            row = CheckpointRow(new_size, new_root, self.key.sign(new_size, new_root), self.now())
            store.insert_checkpoint(session, row)
        if pending:
            log.info("log: integrated %d leaves, signed size %d", len(pending), new_size)
        return row

    def integrate_all(self) -> CheckpointRow | None:
        """Rounds until nothing is pending (a CLI, a test, a shutdown)."""
        row = None
        while True:
            before = row.size if row is not None else -1
            row = self.integrate(wait=True)
            if row is None or row.size == before:
                return row

    # ------------------------------------------------------------------ reading
    # Outside any transaction (Database.lookup: no BEGIN/ROLLBACK round trips on PostgreSQL):
    # a checkpoint and the nodes and indices it covers commit together and never change, so
    # reading the checkpoint first and then what it covers is consistent without a snapshot.

    def latest(self) -> CheckpointRow | None:
        with self.db.lookup() as session:
            return store.latest_checkpoint(session)

    def _size_ok(self, session: Any, size: int) -> CheckpointRow:
        last = store.latest_checkpoint(session)
        if last is None or size > last.size:
            raise NotFound(
                "log_size_unknown",
                f"the log has not signed a tree of {size} leaves yet "
                f"(latest: {last.size if last else 0})",
            )
        return last

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        _check(index=index, size=size)
        if index >= size:
            raise Invalid("log_bad_argument", f"index {index} is not below size {size}")
        with self.db.lookup() as session:
            self._size_ok(session, size)
            return self._inclusion(session, index, size)

    def _inclusion(self, session: Any, index: int, size: int) -> list[bytes]:
        got = store.nodes(session, merkle.inclusion_nodes(index, size))
        return merkle.inclusion_proof(index, size, got)

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        """The consistency proof from the tree of ``size1`` leaves to that of ``size2``."""
        _check(size1=size1, size2=size2)
        if size1 > size2:
            raise Invalid("log_bad_argument", f"size1 {size1} is larger than size2 {size2}")
        with self.db.lookup() as session:
            self._size_ok(session, size2)
            got = store.nodes(session, merkle.consistency_nodes(size1, size2))
            return merkle.consistency_proof(size1, size2, got)

    def tile(self, ref: TileRef) -> bytes:
        """A tile's hashes, or an entry bundle, as the latest checkpoint has them."""
        with self.db.lookup() as session:
            last = store.latest_checkpoint(session)
            size = last.size if last is not None else 0
            start = ref.index * WIDTH
            available = size if ref.level is None else size >> (HEIGHT * ref.level)
            if start + ref.width > available:
                raise NotFound(
                    "log_tile_unknown",
                    f"the log's tree of {size} leaves has no such tile (yet)",
                )
            if ref.level is None:
                entries = store.entries_by_index(session, start, start + ref.width)
                return bundle([data for _, data in entries])
            return b"".join(
                store.level_range(session, HEIGHT * ref.level, start, start + ref.width)
            )

    def bundle(self, digest: str) -> Bundle | None:
        """The leaf of an accepted envelope with its inclusion proof in the latest checkpoint;
        None before it is integrated (or if it has no leaf)."""
        with self.db.lookup() as session:
            found = store.entry_of_envelope(session, digest)
            if found is None:
                return None
            index, entry = found
            if index is None:
                return None
            last = store.latest_checkpoint(session)
            if last is None or index >= last.size:
                return None
            proof = self._inclusion(session, index, last.size)
            return Bundle(index, entry, proof, last.note)

    def bundles(self, digests: list[str]) -> tuple[str | None, list[Bundle], list[str]]:
        """Bundles of many accepted envelopes, all at ONE checkpoint (a report cites them
        together): (that checkpoint's note, the bundles, the digests not integrated yet)."""
        with self.db.lookup() as session:
            last = store.latest_checkpoint(session)
            if last is None:
                return None, [], list(digests)
            found: list[Bundle] = []
            missing: list[str] = []
            for digest in digests:
                entry = store.entry_of_envelope(session, digest)
                if entry is None or entry[0] is None or entry[0] >= last.size:
                    missing.append(digest)
                    continue
                index = entry[0]
                proof = self._inclusion(session, index, last.size)
                found.append(Bundle(index, entry[1], proof, last.note))
            return last.note, found, missing


def _check(**numbers: int) -> None:
    for name, value in numbers.items():
        if not 0 <= value <= MAX_TREE_SIZE:
            raise Invalid("log_bad_argument", f"{name} must be from 0 to 2^63-1")


class Integrator:
    """A background thread that integrates every ``interval_s`` (at most 1 s, so a committed
    leaf is in a signed checkpoint within about that), and once more when stopped."""

    def __init__(self, log_: Log, interval_s: float) -> None:
        self.log = log_
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="veu-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.log.integrate()
            except LogInconsistent:
                log.exception("log: refusing to sign; run veu-server log verify")
            except Exception:  # the database is away, say: the next round tries again
                log.exception("log: integration failed")
            if self.log.last_batch >= self.log.batch_max and not self._stop.is_set():
                continue  # a backlog: the next round at once
            if self._stop.wait(self.interval_s):
                try:
                    self.log.integrate_all()
                except Exception:
                    log.exception("log: the last integration failed")
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
