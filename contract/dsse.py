"""The DSSE envelope: Ed25519 signatures over DSSE's pre-authentication encoding (PAE), and
:func:`envelope_digest`, defined once.

The digest is lowercase hex SHA-256 over the (canonical) payload bytes; ``prev`` in the next
snapshot is that digest, and the verifier deduplicates by it. :func:`open_envelope` is everything a
reader does offline: shape, signature, canonical form, schema.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from contract._model import Strict as _Strict
from contract._model import summarize as _summarize
from contract.errors import MalformedError, SchemaError, SignatureError
from contract.jsonstrict import canonical_bytes, parse_json_strict
from contract.keys import PublicKey, Signer, verify_signature
from contract.snapshot import SnapshotV1
from contract.statement import Statement, parse_statement

PAYLOAD_TYPE = "application/vnd.in-toto+json"

#: Largest envelope either side accepts by default (the verifier's body cap).
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


class Signature(_Strict):
    keyid: str
    sig: str


class Envelope(_Strict):
    payloadType: str  # DSSE spelling
    payload: str
    signatures: list[Signature]

    def payload_bytes(self) -> bytes:
        return b64decode_strict(self.payload, "payload")

    def to_bytes(self) -> bytes:
        """Wire form: JCS of the envelope (stable, so stored bytes are reproducible)."""
        return canonical_bytes(self.model_dump())


def b64decode_strict(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedError(f"{what} is not valid standard base64", code="bad_base64") from exc


def sign_envelope(payload: bytes, key: Ed25519PrivateKey | Signer, keyid: str) -> Envelope:
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return Envelope(
        payloadType=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode("ascii"),
        signatures=[Signature(keyid=keyid, sig=base64.b64encode(sig).decode("ascii"))],
    )


def parse_envelope(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Shape checks only: size, strict JSON, DSSE fields, payload type."""
    if len(data) > max_bytes:
        raise MalformedError(
            f"envelope is {len(data)} bytes; the limit is {max_bytes}", code="too_large"
        )
    value = parse_json_strict(data)
    if not isinstance(value, dict):
        raise MalformedError("envelope must be a JSON object", code="bad_envelope")
    try:
        envelope = Envelope.model_validate(value)
    except ValidationError as exc:
        raise MalformedError(
            _summarize(exc).replace("schema", "envelope"), code="bad_envelope"
        ) from exc
    if envelope.payloadType != PAYLOAD_TYPE:
        raise MalformedError(
            f"payloadType must be {PAYLOAD_TYPE!r}, got {envelope.payloadType[:80]!r}",
            code="bad_payload_type",
        )
    if not envelope.signatures:
        raise SignatureError("envelope carries no signatures", code="no_signature")
    return envelope


def verify_envelope(
    envelope: Envelope, keys: Mapping[str, PublicKey], *, payload: bytes | None = None
) -> tuple[bytes, str]:
    """Return (payload, keyid) for the first signature made by a key in ``keys``.

    Signatures by unknown key ids are skipped (DSSE allows several signers); at least one known
    signature must verify, and any known-key signature that fails is an error. Both kinds of
    host key verify (Ed25519; ECDSA P-256 over SHA-256, DER). ``payload``:
    ``envelope.payload_bytes()``, if the caller already decoded it.
    """
    if payload is None:
        payload = envelope.payload_bytes()
    message = pae(envelope.payloadType, payload)
    verified: str | None = None
    for signature in envelope.signatures:
        key = keys.get(signature.keyid)
        if key is None:
            continue
        raw = b64decode_strict(signature.sig, "signature")
        try:
            verify_signature(key, raw, message)
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature by key {signature.keyid[:16]}… does not verify over this payload"
            ) from exc
        verified = verified or signature.keyid
    if verified is None:
        ids = ", ".join(s.keyid[:16] for s in envelope.signatures)
        raise SignatureError(f"no signature by a known key (signed by: {ids})", code="unknown_key")
    return payload, verified


def envelope_digest(envelope: Envelope) -> str:
    """THE digest of a snapshot: lowercase hex SHA-256 of its canonical payload bytes.

    Signatures are excluded on purpose: Ed25519 is deterministic, and a digest that ignored the
    payload's signer set would still identify the same statement.
    """
    return hashlib.sha256(envelope.payload_bytes()).hexdigest()


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def open_envelope(
    data: bytes, keys: Mapping[str, PublicKey]
) -> tuple[Envelope, str, Statement, SnapshotV1]:
    """Everything a reader does offline: shape, signature, canonical form, schema."""
    envelope = parse_envelope(data)
    payload, keyid = verify_envelope(envelope, keys)
    statement, snapshot = parse_statement(payload)
    if snapshot.agent.key_id != keyid:
        raise SchemaError(
            "predicate agent.key_id does not match the signing key", code="key_mismatch"
        )
    return envelope, keyid, statement, snapshot
