"""A witness: follow another verifier's log, check that every checkpoint it publishes extends
the last one this witness saw, and cosign it (C2SP ``tlog-cosignature/v1``), or raise the alarm.

The log a witness follows is named by its URL and pinned note key. Each round reads
``/log/checkpoint``, checks the log's signature, and compares it with the last checkpoint kept in
the witness's state directory: the same size must have the same root, a smaller size is a
rollback, a larger one must come with a consistency proof
(``/v1/log/proof/consistency``) that verifies against both roots. A checkpoint that passes is
cosigned with the witness's own key (``witness.key``, 0600) and kept as ``latest.cosigned``; one
that fails is a split view: both signed checkpoints (and the proof that did not verify) are
written to ``alarm-<time>.json``, which is proof of misbehaviour anyone can check with the log's
key, and the witness stops cosigning that log.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.errors import EvidenceError
from contract.fsutil import atomic_write
from contract.tlog import (
    Checkpoint,
    NoteKey,
    cosignature_message,
    note_key_id,
    parse_note,
    verifier_key,
    verify_checkpoint,
    verify_consistency,
)
from server.errors import Conflict, Invalid

__all__ = ["SplitView", "Witness", "WitnessRound"]

_COSIGNATURE = 0x04
_MAX_BODY = 64 * 1024


class SplitView(Conflict):
    """The log published a checkpoint inconsistent with one it published before."""

    def __init__(self, detail: str, evidence: Path) -> None:
        super().__init__("split_view", f"{detail}; both checkpoints are in {evidence}")
        self.evidence = evidence


@dataclass(frozen=True)
class WitnessRound:
    previous: Checkpoint | None
    checkpoint: Checkpoint
    cosigned: str


class Witness:
    """One witness of one log: the log's URL and pinned key, and this witness's key and state."""

    def __init__(
        self,
        url: str,
        log_key: NoteKey,
        key: Ed25519PrivateKey,
        name: str,
        state_dir: Path,
        *,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.log_key = log_key
        self.key = key
        self.name = name
        self.state_dir = state_dir
        self.client = client or httpx.Client(timeout=30)
        self.key_id = note_key_id(name, key.public_key(), kind=_COSIGNATURE)

    @property
    def verifier_key(self) -> str:
        """The witness's cosignature key to pin (type 0x04)."""
        return verifier_key(self.name, self.key.public_key(), kind=_COSIGNATURE)

    def _get(self, path: str, **params: int) -> httpx.Response:
        r = self.client.get(f"{self.url}{path}", params=params or None)
        if r.status_code != 200:
            raise Invalid(
                "log_unreachable", f"{self.url}{path} answered {r.status_code}: {r.text[:200]}"
            )
        if len(r.content) > _MAX_BODY:
            raise Invalid("log_unreachable", f"{self.url}{path} answered over {_MAX_BODY} bytes")
        return r

    def _alarm(self, detail: str, old: str, new: str, proof: list[str] | None) -> SplitView:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.state_dir / f"alarm-{int(time.time())}.json"
        body = {
            "log": self.url,
            "log_key": verifier_key(self.log_key.name, self.log_key.public_key),
            "detail": detail,
            "earlier_checkpoint": old,
            "later_checkpoint": new,
            "consistency_proof": proof,
        }
        atomic_write(path, json.dumps(body, indent=2).encode(), mode=0o600)
        (self.state_dir / "ALARM").write_text(str(path) + "\n")
        return SplitView(detail, path)

    def round(self, now: int | None = None) -> WitnessRound:
        """Check the log's latest checkpoint against the last one seen; cosign it or raise
        :class:`SplitView`. A witness that raised once refuses to cosign again until its
        ``ALARM`` file is removed (an operator looked)."""
        if (self.state_dir / "ALARM").exists():
            raise Conflict(
                "split_view",
                f"this witness saw a split view of {self.url}; see "
                f"{(self.state_dir / 'ALARM').read_text().strip()}",
            )
        note = self._get("/log/checkpoint").text
        try:
            new = verify_checkpoint(note, self.log_key)
        except EvidenceError as exc:
            raise Invalid(exc.code, f"the log's checkpoint: {exc.detail}") from None
        last_path = self.state_dir / "latest.checkpoint"
        old_note = last_path.read_text() if last_path.exists() else None
        old = verify_checkpoint(old_note, self.log_key) if old_note is not None else None
        if old is not None and old_note is not None:
            if new.size < old.size:
                raise self._alarm(
                    f"the log went back from size {old.size} to {new.size}", old_note, note, None
                )
            proof: list[str] = []
            if new.size > old.size:
                proof = self._get(
                    "/v1/log/proof/consistency", size1=old.size, size2=new.size
                ).json()["proof"]
            try:
                verify_consistency(
                    old.size, new.size, [base64.b64decode(p) for p in proof], old.root, new.root
                )
            except (EvidenceError, ValueError) as exc:
                raise self._alarm(
                    f"the checkpoint of size {new.size} is not consistent with the one of size "
                    f"{old.size} seen before ({exc})",
                    old_note,
                    note,
                    proof,
                ) from None
        cosigned = self.cosign(note, int(time.time()) if now is None else now)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(last_path, note.encode(), mode=0o600)
        atomic_write(self.state_dir / "latest.cosigned", cosigned.encode(), mode=0o600)
        return WitnessRound(old, new, cosigned)

    def cosign(self, note: str, timestamp: int) -> str:
        """``note`` with this witness's tlog-cosignature/v1 line added."""
        text = parse_note(note).text
        sig = self.key.sign(cosignature_message(text, timestamp))
        blob = base64.b64encode(self.key_id + timestamp.to_bytes(8, "big") + sig).decode()
        return f"{note}\u2014 {self.name} {blob}\n"
