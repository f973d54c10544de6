"""The durable outbox: signed envelopes wait here, on disk, until the verifier acknowledges them.

Rules this module enforces:

1. :meth:`Spool.put` returns only when the envelope is durable: written to a temporary file,
   fsynced, renamed to ``<seq>.dsse.json``, and the directory fsynced. A crash at any point leaves
   either no file or the whole file, never a torn one under the final name.
2. The spool is bounded: a put that would take it past ``max_bytes`` raises :class:`SpoolFull`
   and writes nothing. What was set aside (``rejected/``, ``corrupt/``: the envelopes and their
   reason files) counts against the same bound until a person removes it, and a reason is cut to
   :data:`MAX_REASON_CHARS`, so a verifier's answers cannot grow the directory past it either.
   A full disk (ENOSPC, EDQUOT) is the same error, and its partial temporary file is removed.
   Evidence is never dropped silently: the caller stops taking snapshots.
3. :meth:`Spool.pending` lists sequence numbers in ascending order, so envelopes go out in chain
   order.
4. :meth:`Spool.read` checks what it returns: the bytes must be a well-formed envelope carrying the
   sequence number of its file name, signed by the host key when the spool knows it (that proves
   every byte; otherwise the payload must be a valid snapshot). Anything else raises
   :class:`SpoolCorrupt`.
5. Nothing leaves the spool except by :meth:`remove` (after the verifier acknowledged it) or by
   :meth:`quarantine` into ``rejected/`` (the verifier refused it for good) or ``corrupt/`` (the
   file is damaged), each with a reason file next to it for a person to read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from contract import (
    EvidenceError,
    MalformedError,
    envelope_digest,
    parse_envelope,
    parse_json_strict,
    parse_statement,
    verify_envelope,
)
from contract.fsutil import atomic_write, fsync_dir
from contract.keys import PublicKey

log = logging.getLogger(__name__)

SUFFIX = ".dsse.json"
REJECTED: Final = "rejected"
CORRUPT: Final = "corrupt"
QuarantineFolder = Literal["rejected", "corrupt"]

_NAME = re.compile(r"^(\d{20})\.dsse\.json$")
#: The longest reason kept next to a set-aside envelope (the verifier's detail is part of it).
MAX_REASON_CHARS = 2000
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class SpoolError(Exception):
    """A spool operation that failed. ``code`` is stable; ``detail`` is for a person."""

    code = "spool_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SpoolFull(SpoolError):
    """No room for another envelope (the configured limit, or the disk itself)."""

    code = "spool_full"


class SpoolCorrupt(SpoolError):
    """A spooled file that is not the envelope its name promises."""

    code = "spool_corrupt"

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(detail)
        self.seq = seq


@dataclass(frozen=True)
class Quarantined:
    seq: int
    folder: QuarantineFolder
    path: Path
    reason: str
    code: str
    at: float


def _payload_seq(payload: bytes) -> int | None:
    try:
        value = parse_json_strict(payload)
        seq = value["predicate"]["seq"]
    except (KeyError, TypeError) as exc:
        raise MalformedError("payload has no predicate.seq", code="schema_invalid") from exc
    return seq if isinstance(seq, int) else None


def file_name(seq: int) -> str:
    if seq < 1:
        raise ValueError(f"sequence numbers start at 1, got {seq}")
    return f"{seq:020d}{SUFFIX}"


class Spool:
    """Envelopes waiting for the verifier, one file per sequence number, in ``directory``."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        public_key: PublicKey | None = None,
        key_id: str | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        self._keys = {key_id: public_key} if public_key is not None and key_id else {}
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sizes: dict[int, int] = {}
        self._aside = 0
        self._scan()

    # -- bookkeeping ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the directory (another process, e.g. a snapshot worker, wrote to it)."""
        self._sizes = {}
        self._scan()

    def _scan(self) -> None:
        self._aside = sum(self._folder_bytes(folder) for folder in (REJECTED, CORRUPT))
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") and ".tmp" in entry.name:
                # A put that crashed before its rename: never acknowledged as durable.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            match = _NAME.match(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                self._sizes[int(match.group(1))] = entry.stat(follow_symlinks=False).st_size

    def _path(self, seq: int) -> Path:
        return self.directory / file_name(seq)

    @property
    def depth(self) -> int:
        return len(self._sizes)

    def _folder_bytes(self, folder: str) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(self.directory / folder):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    @property
    def bytes_used(self) -> int:
        """Bytes of the envelopes waiting to be sent."""
        return sum(self._sizes.values())

    @property
    def quarantined_bytes(self) -> int:
        """Bytes set aside in ``rejected/`` and ``corrupt/`` (envelopes and reasons)."""
        return self._aside

    def pending(self) -> list[int]:
        """Sequence numbers waiting to be sent, oldest first."""
        return sorted(self._sizes)

    def has_room(self, size: int) -> bool:
        return self.bytes_used + self._aside + size <= self.max_bytes

    # -- operations ----------------------------------------------------------------------------

    def put(self, seq: int, data: bytes) -> None:
        """Store ``data`` under ``seq`` durably before returning. Idempotent per ``seq``."""
        path = self._path(seq)
        old = self._sizes.get(seq)
        if old is not None:
            with contextlib.suppress(OSError):
                if path.read_bytes() == data:
                    return
            log.warning("spool: replacing a different envelope already stored for seq %d", seq)
        if self.bytes_used + self._aside - (old or 0) + len(data) > self.max_bytes:
            aside = (
                f" and {self._aside} bytes are set aside in {REJECTED}/ and {CORRUPT}/ (read "
                "and remove them)"
                if self._aside
                else ""
            )
            raise SpoolFull(
                f"spool {self.directory} is full: {self.depth} envelopes use "
                f"{self.bytes_used} bytes{aside}, of {self.max_bytes}, and seq {seq} needs "
                f"{len(data)} more; no snapshot is taken until the verifier acknowledges some "
                "(raise spool_max_bytes or restore the connection)"
            )
        try:
            atomic_write(path, data, mode=0o600)
        except OSError as exc:
            # atomic_write removes its temporary file on failure; make sure of it on ENOSPC.
            self._remove_temporaries(path)
            if exc.errno in _NO_SPACE:
                raise SpoolFull(
                    f"no space left on the device holding {self.directory} "
                    f"({os.strerror(exc.errno or errno.ENOSPC)}) while spooling seq {seq} "
                    f"({len(data)} bytes); no snapshot is taken until space returns"
                ) from exc
            raise
        self._sizes[seq] = len(data)

    def _remove_temporaries(self, path: Path) -> None:
        for entry in self.directory.glob(f".{path.name}.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()

    def read(self, seq: int) -> bytes:
        """The envelope stored for ``seq``, checked; :class:`SpoolCorrupt` when it is damaged."""
        path = self._path(seq)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            self._sizes.pop(seq, None)
            raise SpoolCorrupt(seq, f"{path} disappeared from the spool") from exc
        except OSError as exc:
            raise SpoolCorrupt(seq, f"{path} cannot be read: {exc.strerror}") from exc
        if not data:
            raise SpoolCorrupt(seq, f"{path} is empty (truncated)")
        try:
            envelope = parse_envelope(data)
            if self._keys:
                # The host's own signature proves every byte; reading one field is enough then.
                payload, _ = verify_envelope(envelope, self._keys)
                found = _payload_seq(payload)
            else:
                found = parse_statement(envelope.payload_bytes())[1].seq
        except EvidenceError as exc:
            raise SpoolCorrupt(
                seq, f"{path} is not a valid envelope ({exc.code}: {exc.detail})"
            ) from exc
        if found != seq:
            raise SpoolCorrupt(seq, f"{path} holds the snapshot with seq {found}, not seq {seq}")
        return data

    def remove(self, seq: int) -> None:
        """Forget ``seq`` after the verifier acknowledged it."""
        with contextlib.suppress(FileNotFoundError):
            self._path(seq).unlink()
        self._sizes.pop(seq, None)
        fsync_dir(self.directory)

    def quarantine(
        self, seq: int, reason: str, *, folder: QuarantineFolder, code: str = ""
    ) -> Quarantined:
        """Move ``seq`` out of the send queue into ``folder/``, next to a reason file."""
        if len(reason) > MAX_REASON_CHARS:
            reason = f"{reason[:MAX_REASON_CHARS]}... [{len(reason) - MAX_REASON_CHARS} more]"
        source = self._path(seq)
        target_dir = self.directory / folder
        target_dir.mkdir(exist_ok=True, mode=0o700)
        target = target_dir / source.name
        if target.exists():  # the same seq quarantined before (e.g. under an older key)
            target = target_dir / f"{seq:020d}.{time.time_ns()}{SUFFIX}"
        digest: str | None = None
        with contextlib.suppress(OSError, EvidenceError):
            digest = envelope_digest(parse_envelope(source.read_bytes()))
        now = time.time()
        moved = 0
        with contextlib.suppress(FileNotFoundError):
            os.replace(source, target)
            moved = target.stat().st_size
        self._sizes.pop(seq, None)
        fsync_dir(target_dir)
        fsync_dir(self.directory)
        note = {"seq": seq, "code": code[:64], "reason": reason, "digest": digest, "at": now}
        body = json.dumps(note, indent=2).encode()
        atomic_write(
            target.with_name(target.name.removesuffix(SUFFIX) + ".reason.json"), body, mode=0o600
        )
        self._aside += moved + len(body)
        return Quarantined(seq=seq, folder=folder, path=target, reason=reason, code=code, at=now)

    def quarantined(self, folder: QuarantineFolder) -> list[Quarantined]:
        """What ``folder/`` holds, oldest first, with the reasons recorded."""
        target_dir = self.directory / folder
        found: list[Quarantined] = []
        if not target_dir.is_dir():
            return found
        for note_path in sorted(target_dir.glob("*.reason.json")):
            try:
                note = json.loads(note_path.read_bytes())
                found.append(
                    Quarantined(
                        seq=int(note["seq"]),
                        folder=folder,
                        path=note_path.with_name(
                            note_path.name.removesuffix(".reason.json") + SUFFIX
                        ),
                        reason=str(note["reason"]),
                        code=str(note.get("code", "")),
                        at=float(note["at"]),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found
