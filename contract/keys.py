"""Host key encodings and key ids, as both ends compute them.

Two kinds of host key: Ed25519 (a key in a file) and ECDSA P-256 (a key held in a TPM, which has
no Ed25519). The key id is the lowercase hex SHA-256 of the raw public key: the 32 Ed25519 bytes,
or the 65-byte uncompressed SEC1 point of a P-256 key; anyone holding the public key can
recompute it, and the lengths keep the two kinds apart. Public keys travel as PEM
(SubjectPublicKeyInfo) or raw bytes; file private keys are stored as unencrypted PKCS#8 PEM (the
files themselves are each side's business). A P-256 host key signs with ECDSA over SHA-256, the
signature DER-encoded (as DSSE's ECDSA signers do).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract.errors import KeyFormatError

#: A host's public key: Ed25519, or ECDSA on P-256 (a TPM key).
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
_P256_RAW = 65


class Signer(Protocol):
    """What signs for a host: an Ed25519 private key, or a TPM-resident P-256 key
    (agent.tpm). ``sign`` returns the signature as :func:`verify_signature` checks it."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> PublicKey: ...


def raw_public(key: PublicKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()


def key_kind(key: PublicKey) -> str:
    """``ed25519`` or ``ecdsa-p256``."""
    return "ecdsa-p256" if isinstance(key, ec.EllipticCurvePublicKey) else "ed25519"


def verify_signature(key: PublicKey, signature: bytes, data: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is ``key``'s over ``data`` (Ed25519, or
    ECDSA P-256 with SHA-256, DER-encoded)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except ValueError as exc:  # not DER
            raise InvalidSignature("not a DER ECDSA signature") from exc
        return
    key.verify(signature, data)


def _checked(key: object) -> PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise KeyFormatError("public key is neither Ed25519 nor ECDSA P-256")


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_public_pem(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (the verifier's key, a file host key)."""
    key = load_host_public_pem(data)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError("public key is not Ed25519")
    return key


def load_host_public_pem(data: bytes) -> PublicKey:
    """A host public key of either kind from PEM."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFormatError(f"not a PEM public key: {exc}") from exc
    return _checked(key)


def public_from_raw(raw: bytes) -> PublicKey:
    """32 bytes: Ed25519; 65 bytes: an uncompressed P-256 point."""
    if len(raw) == _P256_RAW:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError as exc:
            raise KeyFormatError("public key is not a point on P-256") from exc
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFormatError(
            "public key must be 32 raw Ed25519 bytes or a 65-byte uncompressed P-256 point"
        ) from exc
