"""`veu-agent init --tpm` on a real software TPM: a restricted P-256 attestation key and a
non-exportable P-256 snapshot-signing key under the endorsement key, the AK's TPM2_Certify of
the signing key, DSSE snapshots signed by the TPM (ECDSA P-256/SHA-256) that the contract
verifies, and the choices without a TPM (file key, said so) or against one (--no-tpm)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.cli import main
from contract import parse_envelope, parse_statement, verify_envelope
from contract.keys import key_id
from tests.tpm.swtpm import Swtpm, require_pytss

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "tests" / "fixtures" / "inventory" / "h100-sxm-8.json"


def _init(state: Path, *flags: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["init", "--state-dir", str(state), *flags])
    out, err = capsys.readouterr()
    return code, out.strip(), err


@pytest.fixture
def tpm_env(swtpm: Swtpm, monkeypatch: pytest.MonkeyPatch) -> Swtpm:
    require_pytss()
    monkeypatch.setenv("VEU_TPM_TCTI", swtpm.tcti)
    return swtpm


def _unmarshal(kind: str, b64: str) -> object:
    import tpm2_pytss

    value, _ = getattr(tpm2_pytss, kind).unmarshal(base64.b64decode(b64))
    return value


def test_init_with_a_tpm_makes_a_certified_non_exportable_p256_key(
    tpm_env: Swtpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tpm2_pytss import TPM2_ALG, TPM2_GENERATED, TPM2_ST, TPMA_OBJECT

    code, kid, err = _init(tmp_path, "--tpm", capsys=capsys)
    assert code == 0, err
    assert "Host key created in the TPM" in err and "ECDSA P-256" in err
    path = tmp_path / "tpm-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "agent.key").exists()
    stored = json.loads(path.read_text())

    ak = _unmarshal("TPM2B_PUBLIC", stored["ak_public"]).publicArea
    key = _unmarshal("TPM2B_PUBLIC", stored["key_public"]).publicArea
    must = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
    assert ak.type == key.type == TPM2_ALG.ECC
    assert ak.objectAttributes & must == must and ak.objectAttributes & TPMA_OBJECT.RESTRICTED
    assert key.objectAttributes & must == must
    assert not key.objectAttributes & TPMA_OBJECT.RESTRICTED
    assert stored["ek_certificate"]  # read from the TPM's NV, for enrollment

    def p256(area: object) -> ec.EllipticCurvePublicKey:
        point = area.unique.ecc
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(bytes(point.x), "big"),
            int.from_bytes(bytes(point.y), "big"),
            ec.SECP256R1(),
        ).public_key()

    assert kid == key_id(p256(key))
    # TPM2_Certify: the AK signed a TPM-made statement naming exactly this signing key.
    info = base64.b64decode(stored["certify_info"])[2:]  # TPM2B_ATTEST: a size, then TPMS_ATTEST
    attest = _unmarshal("TPMS_ATTEST", base64.b64encode(info).decode())
    assert attest.magic == TPM2_GENERATED.VALUE and attest.type == TPM2_ST.ATTEST_CERTIFY
    name = bytes(_unmarshal("TPM2B_PUBLIC", stored["key_public"]).get_name())
    assert bytes(attest.attested.certify.name) == name
    assert bytes(attest.extraData) == hashlib.sha256(name).digest()
    sig = _unmarshal("TPMT_SIGNATURE", stored["certify_signature"]).signature.ecdsa
    der = encode_dss_signature(
        int.from_bytes(bytes(sig.signatureR), "big"), int.from_bytes(bytes(sig.signatureS), "big")
    )
    p256(ak).verify(der, info, ec.ECDSA(hashes.SHA256()))


def test_snapshots_are_signed_by_the_tpm_key_and_the_contract_verifies_them(
    tpm_env: Swtpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.keys import load_signer

    _, kid, _ = _init(tmp_path, capsys=capsys)  # a TPM is present: used without asking
    out = tmp_path / "snap.json"
    argv = ["snapshot", "--state-dir", str(tmp_path), "--site", "site-a"]
    assert main([*argv, "--inventory", str(INVENTORY), "--out", str(out)]) == 0
    envelope = parse_envelope(out.read_bytes())
    public = load_signer(tmp_path).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    payload, signed_by = verify_envelope(envelope, {kid: public})
    assert signed_by == kid
    assert parse_statement(payload)[1].agent.key_id == kid
    capsys.readouterr()
    assert main(["verify", str(out), "--state-dir", str(tmp_path)]) == 0
    assert "valid signature" in capsys.readouterr().out


def test_no_tpm_keeps_the_key_in_a_file_even_with_a_tpm_present(
    tpm_env: Swtpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _init(tmp_path, "--no-tpm", capsys=capsys)
    assert code == 0 and "--no-tpm given" in err and "self-reported" in err
    assert (tmp_path / "agent.key").exists() and not (tmp_path / "tpm-keys.json").exists()
    code, _, err = _init(tmp_path, "--tpm", capsys=capsys)
    assert code != 0 and "key_exists" in err
    code, _, err = _init(tmp_path, "--tpm", "--force", capsys=capsys)
    assert code == 0 and (tmp_path / "tpm-keys.json").exists()
    assert not (tmp_path / "agent.key").exists()  # one host key, never two


def _agent(
    *args: str, env: dict[str, str], block_pytss: bool = False
) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n"
    if block_pytss:
        prelude += "sys.modules['tpm2_pytss'] = None  # as if not installed\n"
    code = prelude + "from agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_without_the_tss_bindings_the_agent_works_as_today_and_says_so(
    swtpm: Swtpm, tmp_path: Path
) -> None:
    env = {**os.environ, "VEU_TPM_TCTI": swtpm.tcti, "PYTHONPATH": str(ROOT)}
    auto = _agent("init", "--state-dir", str(tmp_path / "a"), env=env, block_pytss=True)
    assert auto.returncode == 0, auto.stderr
    assert "a TPM is present but tpm2-pytss is not installed" in auto.stderr
    assert (tmp_path / "a" / "agent.key").exists()
    demanded = _agent(
        "init", "--tpm", "--state-dir", str(tmp_path / "b"), env=env, block_pytss=True
    )
    assert demanded.returncode != 0 and "tpm_unavailable" in demanded.stderr
    assert "Traceback" not in demanded.stderr


def test_a_tpm_signed_host_enrolls_and_its_snapshots_are_accepted(
    tpm_env: Swtpm, tmp_path: Path, api: object
) -> None:
    """The verifier takes the P-256 key and its signatures; until credential activation
    (issue 18, part 4) proves the key is in a TPM, its evidence stays self-reported."""
    from agent.keys import initialize
    from contract.results import verify_result
    from tests.server.builders import HostKit

    signer, _ = initialize(tmp_path, tpm=True)
    kit = HostKit(api.site_id, key=signer)
    enrolled = api.client.post(
        "/v1/enroll",
        json=kit.enroll_body(api.token(site_id=api.site_id)),
    )
    assert enrolled.status_code == 200, enrolled.text
    for _ in range(2):
        response = api.submit(kit.next_envelope())
        assert response.status_code == 200, response.text
    claims = verify_result(response.json()["result"], api.services.key.public_pem())
    assert claims["submods"]["veu-snapshot"]["host_key_id"] == key_id(signer.public_key())
    assert claims["submods"]["veu-snapshot"]["veu.assurance"] == "self-reported"
