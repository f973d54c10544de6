"""The software TPM fixture itself: a real swtpm whose endorsement key certificate chains to the
test's CA and matches the key the TPM derives, PCRs that extend, and a reboot that resets them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.tpm.swtpm import EK_RSA_CERT_INDEX, LocalCA, Swtpm, require_pytss


def _ek(tpm: Swtpm) -> tuple[x509.Certificate, bytes]:
    """The EK certificate from NV and the modulus of the EK the TPM derives from its template."""
    require_pytss()
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_SENSITIVE_CREATE
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    with ESAPI(tpm.tcti) as ectx:
        cert_der, template = create_ek_template("EK-RSA2048", NVReadEK(ectx))
        handle, public, _, _, _ = ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
        )
        ectx.flush_context(handle)
    assert cert_der is not None
    return x509.load_der_x509_certificate(cert_der), bytes(public.publicArea.unique.rsa)


def test_the_ek_certificate_chains_to_the_test_ca_and_names_the_tpms_ek(
    swtpm: Swtpm, swtpm_ca: LocalCA
) -> None:
    cert, modulus = _ek(swtpm)
    issuer = x509.load_pem_x509_certificate(swtpm_ca.issuer_cert.read_bytes())
    root = x509.load_pem_x509_certificate(swtpm_ca.root_cert.read_bytes())
    cert.verify_directly_issued_by(issuer)
    issuer.verify_directly_issued_by(root)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers().n == int.from_bytes(modulus, "big")
    assert EK_RSA_CERT_INDEX == 0x01C00002


def test_a_fresh_tpm_has_another_endorsement_key(make_swtpm: Callable[..., Swtpm]) -> None:
    copied, fresh = make_swtpm(), make_swtpm(fresh=True)
    first, second = _ek(copied)[0], _ek(fresh)[0]
    der = serialization.Encoding.DER
    assert first.public_key().public_bytes(
        der, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != second.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_pcrs_extend_and_a_reboot_resets_them_and_counts_it(swtpm: Swtpm) -> None:
    require_pytss()
    from tpm2_pytss import ESAPI, ESYS_TR, TPML_DIGEST_VALUES, TPML_PCR_SELECTION
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import TPMT_HA, TPMU_HA

    measured = hashlib.sha256(b"veu-agent").digest()
    with ESAPI(swtpm.tcti) as ectx:
        before = ectx.read_clock().clockInfo.resetCount
        ectx.pcr_extend(
            ESYS_TR.PCR16,
            TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=measured))]),
        )
        _, _, values = ectx.pcr_read(TPML_PCR_SELECTION.parse("sha256:16"))
        assert bytes(values[0]) == hashlib.sha256(b"\0" * 32 + measured).digest()
    swtpm.reboot(orderly=True)
    with ESAPI(swtpm.tcti) as ectx:
        _, _, values = ectx.pcr_read(TPML_PCR_SELECTION.parse("sha256:16"))
        assert bytes(values[0]) == b"\0" * 32
        clock = ectx.read_clock().clockInfo
        assert clock.resetCount == before + 1 and clock.safe
    swtpm.reboot(orderly=False)
    with ESAPI(swtpm.tcti) as ectx:
        clock = ectx.read_clock().clockInfo
        # Without an orderly shutdown the TPM cannot vouch that this clock value is new.
        assert clock.resetCount == before + 2 and not clock.safe
