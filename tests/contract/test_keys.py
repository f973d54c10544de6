"""Key ids and public-key encodings, as both ends compute and read them."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import (
    KeyFormatError,
    key_id,
    load_public_pem,
    public_from_raw,
    public_pem,
    raw_public,
)


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    assert key_id(public) == hashlib.sha256(raw_public(public)).hexdigest()
    assert len(raw_public(public)) == 32
    assert key_id(load_public_pem(public_pem(public))) == key_id(public)
    assert key_id(public_from_raw(raw_public(public))) == key_id(public)


def test_what_is_not_an_ed25519_public_key_is_a_key_format_error() -> None:
    ec_pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for bad in (b"not a key", ec_pem):
        with pytest.raises(KeyFormatError) as err:
            load_public_pem(bad)
        assert err.value.code == "bad_public_key" and err.value.detail
    with pytest.raises(KeyFormatError) as err:
        public_from_raw(b"\x00" * 31)
    assert err.value.code == "bad_public_key"
