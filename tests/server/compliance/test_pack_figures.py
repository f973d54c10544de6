"""Every figure a condition or a warning uses comes from the pack: edit a copy, it follows.

A real ``veu-server serve`` (SQLite) judges by a copied pack (``VEU_POLICIES_DIR``) whose
``h100e_tpp``, LPP limit, Tier 2 allocation and ledger grace period differ from the shipped
pack's; the site status API, the findings and the shipment warnings must show the copy's figures.
The reports' distribution is built by the real report builder from a copy with other shares.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import reports
from server.config import shipped_policies_dir
from server.policy import PolicySet, load_policy_set
from tests.server.api.dashboard.conftest import make_env
from tests.server.builders import HostKit, h100_accelerators
from tests.server.conftest import Fleet, make_fleet, start_server, stop_server

PACK = "ai-diffusion-2025"
H100_TPP = 15832


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _copy(tmp_path: Path, edits: list[tuple[str, str]]) -> Path:
    dest = tmp_path / "policies"
    shutil.copytree(shipped_policies_dir(), dest)
    for old, new in edits:
        _edit(dest / PACK / "conditions.yaml", old, new)
    return dest


@pytest.fixture
def edited_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    policies = _copy(
        tmp_path,
        [
            ("{value: 15832,", "{value: 7916,"),  # h100e_tpp: half an H100's TPP
            ("{value: 26900000,", "{value: 10000000,"),  # LPP limit per consignee and year
            ("value: 790000000", "value: 10000000"),  # Tier 2 allocation
            ("    value: 30\n", "    value: 5\n"),  # ledger grace period (days)
        ],
    )
    monkeypatch.setenv("VEU_POLICIES_DIR", str(policies))
    data_dir = tmp_path / "data"
    server = start_server(data_dir, f"sqlite:///{data_dir / 'veu.sqlite3'}")
    try:
        yield make_fleet(server)
    finally:
        stop_server(server)


def _add_site(fleet: Fleet, name: str, authorized: str) -> str:
    out = fleet.server.cli(
        "site", "add", "Acme Compute", name, "--country", "DE", "--authorized-tpp", authorized
    )
    return out.stdout.strip().splitlines()[-1]


def _enroll(fleet: Fleet, kit: HostKit) -> None:
    token = fleet.server.cli("enroll-token", "create", kit.site_id).stdout.strip().splitlines()
    fleet.enroll_with(kit, token[-1])


def _submit(fleet: Fleet, kit: HostKit) -> dict[str, Any]:
    r = httpx.post(
        f"{fleet.server.url}/v1/snapshots",
        content=kit.next_envelope(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _status(fleet: Fleet, site: str) -> dict[str, Any]:
    r = httpx.get(
        f"{fleet.server.url}/v1/sites/{site}/status",
        headers={"Authorization": f"Bearer {fleet.auditor_key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _ship(fleet: Fleet, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(
        f"{fleet.server.url}/v1/shipments",
        json=body,
        headers={"Authorization": f"Bearer {fleet.admin_key}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_h100_equivalents_follow_the_packs_h100e_tpp_in_status_and_findings(
    edited_fleet: Fleet,
) -> None:
    small = _add_site(edited_fleet, "Tiny-1", "1000")
    kit = HostKit(small)
    _enroll(edited_fleet, kit)
    _submit(edited_fleet, kit)
    status = _status(edited_fleet, small)
    assert status["installed_tpp"] == 8 * H100_TPP
    assert status["installed_h100e"] == 16.0  # 8 x 15,832 / 7,916 (the shipped pack: 8.0)
    over = [f for f in status["findings"] if f["condition_id"].endswith("site.authorized-tpp")]
    assert len(over) == 1 and "(16.0 H100e)" in over[0]["message"], over


def test_shipment_limits_follow_the_packs_lpp_and_tier2_figures(edited_fleet: Fleet) -> None:
    base = {
        "shipped_on": "2026-03-01",
        "destination_country": "IN",
        "end_user": "non-veu",
        "chip_model": "NVIDIA H100 80GB HBM3",
        "quantity": 1000,  # 15.8 M TPP: within the shipped pack's 26.9 M and 790 M
    }
    lpp = _ship(edited_fleet, {**base, "consignee": "Small Lab", "license_exception": "LPP"})
    assert [w["code"] for w in lpp["warnings"]] == ["lpp_limit_exceeded"]
    assert "10,000,000" in lpp["warnings"][0]["detail"]
    assert "740.29" in lpp["warnings"][0]["citation"]
    licensed = _ship(edited_fleet, {**base, "consignee": "Big Lab", "license_exception": "license"})
    assert [w["code"] for w in licensed["warnings"]] == ["country_allocation_exceeded"]
    assert "10,000,000" in licensed["warnings"][0]["detail"]
    assert "742.6" in licensed["warnings"][0]["citation"]


def test_the_ledger_conditions_are_the_packs_with_its_grace_period(edited_fleet: Fleet) -> None:
    site = _add_site(edited_fleet, "Ledger-1", "5e6")
    kit = HostKit(site)
    seen = h100_accelerators(0)
    _ship(
        edited_fleet,
        {
            "shipped_on": (date.today() - timedelta(days=10)).isoformat(),
            "site": site,
            "consignee": "Acme Compute GmbH",
            "chip_model": "NVIDIA H100 80GB HBM3",
            "uuids": [a.uuid for a in seen[:7]] + ["GPU-never-arrived"],
        },
    )
    _enroll(edited_fleet, kit)
    _submit(edited_fleet, kit)
    found = _status(edited_fleet, site)["findings"]
    missing = [f for f in found if f["condition_id"] == f"{PACK}/site.shipped-chip-missing"]
    unexpected = [f for f in found if f["condition_id"] == f"{PACK}/site.unexpected-chip"]
    # Ten days after shipping: missing under the copy's 5-day grace period (the shipped pack: 30).
    assert [f["subject"] for f in missing] == ["accelerator:uuid:GPU-never-arrived"]
    assert missing[0]["expected"] == f"reported at site {site} within 5 days"
    assert missing[0]["citation"].startswith("S10 par. 10")
    assert len(unexpected) == 1 and seen[7].uuid in unexpected[0]["subject"]
    assert unexpected[0]["severity"] == "warning"


def test_the_reports_distribution_follows_the_packs_universal_shares(tmp_path: Path) -> None:
    policies = _copy(
        tmp_path,
        [
            ("{value: 0.75,", "{value: 0.9,"),
            ("{value: 0.07,", "{value: 0.2,"),
            ("{value: 0.50,", "{value: 0.3,"),
        ],
    )
    policy: PolicySet = load_policy_set(policies)
    env = make_env(tmp_path / "env", policy)
    try:
        with env.svc.db.read() as s:
            data = reports.build_report(
                s,
                policy,
                env.fleet.org_id,
                reports.Period.parse("2026H2"),
                datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
            )
    finally:
        env.svc.db.dispose()
    d = data["distribution"]
    assert (d["tier1_min"], d["us_min"], d["non_tier1_max"]) == (0.9, 0.3, 0.2)
    ae = next(c for c in d["countries"] if c["country"] == "AE")
    assert ae["share"] > 0.07 and ae["within"] is True  # within the copy's 20%
    assert "20%" in ae["limit"]


def test_a_pack_missing_a_parameter_the_verifier_needs_does_not_load(tmp_path: Path) -> None:
    from server.policy import PackError

    for name in (
        "universal_tier1_min_share",
        "h100e_tpp",
        "tier2_allocation_tpp",
        "model_training_ops",
    ):
        policies = tmp_path / name
        shutil.copytree(shipped_policies_dir(), policies)
        path = policies / PACK / "conditions.yaml"
        lines = path.read_text().splitlines(keepends=True)
        start = next(i for i, line in enumerate(lines) if line.startswith(f"  {name}:"))
        end = start + 1
        while lines[end].startswith("    "):
            end += 1
        path.write_text("".join(lines[:start] + lines[end:]))
        with pytest.raises(PackError) as caught:
            load_policy_set(policies)
        err = caught.value
        assert err.code == "missing_parameter" and err.path == path
        assert PACK in err.detail and name in err.detail and "conditions.yaml" in err.detail
