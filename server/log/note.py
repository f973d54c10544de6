"""The log's key and its signed checkpoints (C2SP ``tlog-checkpoint`` in a ``signed-note``).

The log key is an Ed25519 key of its own (``log.key`` in the data directory, PKCS#8 PEM, 0600,
created on first use, never logged), separate from the key that signs attestation results: a
leaked result key cannot forge the log's history, and a log key can be rotated with the log.
The key's name is the log's origin (``<verifier id>/log`` unless set), as C2SP recommends.
Parsing and verification are :mod:`contract.tlog`'s.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.tlog import Checkpoint, NoteKey, note_key_id, verifier_key
from server.results import load_or_create_private

__all__ = ["LogKey", "load_log_key", "sign_note"]


@dataclass(frozen=True)
class LogKey:
    """The log's signing key and its name (the origin line of every checkpoint)."""

    private: Ed25519PrivateKey
    origin: str

    @property
    def note_key(self) -> NoteKey:
        public = self.private.public_key()
        return NoteKey(self.origin, note_key_id(self.origin, public), public)

    @property
    def verifier_key(self) -> str:
        """What a relying party pins: ``<origin>+<key id>+<base64 key>``."""
        return verifier_key(self.origin, self.private.public_key())

    def sign(self, size: int, root: bytes) -> str:
        """The signed checkpoint note of a tree of ``size`` leaves with root ``root``."""
        return sign_note(Checkpoint(self.origin, size, root).body(), self.origin, self.private)


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """A C2SP signed note of ``text`` (ending in a newline) with one Ed25519 signature."""
    sig = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(note_key_id(name, key.public_key()) + sig).decode()
    return f"{text}\n\u2014 {name} {blob}\n"


def load_log_key(path: Path, origin: str) -> LogKey:
    """The log key at ``path`` (created 0600 if absent; one others can read is refused)."""
    return LogKey(load_or_create_private(path, kind="log"), origin)
