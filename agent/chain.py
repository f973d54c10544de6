"""The host's hash chain: sequence numbers, ``prev`` digests, and crash-safe advancement.

Rules this module enforces:

1. Every snapshot a key signs has ``seq = head.seq + 1`` and ``prev = head.digest`` (the first has
   ``seq = 1`` and ``prev = null``).
2. The signed envelope is made durable (the journal file, then the outbox when there is one)
   *before* the head moves. The head file is replaced atomically (write, fsync, rename).
3. On start-up, an envelope in the journal that continues the head (crash after step 2's first
   write, before the head moved) is adopted: it is put in the outbox and the head rolls forward.
   So a crash can never yield two different snapshots with the same ``seq``.
4. A head written for another key (the host key was replaced with ``init --force``) is ignored:
   a new key starts a new chain.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from contract import (
    Envelope,
    EvidenceError,
    SnapshotV1,
    envelope_digest,
    parse_envelope,
    parse_statement,
    payload_digest,
    sign_envelope,
    statement_bytes,
)
from contract.fsutil import atomic_write
from contract.keys import Signer
from contract.keys import key_id as compute_key_id

log = logging.getLogger(__name__)

HEAD_NAME = "head.json"
JOURNAL_NAME = "journal.dsse.json"
LOCK_NAME = "chain.lock"


@contextlib.contextmanager
def chain_lock(state_dir: Path) -> Iterator[None]:
    """Exclusive lock so the daemon and an on-demand ``attest`` never sign the same seq."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Outbox(Protocol):
    def put(self, seq: int, data: bytes) -> None:
        """Store ``data`` durably under ``seq`` (idempotent) before returning."""


class ChainError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Head:
    seq: int
    digest: str
    key_id: str


@dataclass(frozen=True)
class Taken:
    envelope: Envelope
    raw: bytes
    digest: str
    snapshot: SnapshotV1


class Chain:
    def __init__(self, state_dir: Path, key: Signer, *, outbox: Outbox | None = None) -> None:
        self.state_dir = state_dir
        self.key = key
        self.key_id = compute_key_id(key.public_key())
        self.outbox = outbox
        with chain_lock(state_dir):
            self._recover()

    # -- state files -------------------------------------------------------------------------

    def head(self) -> Head | None:
        path = self.state_dir / HEAD_NAME
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChainError(
                "corrupt_head",
                f"{path} is unreadable ({exc}); restore it from backup or re-enroll the host",
            ) from exc
        if not isinstance(data, dict) or data.get("key_id") != self.key_id:
            return None
        try:
            return Head(seq=int(data["seq"]), digest=str(data["digest"]), key_id=self.key_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError("corrupt_head", f"{path} lacks seq/digest") from exc

    def _write_head(self, head: Head) -> None:
        body = json.dumps({"seq": head.seq, "digest": head.digest, "key_id": head.key_id})
        atomic_write(self.state_dir / HEAD_NAME, body.encode(), mode=0o600)

    def _recover(self) -> None:
        journal = self.state_dir / JOURNAL_NAME
        try:
            raw = journal.read_bytes()
        except FileNotFoundError:
            return
        head = self.head()
        try:
            envelope = parse_envelope(raw)
            payload = envelope.payload_bytes()
            if head is not None and payload_digest(payload) == head.digest:
                return  # the usual case: the journal holds the head itself
            _, snapshot = parse_statement(payload)
        except EvidenceError as exc:
            # The journal is written atomically, so this is outside damage. The head is intact
            # and still authoritative; keep the file aside for inspection.
            log.error("journal %s is unreadable (%s); moving it aside", journal, exc.detail)
            journal.rename(journal.with_suffix(".corrupt"))
            return
        if snapshot.agent.key_id != self.key_id:
            return
        expected_seq = 1 if head is None else head.seq + 1
        expected_prev = None if head is None else head.digest
        if snapshot.seq == expected_seq and snapshot.prev == expected_prev:
            digest = envelope_digest(envelope)
            log.warning("recovering snapshot seq %d written before a crash", snapshot.seq)
            if self.outbox is not None:
                self.outbox.put(snapshot.seq, raw)
            self._write_head(Head(snapshot.seq, digest, self.key_id))

    # -- advancing ---------------------------------------------------------------------------

    def advance(self, build: Callable[[int, str | None], SnapshotV1]) -> Taken:
        """Build the next snapshot with (seq, prev), sign it, make it durable, move the head."""
        with chain_lock(self.state_dir):
            self._recover()
            return self._advance_locked(build)

    def sign_unchained(self, build: Callable[[int, str | None], SnapshotV1]) -> Taken:
        """Build and sign what the next snapshot would be, writing nothing: the head, journal
        and outbox stay as they are (``veu-agent snapshot --dry-run``)."""
        head = self.head()
        seq = 1 if head is None else head.seq + 1
        snapshot = build(seq, None if head is None else head.digest)
        envelope = sign_envelope(statement_bytes(snapshot), self.key, self.key_id)
        return Taken(envelope, envelope.to_bytes(), envelope_digest(envelope), snapshot)

    def _advance_locked(self, build: Callable[[int, str | None], SnapshotV1]) -> Taken:
        head = self.head()
        seq = 1 if head is None else head.seq + 1
        prev = None if head is None else head.digest
        snapshot = build(seq, prev)
        if snapshot.seq != seq or snapshot.prev != prev:
            raise ChainError("chain_mismatch", "builder ignored the seq/prev it was given")
        if snapshot.agent.key_id != self.key_id:
            raise ChainError("key_mismatch", "snapshot names another key id than the host key")
        envelope = sign_envelope(statement_bytes(snapshot), self.key, self.key_id)
        raw = envelope.to_bytes()
        digest = envelope_digest(envelope)
        atomic_write(self.state_dir / JOURNAL_NAME, raw, mode=0o600)
        if self.outbox is not None:
            self.outbox.put(seq, raw)
        self._write_head(Head(seq, digest, self.key_id))
        return Taken(envelope=envelope, raw=raw, digest=digest, snapshot=snapshot)
