"""Assurance levels end to end (issue 18, part 1): the level each claim reaches in the signed
result's submodules and findings, the host's and site's level in the status API, the dashboard,
/metrics and the report, and a site authorization that demands a level — on SQLite and
PostgreSQL, through the real app."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from contract import SnapshotV2, statement_bytes
from contract.dsse import sign_envelope
from contract.results import verify_result
from tests.server.api.dashboard.conftest import sign_in
from tests.server.builders import HostKit, digest_of, failed_collector, h100_accelerators
from tests.server.compliance.test_compliance import add_site, enrolled, site_status, submit


def claims_of(body: dict[str, Any], api: Any) -> dict[str, Any]:
    claims: dict[str, Any] = verify_result(body["result"], api.services.key.public_pem())
    return claims


def test_a_host_with_a_key_in_a_file_reaches_self_reported(api: Any) -> None:
    kit = enrolled(api, api.site_id, 0)
    submods = claims_of(submit(api, kit, errors=[failed_collector()]), api)["submods"]
    assert submods["veu-snapshot"]["veu.assurance"] == "self-reported"
    assert submods["veu-host-key"] == {
        "ear.status": "affirming",
        "veu.assurance": "self-reported",
        "detail": submods["veu-host-key"]["detail"],
    }
    assert set(submods) == {"veu-snapshot", "veu-host-key"}
    findings = submods["veu-snapshot"]["findings"]
    assert findings and {f["assurance"] for f in findings} == {"self-reported"}
    host = api.client.get(f"/v1/hosts/{kit.key_id}", headers=api.as_auditor()).json()
    assert host["assurance"] == "self-reported"
    status = site_status(api, api.site_id)
    assert status["assurance"] == "self-reported"
    assert status["hosts_by_assurance"] == {"self-reported": 1}
    assert {f["assurance"] for f in status["findings"]} == {"self-reported"}


def test_inventory_file_accelerators_are_declared_and_lower_the_site(api: Any) -> None:
    lab = add_site(api, "Lab-1", "US", 5e6, test=True)
    probed = enrolled(api, lab, 1)
    submit(api, probed)
    assert site_status(api, lab)["assurance"] == "self-reported"
    typed = enrolled(api, lab, 2)
    declared = [
        a.model_copy(update={"source": "inventory-file", "assurance": "declared"})
        for a in h100_accelerators(2)
    ]
    body = submit(api, typed, accelerators=declared)
    submods = claims_of(body, api)["submods"]
    assert submods["veu-snapshot"]["veu.assurance"] == "declared"
    assert submods["veu-inventory-file"]["veu.assurance"] == "declared"
    assert submods["veu-host-key"]["veu.assurance"] == "self-reported"
    status = site_status(api, lab)
    assert status["assurance"] == "declared"  # the site's level is its weakest host's
    assert status["hosts_by_assurance"] == {"declared": 1, "self-reported": 1}


def test_a_stronger_level_the_agent_states_is_not_credited(api: Any) -> None:
    kit = enrolled(api, api.site_id, 3)
    claimed = [
        a.model_copy(update={"assurance": "hardware-attested"}) for a in h100_accelerators(3)
    ]
    submods = claims_of(submit(api, kit, accelerators=claimed), api)["submods"]
    assert submods["veu-snapshot"]["veu.assurance"] == "self-reported"


def test_a_v2_snapshot_with_tpm_evidence_is_accepted_and_earns_nothing_unchecked(
    api: Any,
) -> None:
    kit = enrolled(api, api.site_id, 4)
    v1 = kit.snapshot()
    v2 = SnapshotV2.model_validate(
        {**v1.model_dump(mode="json"), "evidence": {"tpm": {"ak_public": "AAEC"}}}
    )
    data = sign_envelope(statement_bytes(v2), kit.key, kit.key_id).to_bytes()
    response = api.submit(data)
    assert response.status_code == 200, response.text
    kit.seq, kit.prev = v2.seq, digest_of(data)
    submods = claims_of(response.json(), api)["submods"]
    assert submods["veu-tpm"]["ear.status"] == "none"
    assert submods["veu-tpm"]["veu.assurance"] is None
    assert submods["veu-snapshot"]["veu.assurance"] == "self-reported"
    submit(api, kit)  # a v1 after a v2 continues the same chain


def test_a_site_demanding_tpm_quoted_makes_a_self_reported_host_cannot_attest(api: Any) -> None:
    kit = enrolled(api, api.site_id, 5)
    assert submit(api, kit)["status"] == "affirming"
    put = api.client.put(
        f"/v1/sites/{api.site_id}/authorization",
        headers=api.as_admin(),
        json={"minimum_assurance": "tpm-quoted"},
    )
    assert put.status_code == 200, put.text
    assert put.json()["minimum_assurance"] == "tpm-quoted"
    body = submit(api, kit)
    assert body["status"] == "none"
    below = [
        f
        for f in claims_of(body, api)["submods"]["veu-snapshot"]["findings"]
        if f["condition_id"].endswith("host.minimum-assurance")
    ]
    assert len(below) == 1
    assert below[0]["expected"] == "tpm-quoted or stronger"
    assert below[0]["seen"] == "self-reported"
    assert below[0]["severity"] == "cannot_attest" and below[0]["assurance"] == "self-reported"
    assert "site authorization demands tpm-quoted" in below[0]["message"]
    # Lifting the demand: the pack alone demands `declared`, and the host attests again.
    api.client.put(f"/v1/sites/{api.site_id}/authorization", headers=api.as_admin(), json={})
    assert submit(api, kit)["status"] == "affirming"


def test_an_unknown_level_is_refused_with_a_stable_code(api: Any) -> None:
    put = api.client.put(
        f"/v1/sites/{api.site_id}/authorization",
        headers=api.as_admin(),
        json={"minimum_assurance": "tpm-bound"},
    )
    assert put.status_code == 422
    assert put.json()["code"] == "invalid_request" and "minimum_assurance" in put.text


def test_metrics_count_hosts_per_level_and_name_each_sites_level(api: Any) -> None:
    submit(api, enrolled(api, api.site_id, 6))
    text = api.client.get("/metrics").text
    assert f'veu_hosts_by_assurance{{level="self-reported",site="{api.site_id}"}} 1.0' in text
    assert f'veu_site_assurance{{level="self-reported",site="{api.site_id}"}} 1.0' in text
    assert f'veu_site_assurance{{level="declared",site="{api.site_id}"}} 0.0' in text


def test_the_report_states_each_sites_level_and_each_findings(api: Any) -> None:
    from server.reports import Period, build_report
    from server.store import repo

    submit(api, enrolled(api, api.site_id, 7), errors=[failed_collector()])
    now = datetime.now(UTC)
    with api.services.db.read() as s:
        org = repo.find_org(s, "Acme Compute")
        data = build_report(s, api.services.policy, org.id, Period.parse(_half(now)), now)
    sites = {a["site_id"]: a for a in data["assurance"]}
    assert sites[api.site_id]["assurance"] == "self-reported"
    assert {f["assurance"] for f in data["findings"]} == {"self-reported"}
    json.dumps(data)


def _half(now: datetime) -> str:
    return f"{now.year}H{1 if now.month <= 6 else 2}"


def test_dashboard_host_and_site_pages_show_the_level(api: Any) -> None:
    kit = HostKit(api.site_id, index=8)
    api.client.post("/v1/enroll", json=kit.enroll_body(api.token(site_id=api.site_id)))
    submit(api, kit)
    login = sign_in(api.client, api.admin_key)
    assert login.status_code == 303, login.text
    host = api.client.get(f"/dashboard/hosts/{kit.key_id}").text
    assert "<code>self-reported</code>" in host
    site = api.client.get(f"/dashboard/sites/{api.site_id}").text
    assert "<code>self-reported</code> (its weakest host" in site
