"""ECDSA P-256 host keys (what a TPM holds: it has no Ed25519) beside Ed25519 ones: key ids, raw
and PEM encodings, DSSE envelopes and signed requests verify with either kind."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import PAYLOAD_TYPE, Envelope, Signature, SignatureError, pae
from contract.dsse import sign_envelope, verify_envelope
from contract.errors import KeyFormatError
from contract.keys import (
    key_id,
    key_kind,
    load_host_public_pem,
    public_from_raw,
    public_pem,
    raw_public,
)
from contract.reqsign import sign_request, verify_request


class P256Signer:
    """An ECDSA P-256 signer as the TPM signer behaves (DER over SHA-256), in software."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()


def test_p256_key_ids_and_encodings_round_trip() -> None:
    public = P256Signer().public_key()
    raw = raw_public(public)
    assert len(raw) == 65 and raw[0] == 4
    assert key_id(public) == hashlib.sha256(raw).hexdigest()
    assert key_kind(public) == "ecdsa-p256"
    assert key_id(public_from_raw(raw)) == key_id(public)
    assert key_id(load_host_public_pem(public_pem(public))) == key_id(public)
    ed = Ed25519PrivateKey.generate().public_key()
    assert key_kind(public_from_raw(raw_public(ed))) == "ed25519"


def test_other_curves_and_bad_points_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = p384.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="neither Ed25519 nor ECDSA P-256"):
        load_host_public_pem(pem)
    with pytest.raises(KeyFormatError, match="not a point on P-256"):
        public_from_raw(b"\x04" + b"\x01" * 64)
    with pytest.raises(KeyFormatError):
        public_from_raw(b"\x00" * 40)


def test_dsse_envelopes_verify_with_either_kind() -> None:
    payload = b'{"x":1}'
    for signer in (P256Signer(), Ed25519PrivateKey.generate()):
        kid = key_id(signer.public_key())
        envelope = sign_envelope(payload, signer, kid)
        assert verify_envelope(envelope, {kid: signer.public_key()}) == (payload, kid)
        other = sign_envelope(b'{"x":2}', signer, kid).signatures[0]
        forged = Envelope(payloadType=PAYLOAD_TYPE, payload=envelope.payload, signatures=[other])
        with pytest.raises(SignatureError, match="does not verify"):
            verify_envelope(forged, {kid: signer.public_key()})


def test_a_p256_signature_that_is_not_der_is_a_bad_signature() -> None:
    signer = P256Signer()
    kid = key_id(signer.public_key())
    raw = signer.sign(pae(PAYLOAD_TYPE, b"{}"))
    envelope = Envelope(
        payloadType=PAYLOAD_TYPE,
        payload=base64.b64encode(b"{}").decode(),
        signatures=[Signature(keyid=kid, sig=base64.b64encode(raw[:-3]).decode())],
    )
    with pytest.raises(SignatureError) as caught:
        verify_envelope(envelope, {kid: signer.public_key()})
    assert caught.value.code == "bad_signature"


def test_signed_requests_verify_with_a_p256_key() -> None:
    signer = P256Signer()
    kid = key_id(signer.public_key())
    headers = sign_request(signer, kid, "GET", "/v1/checkin", "2026-01-01T00:00:00Z", b"")
    sig = headers["X-VEU-Signature"]
    args = (kid, "GET", "/v1/checkin", "2026-01-01T00:00:00Z", b"")
    assert verify_request(signer.public_key(), *args, sig)
    assert not verify_request(P256Signer().public_key(), *args, sig)
