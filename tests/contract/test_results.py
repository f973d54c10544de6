"""Signed results: what the verifier signs (joserfc, ``server.results``) the contract verifies
(``cryptography`` only), and every token that is not exactly that is refused with a stable code."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import ResultError, key_id, public_pem, result_status, verify_result
from contract.results import EAR_PROFILE, SUBMOD
from server.findings import Finding
from server.results import VerifierKey, load_or_create_key, sign_result


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _token(header: dict[str, Any], claims: dict[str, Any], key: Ed25519PrivateKey | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = key.sign(signing_input.encode("ascii")) if key is not None else b""
    return f"{signing_input}.{_b64(sig)}"


def _claims(status: str = "affirming") -> dict[str, Any]:
    return {"eat_profile": EAR_PROFILE, "iat": 1, "submods": {SUBMOD: {"ear.status": status}}}


@pytest.fixture(scope="module")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> VerifierKey:
    return load_or_create_key(Path(tmp_path_factory.mktemp("verifier")) / "verifier.key")


@pytest.fixture(scope="module")
def signed(verifier: VerifierKey) -> str:
    finding = Finding(
        condition_id="veu.test",
        severity="warning",
        subject="host:" + "cd" * 32,
        message="a warning",
        citation="15 CFR 748.15",
    )
    return sign_result(
        verifier,
        verifier_id="test",
        issued_at=datetime(2026, 1, 1, tzinfo=UTC),
        findings=[finding],
        digest="ab" * 32,
        host_key_id="cd" * 32,
        site_id="site-1",
        seq=7,
        nonce="n-1",
        policy_digest="ef" * 32,
    )


def test_server_signed_result_verifies_through_the_contract(
    verifier: VerifierKey, signed: str
) -> None:
    for public in (verifier.public, verifier.public_pem(), verifier.public_pem().encode()):
        claims = verify_result(signed, public)
        sub = claims["submods"][SUBMOD]
        assert (sub["digest"], sub["seq"], sub["nonce"]) == ("ab" * 32, 7, "n-1")
        assert result_status(claims) == "warning"
        assert sub["findings"][0]["condition_id"] == "veu.test"


def _code(token: str, public: Any) -> str:
    with pytest.raises(ResultError) as err:
        verify_result(token, public)
    assert err.value.detail  # a sentence for a person, not an empty message
    return err.value.code


def test_tampered_claims_are_refused(verifier: VerifierKey, signed: str) -> None:
    header, claims, sig = signed.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    decoded["submods"][SUBMOD]["ear.status"] = "affirming"
    forged = f"{header}.{_b64(json.dumps(decoded).encode())}.{sig}"
    assert _code(forged, verifier.public) == "result_bad_signature"
    bad_sig = f"{header}.{claims}.{_b64(b'x' * 64)}"
    assert _code(bad_sig, verifier.public) == "result_bad_signature"


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256", "Ed25519", None])
def test_other_algorithms_are_refused(verifier: VerifierKey, alg: str | None) -> None:
    header: dict[str, Any] = {"typ": "JWT", "kid": verifier.key_id}
    if alg is not None:
        header["alg"] = alg
    token = _token(header, _claims(), None if alg == "none" else verifier.private)
    assert _code(token, verifier.public) == "result_bad_alg"


def test_a_result_by_another_key_is_refused(verifier: VerifierKey, signed: str) -> None:
    other = Ed25519PrivateKey.generate()
    assert _code(signed, other.public_key()) == "result_wrong_key"
    assert _code(signed, public_pem(other.public_key())) == "result_wrong_key"
    # Without a kid the signature itself decides.
    anonymous = _token({"alg": "EdDSA", "typ": "JWT"}, _claims(), other)
    assert _code(anonymous, verifier.public) == "result_bad_signature"
    named = _token(
        {"alg": "EdDSA", "typ": "JWT", "kid": key_id(other.public_key())}, _claims(), other
    )
    assert verify_result(named, other.public_key())["submods"][SUBMOD]["ear.status"] == "affirming"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.AA",
        f"{_b64(b'not json')}.e30.AA",
        f"{_b64(b'[1]')}.e30.AA",
        _b64(b'{"alg":"EdDSA","alg":"none","typ":"JWT"}') + ".e30.AA",
        "é.e30.AA",
    ],
)
def test_malformed_tokens_are_refused(verifier: VerifierKey, token: str) -> None:
    assert _code(token, verifier.public) == "result_malformed"


def test_header_checks(verifier: VerifierKey) -> None:
    key = verifier.private
    assert _code(_token({"alg": "EdDSA", "typ": "JOSE"}, _claims(), key), key.public_key()) == (
        "result_malformed"
    )
    assert _code(_token({"alg": "EdDSA"}, _claims(), key), key.public_key()) == "result_malformed"
    crit = {"alg": "EdDSA", "typ": "JWT", "crit": ["exp"], "exp": 1}
    assert _code(_token(crit, _claims(), key), key.public_key()) == "result_malformed"


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": 1, "submods": {SUBMOD: {"ear.status": "affirming"}}},
        {"eat_profile": EAR_PROFILE, "submods": {}},
        {"eat_profile": EAR_PROFILE, "submods": []},
        {"eat_profile": EAR_PROFILE, "submods": {SUBMOD: {"digest": "x"}}},
    ],
)
def test_signed_tokens_without_the_ear_shape_are_refused(
    verifier: VerifierKey, claims: dict[str, Any]
) -> None:
    token = _token({"alg": "EdDSA", "typ": "JWT", "kid": verifier.key_id}, claims, verifier.private)
    assert _code(token, verifier.public) == "result_not_ear"


def test_a_bad_public_key_is_a_contract_error(signed: str) -> None:
    from contract import KeyFormatError

    with pytest.raises(KeyFormatError):
        verify_result(signed, "not a key")


def test_an_oversized_token_is_refused_before_it_is_decoded(verifier: VerifierKey) -> None:
    from contract.results import MAX_RESULT_BYTES

    huge = "e30." + "A" * MAX_RESULT_BYTES + ".AA"
    assert _code(huge, verifier.public) == "result_too_large"
