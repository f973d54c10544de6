"""Quote-bound snapshots through the real verifier: a host enrolled by credential activation
sends snapshot v2 with a TPM quote over SHA-256(nonce || inventory digest); the appraisal
verifies it against the enrolled attestation key (rule 10), and the hostile variants — a quote
over another snapshot, a replayed quote, PCRs altered after the quote, another TPM's AK, an
event log that does not replay to the quoted PCRs — are refused with their codes and change no
evidence rows."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.keys import initialize
from agent.snapshot import with_tpm_evidence
from agent.tpm.keys import TpmSigner, activate_credential
from contract import SnapshotV2, statement_bytes
from contract.dsse import sign_envelope
from contract.results import verify_result
from tests.server.builders import HostKit, digest_of
from tests.tpm.swtpm import LocalCA, Swtpm, require_pytss

LOG = Path(__file__).resolve().parents[1] / "fixtures" / "tpm" / "event-logs"


@pytest.fixture
def enrolled(
    swtpm: Swtpm, swtpm_ca: LocalCA, tmp_path: Path, api: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[HostKit, TpmSigner]:
    """A TPM host enrolled by credential activation (tpm-bound-key)."""
    require_pytss()
    monkeypatch.setenv("VEU_TPM_TCTI", swtpm.tcti)
    signer, _ = initialize(tmp_path / "agent", tpm=True)
    assert isinstance(signer, TpmSigner)
    cas = swtpm_ca.pem_dir(tmp_path / "cas")
    api.services.settings = dataclasses.replace(api.services.settings, tpm_vendor_ca_dir=cas)
    kit = HostKit(api.site_id, key=signer)
    k = signer.keys
    tpm = {
        "ek_certificate": k.ek_certificate,
        "ek_public": k.ek_public,
        "ak_public": k.ak_public,
        "key_public": k.key_public,
        "certify_info": k.certify_info,
        "certify_signature": k.certify_signature,
    }
    body = {**kit.enroll_body(api.token(site_id=api.site_id)), "tpm": tpm}
    challenge = api.client.post("/v1/enroll", json=body).json()
    credential = activate_credential(
        k, base64.b64decode(challenge["credential_blob"]), base64.b64decode(challenge["secret"])
    )
    activation = {
        "ticket": challenge["ticket"],
        "credential": base64.b64encode(credential).decode(),
    }
    done = api.client.post("/v1/enroll", json={**body, "activation": activation})
    assert done.status_code == 200 and done.json()["assurance"] == "tpm-bound-key", done.text
    return kit, signer


def _quoted(
    kit: HostKit, signer: TpmSigner, sys_root: Path | None = None, **over: Any
) -> SnapshotV2:
    config = AgentConfig(sys_root=sys_root or Path("/nonexistent-sys"))
    return with_tpm_evidence(kit.snapshot(**over), signer, config)


def _send(api: Any, kit: HostKit, snapshot: SnapshotV2) -> Any:
    data = sign_envelope(statement_bytes(snapshot), kit.key, kit.key_id).to_bytes()
    response = api.submit(data)
    if response.status_code == 200:
        kit.seq, kit.prev = snapshot.seq, digest_of(data)
    return response


def test_a_quote_bound_snapshot_is_verified_against_the_enrolled_ak(
    enrolled: tuple[HostKit, TpmSigner], api: Any
) -> None:
    kit, signer = enrolled
    response = _send(api, kit, _quoted(kit, signer))
    assert response.status_code == 200, response.text
    submods = verify_result(response.json()["result"], api.services.key.public_pem())["submods"]
    # Verified, but the site has no reference values yet: tpm-quoted is not reached.
    assert submods["veu-tpm"]["ear.status"] == "warning"
    assert "quote verified" in submods["veu-tpm"]["detail"]
    assert submods["veu-tpm"]["veu.assurance"] == "tpm-bound-key"
    assert submods["veu-snapshot"]["veu.assurance"] == "tpm-bound-key"


def _refused(api: Any, kit: HostKit, snapshot: SnapshotV2, code: str) -> None:
    before = api.counts()
    response = _send(api, kit, snapshot)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert api.counts() == before  # no evidence rows


def test_a_quote_over_another_snapshot_is_refused(
    enrolled: tuple[HostKit, TpmSigner], api: Any
) -> None:
    kit, signer = enrolled
    good = _quoted(kit, signer)
    other = SnapshotV2.model_validate(
        {**good.model_dump(mode="json"), "host": {**good.host.model_dump(), "uptime_s": 1}}
    )
    _refused(api, kit, other, "quote_wrong_data")


def test_a_replayed_quote_is_refused(enrolled: tuple[HostKit, TpmSigner], api: Any) -> None:
    kit, signer = enrolled
    first = _quoted(kit, signer)
    assert _send(api, kit, first).status_code == 200
    second = kit.snapshot()
    replayed = SnapshotV2.model_validate(
        {**second.model_dump(mode="json"), "evidence": first.model_dump(mode="json")["evidence"]}
    )
    _refused(api, kit, replayed, "quote_wrong_data")


def test_pcrs_altered_after_the_quote_are_refused(
    enrolled: tuple[HostKit, TpmSigner], api: Any
) -> None:
    kit, signer = enrolled
    data = _quoted(kit, signer).model_dump(mode="json")
    data["evidence"]["tpm"]["quote"]["pcrs"]["7"] = "11" * 32
    _refused(api, kit, SnapshotV2.model_validate(data), "quote_pcr_mismatch")


def test_a_quote_by_another_tpm_is_refused(
    enrolled: tuple[HostKit, TpmSigner],
    api: Any,
    make_swtpm: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kit, signer = enrolled
    monkeypatch.setenv("VEU_TPM_TCTI", make_swtpm(fresh=True).tcti)
    other, _ = initialize(tmp_path / "other", tpm=True)
    assert isinstance(other, TpmSigner)
    theirs = _quoted(kit, other)  # the other TPM's AK and quote, in this host's snapshot
    _refused(api, kit, theirs, "quote_wrong_ak")
    data = theirs.model_dump(mode="json")
    data["evidence"]["tpm"]["ak_public"] = signer.keys.ak_public  # claims this host's AK
    _refused(api, kit, SnapshotV2.model_validate(data), "quote_bad_signature")


def test_an_event_log_that_does_not_replay_to_the_quote_is_refused(
    enrolled: tuple[HostKit, TpmSigner], api: Any, tmp_path: Path
) -> None:
    kit, signer = enrolled
    security = tmp_path / "sys" / "kernel" / "security" / "tpm0"
    security.mkdir(parents=True)
    (security / "binary_bios_measurements").write_bytes(
        (LOG / "binary_bios_measurements").read_bytes()
    )
    # swtpm's PCRs hold none of these measurements
    _refused(api, kit, _quoted(kit, signer, tmp_path / "sys"), "event_log_mismatch")


def test_a_reboot_without_orderly_shutdown_is_accepted_with_its_findings(
    enrolled: tuple[HostKit, TpmSigner], api: Any, swtpm: Swtpm
) -> None:
    kit, signer = enrolled
    assert _send(api, kit, _quoted(kit, signer)).status_code == 200
    swtpm.reboot(orderly=False)  # swtpm_ioctl -i: a power cut
    response = _send(api, kit, _quoted(kit, signer))
    assert response.status_code == 200, response.text
    findings = verify_result(response.json()["result"], api.services.key.public_pem())["submods"][
        "veu-snapshot"
    ]["findings"]
    found = {f["condition_id"]: f for f in findings}
    assert found["tpm.clock-not-safe"]["severity"] == "warning"
    assert found["tpm.rebooted"]["severity"] == "info"
    assert found["tpm.clock-not-safe"]["assurance"] == "tpm-bound-key"
    assert response.json()["status"] == "warning"


@pytest.mark.parametrize(
    ("bump", "code"),
    [
        ({"quote_reset": 1}, "quote_reset_backwards"),
        ({"quote_restart": 1}, "quote_restart_backwards"),
        ({"quote_clock": 10**12}, "quote_clock_stalled"),
    ],
)
def test_tpm_counters_and_clock_must_not_go_back(
    enrolled: tuple[HostKit, TpmSigner], api: Any, bump: dict[str, int], code: str
) -> None:
    """The verifier remembers the last verified quote's counters (host_state); a TPM whose
    counters or clock are behind them (a restored TPM state, a replayed boot) is refused."""
    from sqlalchemy import update

    from server.store.compliance_models import HostState

    kit, signer = enrolled
    assert _send(api, kit, _quoted(kit, signer)).status_code == 200
    with api.services.db.write() as session:
        row = session.get(HostState, kit.key_id)
        assert row is not None and row.quote_reset is not None
        values = {name: getattr(row, name) + step for name, step in bump.items()}
        session.execute(update(HostState).where(HostState.key_id == kit.key_id).values(**values))
    _refused(api, kit, _quoted(kit, signer), code)


def _result(api: Any, response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    claims: dict[str, Any] = verify_result(response.json()["result"], api.services.key.public_pem())
    return claims["submods"]


def test_reference_values_raise_a_quoted_host_to_tpm_quoted_and_a_change_is_named(
    enrolled: tuple[HostKit, TpmSigner], api: Any, swtpm: Swtpm, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main as server_main

    kit, signer = enrolled
    _result(api, _send(api, kit, _quoted(kit, signer)))
    settings = api.services.settings
    storage = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        storage += ["--database-url", settings.database_url]
    assert server_main(["reference", "add", api.site_id, "--from-host", kit.key_id, *storage]) == 0
    added = __import__("json").loads(capsys.readouterr().out)["added"]
    assert [a["pcr"] for a in added] == list(range(8))
    put = api.client.put(
        f"/v1/sites/{api.site_id}/authorization",
        headers=api.as_admin(),
        json={"minimum_assurance": "tpm-quoted"},
    )
    assert put.status_code == 200
    quoted = _send(api, kit, _quoted(kit, signer))
    submods = _result(api, quoted)
    assert submods["veu-snapshot"]["veu.assurance"] == "tpm-quoted"
    assert submods["veu-tpm"] == {
        "ear.status": "affirming",
        "veu.assurance": "tpm-quoted",
        "detail": submods["veu-tpm"]["detail"],
    }
    assert submods["veu-host-key"]["veu.assurance"] == "tpm-bound-key"
    assert quoted.json()["status"] == "affirming"  # the site demands tpm-quoted: met

    # The boot chain changes (something new is measured into PCR 7): no longer known-good.
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES
    from tpm2_pytss.types import TPMT_HA, TPMU_HA

    with ESAPI(swtpm.tcti) as ectx:
        digest = TPMU_HA(sha256=b"\x07" * 32)
        ectx.pcr_extend(
            ESYS_TR.PCR7, TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=digest)])
        )
    changed = _send(api, kit, _quoted(kit, signer))
    submods = _result(api, changed)
    assert submods["veu-snapshot"]["veu.assurance"] == "tpm-bound-key"
    unknown = [
        f for f in submods["veu-snapshot"]["findings"] if f["condition_id"] == "tpm.pcr-unknown"
    ]
    assert len(unknown) == 1 and "PCR 7" in unknown[0]["message"]
    below = [
        f
        for f in submods["veu-snapshot"]["findings"]
        if f["condition_id"].endswith("host.minimum-assurance")
    ]
    assert below and below[0]["seen"] == "tpm-bound-key"
    assert changed.json()["status"] == "none"


def test_only_a_tpm_enrolled_host_with_a_quote_can_be_a_reference(
    api: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main as server_main

    kit = HostKit(api.site_id, index=9)
    assert (
        api.client.post(
            "/v1/enroll", json=kit.enroll_body(api.token(site_id=api.site_id))
        ).status_code
        == 200
    )
    settings = api.services.settings
    storage = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        storage += ["--database-url", settings.database_url]
    code = server_main(["reference", "add", api.site_id, "--from-host", kit.key_id, *storage])
    err = capsys.readouterr().err
    assert code != 0 and "not_tpm_host" in err and "Traceback" not in err
