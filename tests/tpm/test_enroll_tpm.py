"""Enrollment with credential activation, against the real verifier (in process, SQLite and
PostgreSQL; and a live `veu-server serve` driven by the `veu-agent` CLI) and a real software
TPM: the EK certificate checked against the configured vendor CAs, MakeCredential by the
verifier, ActivateCredential by the TPM, and the host key enrolled as tpm-bound-key."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.keys import initialize
from agent.tpm.keys import TpmSigner, activate_credential
from contract.results import verify_result
from tests.server.builders import HostKit
from tests.server.conftest import start_server, stop_server
from tests.tpm.swtpm import LocalCA, Swtpm, require_pytss

ROOT = Path(__file__).resolve().parents[2]
KEYLIME_CAS = ROOT / "tests" / "fixtures" / "tpm" / "keylime-ek-cas"


def _tpm_section(signer: TpmSigner) -> dict[str, Any]:
    k = signer.keys
    return {
        "ek_certificate": k.ek_certificate,
        "ek_public": k.ek_public,
        "ak_public": k.ak_public,
        "key_public": k.key_public,
        "certify_info": k.certify_info,
        "certify_signature": k.certify_signature,
    }


@pytest.fixture
def tpm_host(
    swtpm: Swtpm, tmp_path: Path, api: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[HostKit, TpmSigner]:
    require_pytss()
    monkeypatch.setenv("VEU_TPM_TCTI", swtpm.tcti)
    signer, _ = initialize(tmp_path / "agent", tpm=True)
    assert isinstance(signer, TpmSigner)
    return HostKit(api.site_id, key=signer), signer


def _configure(api: Any, cas: Path | None) -> None:
    api.services.settings = dataclasses.replace(api.services.settings, tpm_vendor_ca_dir=cas)


def test_a_tpm_host_activates_a_credential_and_enrolls_as_tpm_bound_key(
    tpm_host: tuple[HostKit, TpmSigner], swtpm_ca: LocalCA, tmp_path: Path, api: Any
) -> None:
    kit, signer = tpm_host
    _configure(api, swtpm_ca.pem_dir(tmp_path / "cas"))
    body = {**kit.enroll_body(api.token(site_id=api.site_id)), "tpm": _tpm_section(signer)}
    first = api.client.post("/v1/enroll", json=body)
    assert first.status_code == 202, first.text
    challenge = first.json()
    assert challenge["code"] == "activation_required"
    credential = activate_credential(
        signer.keys,
        base64.b64decode(challenge["credential_blob"]),
        base64.b64decode(challenge["secret"]),
    )
    wrong = {"ticket": challenge["ticket"], "credential": base64.b64encode(b"x" * 32).decode()}
    refused = api.client.post("/v1/enroll", json={**body, "activation": wrong})
    assert refused.status_code == 401 and refused.json()["code"] == "activation_failed"
    right = {"ticket": challenge["ticket"], "credential": base64.b64encode(credential).decode()}
    done = api.client.post("/v1/enroll", json={**body, "activation": right})
    assert done.status_code == 200, done.text  # the token was not spent by the refusal
    assert done.json()["assurance"] == "tpm-bound-key"
    response = api.submit(kit.next_envelope())
    assert response.status_code == 200, response.text
    submods = verify_result(response.json()["result"], api.services.key.public_pem())["submods"]
    assert submods["veu-host-key"]["veu.assurance"] == "tpm-bound-key"
    assert submods["veu-snapshot"]["veu.assurance"] == "tpm-bound-key"
    host = api.client.get(f"/v1/hosts/{kit.key_id}", headers=api.as_auditor()).json()
    assert host["assurance"] == "tpm-bound-key"


def test_a_ticket_for_another_tpm_does_not_enroll_this_one(
    tpm_host: tuple[HostKit, TpmSigner],
    swtpm_ca: LocalCA,
    tmp_path: Path,
    api: Any,
    make_swtpm: Any,
) -> None:
    kit, signer = tpm_host
    _configure(api, swtpm_ca.pem_dir(tmp_path / "cas"))
    other_tpm = make_swtpm(fresh=True)
    os.environ["VEU_TPM_TCTI"] = other_tpm.tcti
    try:
        other, _ = initialize(tmp_path / "other", tpm=True)
    finally:
        del os.environ["VEU_TPM_TCTI"]
    assert isinstance(other, TpmSigner)
    other_kit = HostKit(api.site_id, key=other)
    theirs = api.client.post(
        "/v1/enroll",
        json={**other_kit.enroll_body(api.token(site_id=api.site_id)), "tpm": _tpm_section(other)},
    ).json()
    credential = activate_credential(
        other.keys, base64.b64decode(theirs["credential_blob"]), base64.b64decode(theirs["secret"])
    )
    body = {**kit.enroll_body(api.token(site_id=api.site_id)), "tpm": _tpm_section(signer)}
    stolen = {"ticket": theirs["ticket"], "credential": base64.b64encode(credential).decode()}
    response = api.client.post("/v1/enroll", json={**body, "activation": stolen})
    assert response.status_code == 401 and response.json()["code"] == "activation_failed"


def test_an_ek_certificate_from_an_unknown_ca_cannot_enroll_with_its_tpm(
    tpm_host: tuple[HostKit, TpmSigner], api: Any
) -> None:
    kit, signer = tpm_host
    _configure(api, KEYLIME_CAS)
    body = {**kit.enroll_body(api.token(site_id=api.site_id)), "tpm": _tpm_section(signer)}
    response = api.client.post("/v1/enroll", json=body)
    assert response.status_code == 401 and response.json()["code"] == "ek_certificate_untrusted"


def test_without_vendor_cas_a_tpm_host_enrolls_self_reported(
    tpm_host: tuple[HostKit, TpmSigner], api: Any
) -> None:
    kit, signer = tpm_host
    _configure(api, None)
    body = {**kit.enroll_body(api.token(site_id=api.site_id)), "tpm": _tpm_section(signer)}
    response = api.client.post("/v1/enroll", json=body)
    assert response.status_code == 200 and response.json()["assurance"] == "self-reported"
    unexpected = {
        **kit.enroll_body(api.token(site_id=api.site_id)),
        "activation": {"ticket": "a", "credential": "AA=="},
    }
    assert api.client.post("/v1/enroll", json=unexpected).json()["code"] == "activation_unexpected"


def test_the_agent_cli_enrolls_its_tpm_with_a_live_verifier_and_survives_a_power_cut(
    swtpm: Swtpm, swtpm_ca: LocalCA, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_pytss()
    monkeypatch.setenv("VEU_TPM_VENDOR_CA_DIR", str(swtpm_ca.pem_dir(tmp_path / "cas")))
    data = tmp_path / "data"
    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{data / 'veu.sqlite3'}"
    server = start_server(data, db_url)
    try:
        server.cli("org", "add", "Acme", "--veu", "universal", "--hq", "US")
        server.cli("site", "add", "Acme", "fra-1", "--country", "DE", "--authorized-tpp", "1000000")
        token = server.cli("enroll-token", "create", "fra-1").stdout.strip().splitlines()[-1]
        admin = server.cli("apikey", "create", "--role", "admin").stdout.strip().splitlines()[-1]
        env = {**os.environ, "VEU_TPM_TCTI": swtpm.tcti, "PYTHONPATH": str(ROOT)}
        state = str(tmp_path / "agent")

        def agent(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "agent.cli", *args, "--state-dir", state],
                capture_output=True, text=True, timeout=300, env=env,
            )  # fmt: skip

        made = agent("init", "--tpm")
        assert made.returncode == 0, made.stderr
        kid = made.stdout.strip()
        enrolled = agent("enroll", "--server", server.url, "--token", token)
        assert enrolled.returncode == 0, enrolled.stderr
        attested = agent("attest", "--json")
        assert attested.returncode in (0, 1, 3), attested.stderr
        host = httpx.get(
            f"{server.url}/v1/hosts/{kid}", headers={"Authorization": f"Bearer {admin}"}
        ).json()
        assert host["assurance"] == "tpm-bound-key"
        assert json.loads(attested.stdout)["digest"]
        # A power cut (swtpm_ioctl -i, no orderly shutdown): the next quote-bound snapshot is
        # accepted, with the TPM's reboot and its unsafe clock in the findings.
        swtpm.reboot(orderly=False)
        again = agent("attest", "--json")
        assert again.returncode in (0, 1, 3), again.stderr
        digest = json.loads(again.stdout)["digest"]
        result = httpx.get(
            f"{server.url}/v1/results/{digest}", headers={"Authorization": f"Bearer {admin}"}
        ).json()
        verifier_key = httpx.get(f"{server.url}/v1/verifier-key").json()
        claims = verify_result(result["result"], verifier_key["public_key"])
        conditions = {f["condition_id"] for f in claims["submods"]["veu-snapshot"]["findings"]}
        assert {"tpm.rebooted", "tpm.clock-not-safe"} <= conditions
        assert claims["submods"]["veu-tpm"]["veu.assurance"] == "tpm-bound-key"
    finally:
        stop_server(server)
