"""The shipped packs judged side by side through the API (issue 22): every finding names its pack,
version and status; the headline counts packs in force unless proposed packs are asked for; the
shipment ledger's lab test records and destinations reach the China licence conditions; on SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from server.errors import NotFound
from server.store import repo
from tests.server.builders import HostKit, h100_accelerators

PACK_A = "us-advanced-computing-2026"
PACK_B = "chip-security-act-location"


def _site(api: Any, org: str, name: str, country: str, authorized: float) -> str:
    with api.services.db.write() as s:
        now = datetime.now(UTC)
        try:
            repo.find_org(s, org)
        except NotFound:
            repo.add_org(s, org, "universal", "US", None, now)
        return str(repo.add_site(s, org, name, country, authorized, None, False, now).id)


def _report(api: Any, site_id: str, index: int) -> HostKit:
    kit = HostKit(site_id, index=index)
    enrolled = api.client.post("/v1/enroll", json=kit.enroll_body(api.token(site_id=site_id)))
    assert enrolled.status_code == 200, enrolled.text
    submitted = api.submit(kit.next_envelope())
    assert submitted.status_code == 200, submitted.text
    return kit


def _ship(api: Any, site_id: str, uuids: list[str], **extra: Any) -> None:
    body = {
        "shipped_on": (date.today() - timedelta(days=3)).isoformat(),
        "site": site_id,
        "consignee": "Acme Shanghai",
        "license_exception": "license",
        "end_user": "non-veu",
        "chip_model": "NVIDIA H100 80GB HBM3",
        "uuids": uuids,
        **extra,
    }
    made = api.client.post("/v1/shipments", headers=api.as_admin(), json=body)
    assert made.status_code == 201, made.text


def _status(api: Any, site_id: str, **params: str) -> dict[str, Any]:
    got = api.client.get(f"/v1/sites/{site_id}/status", headers=api.as_auditor(), params=params)
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def test_a_china_site_is_judged_by_every_pack_with_its_lab_test_records(api: Any) -> None:
    site = _site(api, "Acme China", "Shanghai-1", "CN", 1e7)
    other = _site(api, "Acme China", "Shanghai-2", "CN", 1e7)
    chips = [a.uuid or "" for a in h100_accelerators(0)]
    _ship(api, site, chips[:6], lab_test="USLAB-2026-0042")
    _ship(api, site, chips[6:7])  # no lab test record
    _ship(api, other, chips[7:], lab_test="USLAB-2026-0043")  # licensed for the other site
    _report(api, site, 0)

    status = _status(api, site)
    found = status["findings"]
    by_condition: dict[str, list[dict[str, Any]]] = {}
    for f in found:
        by_condition.setdefault(f["condition_id"], []).append(f)
    untested = by_condition[f"{PACK_A}/site.cn-lab-tested"]
    assert [f["subject"] for f in untested] == [f"accelerator:uuid:{chips[6]}"]
    assert untested[0]["severity"] == "cannot_attest"
    assert untested[0]["pack"] == {"id": PACK_A, "version": "1.0.0", "status": "in-force"}
    moved = by_condition[f"{PACK_A}/site.cn-not-transferred"]
    assert [f["subject"] for f in moved] == [f"accelerator:uuid:{chips[7]}"]
    # Licensed (an authorized TPP): no destination finding; H100s are below both thresholds.
    assert f"{PACK_A}/site.destination-licensed" not in by_condition
    assert f"{PACK_A}/site.cn-below-thresholds" not in by_condition
    # The 2025 pack judges the same site, and says which pack and status it is.
    embargoed = by_condition["ai-diffusion-2025/site.country-not-embargoed"][0]
    assert embargoed["pack"]["status"] == "rescinded-not-enforced"
    packs = {p["pack_id"]: p for p in status["packs"]}
    assert (
        packs[PACK_A]["pack_status"] == "in-force" and packs[PACK_A]["status"] == "contraindicated"
    )
    assert status["status_view"] == "in-force"

    lab = api.client.get("/v1/shipments", headers=api.as_auditor(), params={"site": site})
    assert sorted(str(s["lab_test"]) for s in lab.json()["items"]) == ["None", "USLAB-2026-0042"]

    only_a = api.client.get(
        "/v1/findings", headers=api.as_auditor(), params={"site": site, "pack_status": "in-force"}
    )
    assert only_a.status_code == 200
    assert {f["pack"]["id"] for f in only_a.json()["items"]} == {PACK_A}


def test_proposed_packs_count_in_the_headline_only_when_asked(api: Any) -> None:
    site = _site(api, "Acme Compute", "Frankfurt-9", "DE", 1e7)
    _report(api, site, 1)
    default = _status(api, site)
    # Location is not measured: the Chip Security Act pack (proposed) cannot attest any chip, but
    # the headline counts the packs in force, which find nothing here.
    assert default["status"] == "affirming", default["findings"]
    proposed = [f for f in default["findings"] if f["pack"] and f["pack"]["id"] == PACK_B]
    assert proposed and all(f["pack"]["status"] == "proposed" for f in proposed)
    located = [f for f in proposed if "/host.location-" in f["condition_id"]]
    assert located and all("location not measured" in f["message"] for f in located)
    what_if = _status(api, site, include_proposed="true")
    assert what_if["status_view"] == "with-proposed"
    assert "proposed" in what_if["status_counts"]


def test_the_dashboard_counts_proposed_packs_only_when_asked(api: Any) -> None:
    site = _site(api, "Acme Compute", "Frankfurt-8", "DE", 1e7)
    _report(api, site, 2)
    api.services.settle()
    with api.services.db.read() as s:
        from server.api.dashboard import queries

        now = datetime.now(UTC)
        in_force = queries.site_rows(s, now, timedelta(hours=1), site_ids=[site]).items[0]
        what_if = queries.site_rows(
            s, now, timedelta(hours=1), site_ids=[site], include_proposed=True
        ).items[0]
    # Location is not measured: only the proposed Chip Security Act pack cannot attest.
    assert in_force.overall == "affirming", in_force.findings
    assert what_if.overall == "none"
