"""Credential activation against a real software TPM: the verifier's pure-Python checks of the
EK certificate and the AK's certification, its MakeCredential, and the TPM's ActivateCredential
recovering the credential only for the AK and EK it was made for."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.tpm import TpmError
from agent.tpm.keys import TpmKeys, activate_credential, create
from server.appraise.tpm import (
    TpmFormatError,
    load_vendor_cas,
    make_credential,
    parse_public,
    verify_certification,
    verify_ek_certificate,
)
from tests.tpm.swtpm import LocalCA, Swtpm, require_pytss

KEYLIME_CAS = Path(__file__).resolve().parents[1] / "fixtures" / "tpm" / "keylime-ek-cas"


def _b(text: str) -> bytes:
    return base64.b64decode(text)


@pytest.fixture
def tpm_keys(swtpm: Swtpm, tmp_path: Path) -> TpmKeys:
    require_pytss()
    return create(tmp_path / "agent", swtpm.tcti)


def test_the_ek_certificate_chains_to_the_configured_ca_and_the_ak_certified_the_key(
    tpm_keys: TpmKeys, swtpm_ca: LocalCA, tmp_path: Path
) -> None:
    assert tpm_keys.ek_certificate is not None
    cas = load_vendor_cas(swtpm_ca.pem_dir(tmp_path / "cas"))
    ek = parse_public(_b(tpm_keys.ek_public), "EK")
    verify_ek_certificate(_b(tpm_keys.ek_certificate), ek, cas)
    verify_certification(
        _b(tpm_keys.ak_public),
        _b(tpm_keys.key_public),
        _b(tpm_keys.certify_info),
        _b(tpm_keys.certify_signature),
    )


def test_an_ek_certificate_from_an_unknown_ca_is_refused(tpm_keys: TpmKeys) -> None:
    assert tpm_keys.ek_certificate is not None
    cas = load_vendor_cas(KEYLIME_CAS)  # real TPM makers' CAs: none issued swtpm's EK
    assert len(cas) == 10
    with pytest.raises(TpmFormatError) as caught:
        verify_ek_certificate(
            _b(tpm_keys.ek_certificate), parse_public(_b(tpm_keys.ek_public)), cas
        )
    assert caught.value.code == "ek_certificate_untrusted"


def test_the_tpm_activates_a_credential_made_for_its_ek_and_ak(tpm_keys: TpmKeys) -> None:
    ek = parse_public(_b(tpm_keys.ek_public), "EK")
    ak = parse_public(_b(tpm_keys.ak_public), "AK")
    secret = os.urandom(32)
    made = make_credential(ek, ak.name, secret)
    assert activate_credential(tpm_keys, made.blob, made.secret) == secret


def test_a_credential_for_another_ak_name_does_not_activate(tpm_keys: TpmKeys) -> None:
    ek = parse_public(_b(tpm_keys.ek_public), "EK")
    signing_key = parse_public(_b(tpm_keys.key_public), "key")
    made = make_credential(ek, signing_key.name, os.urandom(32))
    with pytest.raises(TpmError) as caught:
        activate_credential(tpm_keys, made.blob, made.secret)
    assert caught.value.code == "activation_failed"


def test_an_ak_of_another_tpm_cannot_answer_for_this_ek(
    tpm_keys: TpmKeys, make_swtpm: Callable[..., Swtpm], tmp_path: Path
) -> None:
    """A quote from another TPM: its AK claimed with this host's EK certificate. The
    credential is wrapped to this EK, so the other TPM cannot recover it."""
    other = make_swtpm(fresh=True)
    theirs = create(tmp_path / "other", other.tcti)
    ek = parse_public(_b(tpm_keys.ek_public), "EK")  # this host's EK
    made = make_credential(ek, parse_public(_b(theirs.ak_public)).name, os.urandom(32))
    with pytest.raises(TpmError) as caught:
        activate_credential(theirs, made.blob, made.secret)
    assert caught.value.code == "activation_failed"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b"\xff\xff" + b[2:],  # a size beyond what is there
        lambda b: b + b"\0",  # trailing bytes
        lambda b: b"\0" * 5000,  # oversized
    ],
)
def test_hostile_public_areas_are_refused_with_a_code(
    tpm_keys: TpmKeys, mangle: Callable[[bytes], bytes]
) -> None:
    with pytest.raises(TpmFormatError) as caught:
        parse_public(mangle(_b(tpm_keys.ak_public)))
    assert caught.value.code.startswith("tpm_")


def test_a_certification_of_another_key_is_refused(
    tpm_keys: TpmKeys, make_swtpm: Callable[..., Swtpm], tmp_path: Path
) -> None:
    other = create(tmp_path / "again", make_swtpm().tcti)
    with pytest.raises(TpmFormatError) as caught:
        verify_certification(
            _b(tpm_keys.ak_public),
            _b(other.key_public),
            _b(tpm_keys.certify_info),
            _b(tpm_keys.certify_signature),
        )
    assert caught.value.code == "tpm_certify_mismatch"
    with pytest.raises(TpmFormatError) as caught:
        verify_certification(
            _b(other.ak_public),
            _b(tpm_keys.key_public),
            _b(tpm_keys.certify_info),
            _b(tpm_keys.certify_signature),
        )
    assert caught.value.code == "tpm_bad_signature"


def test_a_vendor_ca_file_that_does_not_parse_is_refused_naming_it() -> None:
    with pytest.raises(TpmFormatError) as caught:
        load_vendor_cas(KEYLIME_CAS.parent / "keylime-unparseable")
    assert caught.value.code == "bad_vendor_ca" and "NTC1.pem" in caught.value.detail
