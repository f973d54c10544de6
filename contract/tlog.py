"""Verifying the verifier's transparency log with nothing but its public key.

What a relying party (an agent host, an auditor, a witness) needs to check a log of this
project, and nothing of the verifier's stack (``hashlib`` and ``cryptography`` only):

- RFC 9162 Merkle hashing (§2.1.1: leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ l ‖ r))
  and the verification of inclusion and consistency proofs (§2.1.3.2 and §2.1.4.2);
- checkpoints in the C2SP ``tlog-checkpoint`` format inside a C2SP ``signed-note``: parsed
  strictly (bounded sizes, exact line grammar) and checked against an Ed25519 note key, whose key
  id is the first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key);
- :func:`verify_bundle`: a log entry, its inclusion proof and the signed checkpoint it reaches,
  as ``GET /v1/results/{digest}`` answers them.

The verifier's own log (server/log/) imports these functions: one implementation of each check.
Every refusal is a :class:`LogProofError` or a :class:`CheckpointError` with a stable ``code``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contract.errors import EvidenceError

__all__ = [
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "CheckpointError",
    "LogProofError",
    "NoteKey",
    "Signature",
    "SignedNote",
    "cosignature_message",
    "empty_root",
    "leaf_hash",
    "node_hash",
    "note_key_id",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "parse_verifier_key",
    "root_from_inclusion",
    "verifier_key",
    "verify_bundle",
    "verify_checkpoint",
    "verify_consistency",
    "verify_cosignature",
    "verify_inclusion",
]

HASH_SIZE = 32
#: Largest tree size (and index) any function here accepts: a signed 64-bit integer, as the
#: C2SP formats and Go's ``tlog`` bound it. Anything larger is hostile input, refused early.
MAX_TREE_SIZE = (1 << 63) - 1
#: Longest proof possible for a tree of MAX_TREE_SIZE leaves (two hashes per level, generous).
MAX_PROOF_HASHES = 2 * 64
#: A signed note bigger than this is refused unread (a checkpoint is a few hundred bytes).
MAX_NOTE_BYTES = 16 * 1024
MAX_SIGNATURES = 32
MAX_EXTENSION_LINES = 16
MAX_LINE = 1024

_LEAF = b"\x00"
_NODE = b"\x01"
_ED25519 = 0x01  # the C2SP signed-note signature type of Ed25519
_COSIGNATURE = 0x04  # C2SP tlog-cosignature/v1 (Ed25519 over a timestamped checkpoint)


class LogProofError(EvidenceError):
    """A Merkle proof that does not verify, or arguments no proof can satisfy."""

    code = "log_proof_invalid"


class CheckpointError(EvidenceError):
    """A signed note or checkpoint that is malformed, or not signed by the expected key."""

    code = "checkpoint_invalid"


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of one leaf's data."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: the hash of an interior node."""
    return hashlib.sha256(_NODE + left + right).digest()


def empty_root() -> bytes:
    """The root of the tree of no leaves: SHA-256 of the empty string."""
    return hashlib.sha256(b"").digest()


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LogProofError(f"{name} must be an integer", code="log_bad_argument")
    if value < 0 or value > MAX_TREE_SIZE:
        raise LogProofError(
            f"{name} {value} is out of range (0 to 2^63-1)", code="log_bad_argument"
        )
    return value


def _check_hashes(name: str, hashes: Sequence[bytes]) -> None:
    if len(hashes) > MAX_PROOF_HASHES:
        raise LogProofError(f"{name} has {len(hashes)} hashes; at most {MAX_PROOF_HASHES}")
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise LogProofError(f"every hash of {name} must be {HASH_SIZE} bytes")


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise LogProofError(f"{name} must be {HASH_SIZE} bytes", code="log_bad_argument")


# --------------------------------------------------------------------------- proofs


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof of leaf hash ``leaf`` at ``index`` in a tree of ``size``
    leaves leads to (RFC 9162 §2.1.3.2). Raises :class:`LogProofError` if the proof cannot
    belong to that position (wrong length, index past the end)."""
    index = _check_size("index", index)
    size = _check_size("size", size)
    _check_hash("leaf hash", leaf)
    _check_hashes("inclusion proof", proof)
    if index >= size:
        raise LogProofError(
            f"index {index} is not in a tree of {size} leaves", code="log_bad_argument"
        )
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise LogProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LogProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf`` is at ``index`` of the tree of ``size`` leaves whose root
    is ``root``; raises :class:`LogProofError` when it is not."""
    _check_hash("root", root)
    got = root_from_inclusion(index, size, leaf, proof)
    if not hmac.compare_digest(got, root):
        raise LogProofError(
            f"inclusion proof of index {index} does not lead to the root of size {size}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` leaves with root ``root2`` extends the tree of
    ``size1`` leaves with root ``root1`` (RFC 9162 §2.1.4.2); raises :class:`LogProofError`
    when it does not."""
    size1 = _check_size("size1", size1)
    size2 = _check_size("size2", size2)
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    _check_hashes("consistency proof", proof)
    if size1 > size2:
        raise LogProofError(
            f"size1 {size1} is larger than size2 {size2}: a log never shrinks",
            code="log_bad_argument",
        )
    if size1 == size2:
        if proof:
            raise LogProofError("a consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(root1, root2):
            raise LogProofError(f"two different roots for one size {size1}: a split view")
        return
    if size1 == 0:
        if proof:
            raise LogProofError("a consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise LogProofError("empty consistency proof between different sizes")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LogProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LogProofError("consistency proof is shorter than needed")
    if not hmac.compare_digest(fr, root1):
        raise LogProofError(f"consistency proof does not lead to the root of size {size1}")
    if not hmac.compare_digest(sr, root2):
        raise LogProofError(f"consistency proof does not lead to the root of size {size2}")


# --------------------------------------------------------------------------- signed notes


def note_key_id(name: str, public_key: Ed25519PublicKey, *, kind: int = _ED25519) -> bytes:
    """C2SP signed-note: the 4-byte key id of an Ed25519 key named ``name`` (``kind`` 0x04:
    a witness's tlog-cosignature key)."""
    raw = _raw(public_key)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([kind]) + raw).digest()[:4]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verifier_key(name: str, public_key: Ed25519PublicKey, *, kind: int = _ED25519) -> str:
    """The note verifier key string ``<name>+<hex key id>+<base64(type ‖ key)>`` (the format of
    Go's ``golang.org/x/mod/sumdb/note``), which a relying party pins."""
    raw = bytes([kind]) + _raw(public_key)
    kid = note_key_id(name, public_key, kind=kind).hex()
    return f"{name}+{kid}+{base64.b64encode(raw).decode()}"


@dataclass(frozen=True)
class NoteKey:
    """A pinned note key: its name, 4-byte id and Ed25519 public key; ``kind`` 0x01 signs
    notes, 0x04 cosigns checkpoints (a witness)."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey
    kind: int = _ED25519


_NAME = re.compile(r"^[^\s+]{1,256}$")


def parse_verifier_key(text: str, *, kind: int = _ED25519) -> NoteKey:
    """Parse a verifier key string (see :func:`verifier_key`) of type ``kind``, checking its
    key id."""
    parts = text.strip().split("+", 2)  # the base64 key may hold a "+"
    if len(parts) != 3 or not _NAME.match(parts[0]) or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise CheckpointError("a log key is <name>+<8 hex digits>+<base64 key>", code="bad_log_key")
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("the log key's key part is not base64", code="bad_log_key") from None
    if len(raw) != 33 or raw[0] != kind:
        raise CheckpointError(
            f"the key is not an Ed25519 note key of type {kind:#04x}", code="bad_log_key"
        )
    public = Ed25519PublicKey.from_public_bytes(raw[1:])
    if note_key_id(parts[0], public, kind=kind).hex() != parts[1]:
        raise CheckpointError(
            "the log key's id does not match its name and key", code="bad_log_key"
        )
    return NoteKey(parts[0], bytes.fromhex(parts[1]), public, kind)


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A signed note: its text (every line ends in a newline) and its signature lines."""

    text: str
    signatures: tuple[Signature, ...]


_SIG_LINE = re.compile(r"^\u2014 ([^\s+]{1,256}) ([A-Za-z0-9+/]+={0,2})$")


def parse_note(data: bytes | str) -> SignedNote:
    """Parse a C2SP signed note strictly: UTF-8, at most 16 KiB, no control characters but the
    newline, a text ending in a newline, one blank line, then 1 to 32 signature lines."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_NOTE_BYTES:
        raise CheckpointError(f"the note is larger than {MAX_NOTE_BYTES} bytes", code="bad_note")
    try:
        note = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("the note is not UTF-8", code="bad_note") from None
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in note):
        raise CheckpointError("the note holds a control character", code="bad_note")
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not text or not sigs.endswith("\n"):
        raise CheckpointError(
            "the note must be its text, a blank line and signature lines, each ending in a newline",
            code="bad_note",
        )
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"more than {MAX_SIGNATURES} signatures", code="bad_note")
    signatures = []
    for line in lines:
        m = _SIG_LINE.match(line)
        if m is None:
            raise CheckpointError(f"bad signature line {line[:80]!r}", code="bad_note")
        try:
            blob = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise CheckpointError("a signature is not base64", code="bad_note") from None
        if len(blob) < 5:
            raise CheckpointError("a signature is too short", code="bad_note")
        signatures.append(Signature(m.group(1), blob[:4], blob[4:]))
    return SignedNote(text + "\n", tuple(signatures))


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint: the log's origin, its size and root hash, and any extension
    lines; ``note`` is the signed note it came in (or was signed into)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The checkpoint's note text."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines)


_SIZE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text strictly (origin; decimal size without leading zeros, at
    most 2^63-1; base64 of a 32-byte root; at most 16 extension lines)."""
    if not text.endswith("\n"):
        raise CheckpointError("the checkpoint text must end in a newline", code="bad_checkpoint")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or len(lines) > 3 + MAX_EXTENSION_LINES:
        raise CheckpointError(
            "a checkpoint is an origin, a size, a root hash and at most 16 extension lines",
            code="bad_checkpoint",
        )
    if any(not line or len(line) > MAX_LINE for line in lines):
        raise CheckpointError("a checkpoint line is empty or too long", code="bad_checkpoint")
    origin, size_text, root_text = lines[:3]
    if not _SIZE.match(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise CheckpointError(f"bad tree size {size_text[:30]!r}", code="bad_checkpoint")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("the root hash is not base64", code="bad_checkpoint") from None
    if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_text:
        raise CheckpointError("the root hash is not 32 bytes of base64", code="bad_checkpoint")
    return Checkpoint(origin, int(size_text), root, tuple(lines[3:]))


def open_note(note: bytes | str, key: NoteKey) -> str:
    """Parse a signed note and check the signature of ``key`` on it; answers the note's text.
    Signatures of other keys are ignored (C2SP: a witness's cosignatures ride along)."""
    signed = parse_note(note)
    mine = [s for s in signed.signatures if s.name == key.name and s.key_id == key.key_id]
    if not mine:
        raise CheckpointError(
            f"the note carries no signature of {key.name[:80]}", code="checkpoint_unsigned"
        )
    message = signed.text.encode("utf-8")
    for sig in mine:
        try:
            key.public_key.verify(sig.signature, message)
        except InvalidSignature:
            continue
        return signed.text
    raise CheckpointError(
        f"the signature of {key.name[:80]} does not verify", code="checkpoint_bad_signature"
    )


def verify_checkpoint(note: bytes | str, key: NoteKey, *, origin: str | None = None) -> Checkpoint:
    """Parse a signed checkpoint and check the signature of ``key`` on it. ``origin``: the log
    it must be from (default: the key's name)."""
    checkpoint = parse_checkpoint(open_note(note, key))
    want = origin if origin is not None else key.name
    if checkpoint.origin != want:
        raise CheckpointError(
            f"the checkpoint is of log {checkpoint.origin[:80]!r}, not {want[:80]!r}",
            code="checkpoint_wrong_origin",
        )
    return checkpoint


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """What a C2SP tlog-cosignature/v1 signs: a header with the time, then the checkpoint."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


def verify_cosignature(note: bytes | str, witness: NoteKey) -> int:
    """Check a witness's tlog-cosignature on a checkpoint note; answers its timestamp (Unix
    seconds). The log's own signature is not checked here (:func:`verify_checkpoint` does)."""
    signed = parse_note(note)
    parse_checkpoint(signed.text)
    if witness.kind != _COSIGNATURE:
        raise CheckpointError("a witness key has type 0x04", code="bad_log_key")
    for sig in signed.signatures:
        if sig.name != witness.name or sig.key_id != witness.key_id or len(sig.signature) != 72:
            continue
        timestamp = int.from_bytes(sig.signature[:8], "big")
        try:
            witness.public_key.verify(
                sig.signature[8:], cosignature_message(signed.text, timestamp)
            )
        except InvalidSignature:
            continue
        return timestamp
    raise CheckpointError(
        f"the checkpoint carries no valid cosignature of {witness.name[:80]}",
        code="checkpoint_not_cosigned",
    )


def verify_bundle(
    entry: bytes, index: int, proof: Sequence[bytes], checkpoint: bytes | str, key: NoteKey
) -> Checkpoint:
    """Check a log bundle: ``entry`` (the leaf's data) is at ``index`` of the tree the signed
    ``checkpoint`` commits to. Answers the checkpoint."""
    cp = verify_checkpoint(checkpoint, key)
    verify_inclusion(index, cp.size, leaf_hash(entry), proof, cp.root)
    return cp
