"""The verifier's judgement end to end: policy findings on ingest, site and organization status,
findings history, the shipment ledger and the model registry (issue 4), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from contract.results import verify_result
from server.compliance.settle import ComplianceConfig
from server.store import repo
from tests.server.builders import HostKit, ago, failed_collector, h100_accelerators, weights_root

H100_TPP = 15_832


def add_site(api: Any, name: str, country: str, authorized: float, *, test: bool = False) -> str:
    now = datetime.now(UTC)
    with api.services.db.write() as s:
        return str(repo.add_site(s, "Acme Compute", name, country, authorized, None, test, now).id)


def enrolled(api: Any, site_id: str, index: int) -> HostKit:
    kit = HostKit(site_id, index=index)
    response = api.client.post("/v1/enroll", json=kit.enroll_body(api.token(site_id=site_id)))
    assert response.status_code == 200, response.text
    return kit


def submit(api: Any, kit: HostKit, **over: Any) -> dict[str, Any]:
    response = api.submit(kit.next_envelope(**over))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def findings_of(body: dict[str, Any], api: Any) -> list[dict[str, Any]]:
    claims = verify_result(body["result"], api.services.key.public_pem())
    found: list[dict[str, Any]] = claims["submods"]["veu-snapshot"]["findings"]
    return found


def site_status(api: Any, site_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/sites/{site_id}/status", headers=api.as_auditor())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def conditions(items: list[dict[str, Any]]) -> set[str]:
    return {f["condition_id"].split("/")[-1] for f in items}


def test_site_above_its_authorized_tpp_is_in_violation_until_it_shrinks(api: Any) -> None:
    site = add_site(api, "Small-1", "DE", 2 * 8 * H100_TPP)  # room for two 8-GPU hosts
    kits = [enrolled(api, site, i) for i in range(3)]
    for kit in kits[:2]:
        submit(api, kit)
    assert site_status(api, site)["status"] == "affirming"
    submit(api, kits[2])
    status = site_status(api, site)
    assert status["status"] == "contraindicated"
    assert status["installed_tpp"] == 3 * 8 * H100_TPP
    over = [f for f in status["findings"] if f["condition_id"].endswith("site.authorized-tpp")]
    assert len(over) == 1 and over[0]["citation"] and over[0]["severity"] == "violation"
    assert "379,968" in (over[0]["seen"] or "")
    # One host reports half its GPUs gone: the site is within its authorization again.
    submit(api, kits[2], accelerators=h100_accelerators(2)[:0])
    status = site_status(api, site)
    assert status["installed_tpp"] == 2 * 8 * H100_TPP and status["status"] == "affirming"
    history = api.client.get(
        f"/v1/findings?site={site}&condition={over[0]['condition_id']}", headers=api.as_auditor()
    ).json()["items"]
    assert len(history) == 1 and history[0]["open"] is False and history[0]["closed_at"]


def test_result_records_the_policy_digest_and_host_findings_with_citations(api: Any) -> None:
    kit = enrolled(api, api.site_id, 0)
    body = submit(api, kit, errors=[failed_collector()])
    claims = verify_result(body["result"], api.services.key.public_pem())
    sub = claims["submods"]["veu-snapshot"]
    assert sub["policy_digest"] == api.services.policy.digest
    assert sub["ear.status"] == "none"  # a failed collector: cannot attest, never a pass
    failed = [f for f in sub["findings"] if f["condition_id"].endswith("collectors-succeeded")]
    assert failed and failed[0]["citation"]


def test_the_same_gpu_serial_at_two_sites_is_a_violation(api: Any) -> None:
    other = add_site(api, "Paris-1", "FR", 5e6)
    a = enrolled(api, api.site_id, 0)
    b = enrolled(api, other, 1)
    submit(api, a)
    cloned = h100_accelerators(1)
    cloned[0] = cloned[0].model_copy(update={"serial": h100_accelerators(0)[0].serial})
    submit(api, b, accelerators=cloned)
    dup = [
        f
        for f in site_status(api, other)["findings"]
        if f["condition_id"].endswith("unique-accelerator-identity")
    ]
    assert len(dup) == 1 and dup[0]["severity"] == "violation"
    assert h100_accelerators(0)[0].serial in dup[0]["subject"]
    submit(api, a)  # the other site learns of it at its next snapshot
    assert any(
        f["condition_id"].endswith("unique-accelerator-identity")
        for f in site_status(api, api.site_id)["findings"]
    )


def test_controlled_weights_on_unencrypted_storage_are_a_violation(api: Any) -> None:
    root = weights_root()
    plain = root.model_copy(
        update={"encryption": root.encryption.model_copy(update={"status": "unencrypted"})}
    )
    frontier = api.client.post(
        "/v1/models",
        headers=api.as_admin(),
        json={"name": "frontier-1", "training_ops": 3e26, "digests": [plain.files[0].sha256]},
    )
    # The digest already belongs to the registered open model of the fixture: refused, clearly.
    assert frontier.status_code == 409 and frontier.json()["code"] == "conflict"
    secret = plain.files[0].model_copy(update={"sha256": "ab" * 32})
    plain = plain.model_copy(update={"files": [secret, *plain.files[1:]]})
    made = api.client.post(
        "/v1/models",
        headers=api.as_admin(),
        json={"name": "frontier-1", "training_ops": 3e26, "digests": ["ab" * 32]},
    )
    assert made.status_code == 201 and made.json()["controlled"] is True
    kit = enrolled(api, api.site_id, 0)
    found = findings_of(submit(api, kit, storage=[plain]), api)
    assert {"host.controlled-weights-encrypted", "host.controlled-weights-authorized-site"} <= (
        conditions(found)
    )


def test_a_model_registered_between_two_snapshots_judges_the_second(api: Any) -> None:
    """Each process keeps the registry's answers in memory (RegistryCache): registering a model
    must still reach the very next snapshot of a host that reported its file before."""
    root = weights_root()
    plain = root.model_copy(
        update={"encryption": root.encryption.model_copy(update={"status": "unencrypted"})}
    )
    secret = plain.files[0].model_copy(update={"sha256": "cd" * 32})
    plain = plain.model_copy(update={"files": [secret, *plain.files[1:]]})
    kit = enrolled(api, api.site_id, 0)
    before = conditions(findings_of(submit(api, kit, storage=[plain]), api))
    assert "host.controlled-weights-encrypted" not in before  # not registered: not controlled
    made = api.client.post(
        "/v1/models",
        headers=api.as_admin(),
        json={"name": "frontier-2", "training_ops": 3e26, "digests": ["cd" * 32]},
    )
    assert made.status_code == 201
    after = conditions(findings_of(submit(api, kit, storage=[plain]), api))
    assert "host.controlled-weights-encrypted" in after


def test_declared_inventory_is_cannot_attest_except_at_a_test_site(api: Any) -> None:
    declared = [
        a.model_copy(update={"source": "inventory-file", "assurance": "declared"})
        for a in h100_accelerators(0)
    ]
    real_site = enrolled(api, api.site_id, 0)
    body = submit(api, real_site, accelerators=declared)
    assert body["status"] == "none" and "host.probed-evidence" in conditions(findings_of(body, api))
    lab = add_site(api, "Lab-1", "US", 5e6, test=True)
    declared_1 = [
        a.model_copy(update={"source": "inventory-file", "assurance": "declared"})
        for a in h100_accelerators(1)
    ]
    body = submit(api, enrolled(api, lab, 1), accelerators=declared_1)
    assert body["status"] == "affirming"


def test_a_stale_host_makes_the_site_cannot_attest(api: Any) -> None:
    kit = enrolled(api, api.site_id, 0)
    kit_body = api.submit(kit.next_envelope(now=ago(hours=2)))
    assert kit_body.status_code == 200
    api.services.compliance = ComplianceConfig(max_host_age=timedelta(minutes=45))
    refreshed = api.client.post(f"/v1/sites/{api.site_id}/refresh", headers=api.as_admin())
    assert refreshed.status_code == 200
    status = site_status(api, api.site_id)
    assert status["status"] == "none" and status["stale_hosts"] == [kit.key_id]
    assert "site.hosts-fresh" in conditions(status["findings"])
    submit(api, kit)  # fresh evidence: the finding closes
    assert site_status(api, api.site_id)["stale_hosts"] == []


def test_universal_veu_distribution_table_and_the_seven_percent_rule(api: Any) -> None:
    uae = add_site(api, "Abu-Dhabi-1", "AE", 5e6)
    for i in range(3):
        submit(api, enrolled(api, api.site_id, i))  # Germany: Tier 1
    submit(api, enrolled(api, uae, 10))  # the UAE: 25% of the TPP, above 7%
    with api.services.db.read() as s:
        org_id = repo.find_org(s, "Acme Compute").id
    response = api.client.get(f"/v1/orgs/{org_id}/status", headers=api.as_auditor())
    assert response.status_code == 200, response.text
    body = response.json()
    dist = body["distribution"]
    assert "denominator" in dist and "3A090" in dist["denominator"]
    shares = {c["code"]: c["share"] for c in dist["countries"]}
    assert shares == {"AE": 0.25, "DE": 0.75}
    assert body["status"] == "contraindicated"
    names = conditions(body["findings"])
    assert "org.universal-country-share" in names
    assert "org.universal-us-share" in names  # a U.S. company with none in the U.S.


def test_revoking_a_host_removes_its_chips_from_the_site_totals(api: Any) -> None:
    kits = [enrolled(api, api.site_id, i) for i in range(2)]
    for kit in kits:
        submit(api, kit)
    assert site_status(api, api.site_id)["installed_tpp"] == 2 * 8 * H100_TPP
    revoked = api.client.post(f"/v1/hosts/{kits[0].key_id}/revoke", headers=api.as_admin())
    assert revoked.status_code == 200, revoked.text
    assert site_status(api, api.site_id)["installed_tpp"] == 8 * H100_TPP


def test_incremental_totals_equal_a_recount_after_many_changes(api: Any) -> None:
    site = add_site(api, "Churn-1", "JP", 1e9)
    kits = [enrolled(api, site, i) for i in range(4)]
    expected: dict[int, int] = {}
    for round_ in range(3):
        for i, kit in enumerate(kits):
            gpus = (i + round_) % 9
            submit(api, kit, accelerators=h100_accelerators(i)[:gpus])
            expected[i] = gpus
    status = site_status(api, site)
    assert status["accelerators"] == sum(expected.values())
    assert status["installed_tpp"] == sum(expected.values()) * H100_TPP


def test_shipments_reconcile_with_observed_chips(api: Any) -> None:
    site = add_site(api, "Ledger-1", "DE", 1e9)
    kit = enrolled(api, site, 0)
    seen = h100_accelerators(0)
    shipped = {
        "shipped_on": (date.today() - timedelta(days=60)).isoformat(),
        "site": site,
        "consignee": "Acme Compute GmbH",
        "chip_model": "NVIDIA H100 80GB HBM3",
        "uuids": [a.uuid for a in seen[:7]] + ["GPU-never-arrived"],
    }
    made = api.client.post("/v1/shipments", headers=api.as_admin(), json=shipped)
    assert made.status_code == 201, made.text
    assert made.json()["tpp"] == 8 * H100_TPP
    submit(api, kit)
    found = site_status(api, site)["findings"]
    missing = [
        f for f in found if f["condition_id"] == "ai-diffusion-2025/site.shipped-chip-missing"
    ]
    unexpected = [f for f in found if f["condition_id"] == "ai-diffusion-2025/site.unexpected-chip"]
    assert [f["subject"] for f in missing] == ["accelerator:uuid:GPU-never-arrived"]
    assert len(unexpected) == 1 and seen[7].uuid in unexpected[0]["subject"]


def test_lpp_shipments_over_the_annual_limit_warn_with_the_citation(api: Any) -> None:
    body = {
        "shipped_on": "2026-03-01",
        "destination_country": "IN",
        "consignee": "Small Lab Pvt Ltd",
        "license_exception": "LPP",
        "end_user": "non-veu",
        "chip_model": "NVIDIA H100 80GB HBM3",
        "quantity": 1000,  # 15.8 M TPP: within 26.9 M
    }
    first = api.client.post("/v1/shipments", headers=api.as_admin(), json=body)
    assert first.status_code == 201 and first.json()["warnings"] == []
    second = api.client.post("/v1/shipments", headers=api.as_admin(), json=body)
    warnings = second.json()["warnings"]
    assert [w["code"] for w in warnings] == ["lpp_limit_exceeded"]
    assert "740.29" in warnings[0]["citation"]


def test_ledger_and_registry_inputs_are_validated(api: Any) -> None:
    bad_chip = api.client.post(
        "/v1/shipments",
        headers=api.as_admin(),
        json={
            "shipped_on": "2026-01-01",
            "site": api.site_id,
            "consignee": "x",
            "chip_model": "Imaginary 9000",
            "quantity": 1,
        },
    )
    assert bad_chip.status_code == 422 and bad_chip.json()["code"] == "unknown_chip_model"
    bad_digest = api.client.post(
        "/v1/models", headers=api.as_admin(), json={"name": "m", "digests": ["zz"]}
    )
    assert bad_digest.status_code == 422
    auditor = api.client.post(
        "/v1/models", headers=api.as_auditor(), json={"name": "m", "digests": []}
    )
    assert auditor.status_code == 403
    unknown_site = api.client.get("/v1/sites/nope/status", headers=api.as_auditor())
    assert unknown_site.status_code == 404 and unknown_site.json()["code"] == "not_found"


def test_allowed_chip_models_are_part_of_the_site_authorization(api: Any) -> None:
    put = api.client.put(
        f"/v1/sites/{api.site_id}/authorization",
        headers=api.as_admin(),
        json={"allowed_models": ["H200-SXM"]},
    )
    assert put.status_code == 200, put.text
    submit(api, enrolled(api, api.site_id, 0))
    assert "site.allowed-chip-models" in conditions(site_status(api, api.site_id)["findings"])


def test_a_bad_policy_pack_never_replaces_the_one_in_force(api: Any, tmp_path: Path) -> None:
    good = api.services.policy.digest
    broken = tmp_path / "policies"
    shutil.copytree(api.services.settings.policies_dir, broken)
    conditions_file = broken / "ai-diffusion-2025" / "conditions.yaml"
    conditions_file.write_text(conditions_file.read_text().replace("acc.identified", "acc.nope", 1))
    api.services.settings = api.services.settings.__class__(
        **{**api.services.settings.__dict__, "policies_dir": broken}
    )
    response = api.client.post("/v1/policy/reload", headers=api.as_admin())
    assert response.status_code == 422 and response.json()["code"] == "bad_policy_pack"
    assert "conditions.yaml" in response.json()["detail"]
    assert api.services.policy.digest == good
    info = api.client.get("/v1/policy", headers=api.as_auditor()).json()
    assert info["digest"] == good and info["packs"][0]["status"]


def test_findings_can_be_filtered_by_severity_and_openness(api: Any) -> None:
    kit = enrolled(api, api.site_id, 0)
    submit(api, kit, errors=[failed_collector()])
    items = api.client.get(
        "/v1/findings?severity=cannot_attest&open=true", headers=api.as_auditor()
    ).json()["items"]
    assert items and all(f["severity"] == "cannot_attest" and f["open"] for f in items)
    assert (
        api.client.get("/v1/findings?severity=bogus", headers=api.as_auditor()).status_code == 422
    )
    assert api.client.get("/v1/findings").status_code == 401


def test_a_host_with_thousands_of_findings_gets_a_small_signed_result(api: Any) -> None:
    root = weights_root()
    many = [
        root.files[0].model_copy(
            update={"path": f"/srv/models/x/{i}.safetensors", "sha256": f"{i:064x}"}
        )
        for i in range(2000)
    ]
    big = root.model_copy(update={"files": many, "file_count": 2000})
    kit = enrolled(api, api.site_id, 0)
    body = submit(api, kit, storage=[big])
    assert len(body["result"]) < 100_000
    found = findings_of(body, api)
    unclassified = [f for f in found if f["condition_id"].endswith("weights-classified")]
    assert len(unclassified) == 26 and "1975 more" in unclassified[-1]["message"]
    listed = api.client.get(
        f"/v1/findings?condition={unclassified[0]['condition_id']}&limit=1000",
        headers=api.as_auditor(),
    ).json()
    assert len(listed["items"]) == 1000 and listed["next"]


def test_large_unidentified_files_warn_with_sizes_until_their_digest_is_registered(
    api: Any,
) -> None:
    """The verifier asks the registry about the digests of listed unidentified files too: a
    registered one is classified, an unregistered one is a warning like an unclassified weight."""
    import hashlib

    from contract import UnidentifiedFile
    from server.compliance import ledger

    sealed, unknown = (hashlib.sha256(name).hexdigest() for name in (b"sealed", b"unknown"))
    with api.services.db.write() as s:
        ledger.add_model(
            s,
            api.services.policy,
            {"name": "sealed-1", "training_ops": 1.0e24, "published": True, "digests": [sealed]},
            now=datetime.now(UTC),
            actor="test",
        )
    root = weights_root().model_copy(
        update={
            "unidentified_count": 3,
            "unidentified_bytes": 12_400_000_100,
            "unidentified_listed_from": 1024 * 1024,
            "unidentified": [
                UnidentifiedFile(
                    path="/srv/models/blob.enc",
                    size=8_000_000_000,
                    mtime="2026-01-01T00:00:00Z",
                    sha256=sealed,
                ),
                UnidentifiedFile(
                    path="/srv/models/x.dat",
                    size=4_400_000_000,
                    mtime="2026-01-01T00:00:00Z",
                    sha256=unknown,
                ),
            ],
        }
    )
    kit = enrolled(api, api.site_id, 0)
    found = findings_of(submit(api, kit, storage=[root]), api)
    warned = [f for f in found if f["condition_id"].endswith("unidentified-files-registered")]
    assert [f["subject"] for f in warned] == ["file:/srv/models/x.dat"]
    assert warned[0]["severity"] == "warning" and "4,400,000,000 bytes" in warned[0]["message"]
