"""Signed agent requests: how a host proves it holds its key on calls that carry no envelope.

Check-ins and challenge requests are small and carry no evidence, so instead of a DSSE envelope
the agent signs a request line. Both ends import this module, so the string signed is defined once:

    veu-attest-request-v1 \\n METHOD \\n PATH \\n TIMESTAMP \\n KEY_ID \\n hex(sha256(BODY))

Headers: ``X-VEU-Key-Id``, ``X-VEU-Timestamp`` (RFC 3339 UTC), ``X-VEU-Signature`` (base64; see
contract.keys.verify_signature for the two kinds of host key).
The verifier checks the key is enrolled and active and the timestamp is within its skew. A replayed
request inside that window can only obtain another nonce or read its own pending challenge, which
is harmless; evidence itself is protected by the envelope's chain and nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.keys import PublicKey, Signer, verify_signature

HEADER_KEY_ID = "X-VEU-Key-Id"
HEADER_TIMESTAMP = "X-VEU-Timestamp"
HEADER_SIGNATURE = "X-VEU-Signature"

ENROLL_CONTEXT = b"veu-attest-enroll-v1"


def request_message(method: str, path: str, timestamp: str, key_id: str, body: bytes) -> bytes:
    return "\n".join(
        [
            "veu-attest-request-v1",
            method.upper(),
            path,
            timestamp,
            key_id,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode("utf-8")


def sign_request(
    key: Ed25519PrivateKey | Signer,
    key_id: str,
    method: str,
    path: str,
    timestamp: str,
    body: bytes,
) -> dict[str, str]:
    sig = key.sign(request_message(method, path, timestamp, key_id, body))
    return {
        HEADER_KEY_ID: key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_SIGNATURE: base64.b64encode(sig).decode("ascii"),
    }


def verify_request(
    public_key: PublicKey,
    key_id: str,
    method: str,
    path: str,
    timestamp: str,
    body: bytes,
    signature_b64: str,
) -> bool:
    try:
        sig = base64.b64decode(signature_b64.encode("ascii"), validate=True)
        verify_signature(public_key, sig, request_message(method, path, timestamp, key_id, body))
    except (InvalidSignature, binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return True


def enroll_message(token: str, key_id: str) -> bytes:
    """What the agent signs at enrollment to prove it holds the private key.

    Binding the token (by its hash) and the key id means a proof cannot be reused for another
    enrollment or another key.
    """
    return b"\n".join(
        [
            ENROLL_CONTEXT,
            hashlib.sha256(token.encode("utf-8")).hexdigest().encode(),
            key_id.encode(),
        ]
    )
