"""Several packs judged side by side: which packs apply, what each finding says about its pack,
the digest of the set, and the headline status with and without proposed packs."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from server.findings import Finding, status_of
from server.policy import (
    OrgAggregate,
    OrgFacts,
    PackError,
    SiteAggregate,
    SiteFacts,
    load_policy_set,
)
from server.policy.aggregate import HostContribution, ModelTotal
from tests.server.policy.conftest import PACK, edit

ON = date(2026, 2, 1)


def _second_pack(root: Path, *, status: str = "proposed", applies: str = "") -> Path:
    """A copy of the 2025 pack under another id and status, whose H100 has another TPP."""
    dest = root / "other-pack"
    shutil.copytree(PACK, dest)
    edit(dest / "pack.yaml", "id: ai-diffusion-2025", "id: other-pack")
    edit(dest / "pack.yaml", "status: rescinded-not-enforced", f"status: {status}\n{applies}")
    # The same chip id defined differently: 2x the TPP, so the authorization is exceeded here only.
    edit(
        dest / "catalog.yaml",
        "tpp: {value: 15832, confidence: S",
        "tpp: {value: 31664, confidence: S",
    )
    return dest


@pytest.fixture
def two_packs(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    shutil.copytree(PACK, root / PACK.name)
    _second_pack(root)
    return root


def _site(country: str = "DE", tpp_per_chip: int = 15832) -> SiteFacts:
    agg = SiteAggregate()
    models = {
        "nvidia-h100-sxm": ModelTotal(count=8, tpp=8 * tpp_per_chip, classification="3A090.a")
    }
    agg.apply(None, HostContribution(models, 8 * tpp_per_chip, (), country))
    return SiteFacts(
        site_id="fra-1",
        country=country,
        authorized_tpp=200_000,
        aggregate=agg,
        host_count=1,
        org_id="org-1",
    )


def test_findings_name_pack_version_and_status(two_packs: Path) -> None:
    policy = load_policy_set(two_packs)
    assert [p.id for p in policy.packs] == ["ai-diffusion-2025", "other-pack"]
    findings = policy.evaluate_site(_site(), ON)
    by_pack = {f.pack_id: f for f in findings}
    # Each pack judges by its own catalog: 8 H100 are 126,656 TPP under the 2025 pack (within
    # 200,000) and 253,312 under the other (over it).
    assert set(by_pack) == {"other-pack"}
    f = by_pack["other-pack"]
    assert f.condition_id == "other-pack/site.authorized-tpp"
    assert (f.pack_version, f.pack_status) == ("1.1.0", "proposed")
    assert f.to_json()["pack"] == {"id": "other-pack", "version": "1.1.0", "status": "proposed"}
    assert Finding.from_json(f.to_json()) == f


def test_headline_counts_proposed_packs_only_when_asked(two_packs: Path) -> None:
    policy = load_policy_set(two_packs)
    findings = policy.evaluate_site(_site(), ON)
    assert status_of(findings) == "affirming"
    assert status_of(findings, include_proposed=True) == "contraindicated"


def test_digest_covers_every_pack(two_packs: Path, tmp_path: Path) -> None:
    both = load_policy_set(two_packs).digest
    one = load_policy_set(two_packs, only=[PACK.name]).digest
    assert both != one
    edit(two_packs / "other-pack" / "catalog.yaml", "31664", "31665")
    assert load_policy_set(two_packs).digest != both


def test_pack_applies_only_to_its_countries(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(PACK, root / PACK.name)
    _second_pack(root, applies="applies_to: {countries: [CN, MO]}")
    policy = load_policy_set(root)
    de = {f.pack_id for f in policy.evaluate_site(_site("DE"), ON)}
    assert "other-pack" not in de
    # Macau is treated with China by the pack's countries.yaml: the pack applies there too.
    for country in ("CN", "MO"):
        packs = {f.pack_id for f in policy.evaluate_site(_site(country), ON)}
        assert "other-pack" in packs, country


def test_pack_applies_only_to_its_org_types(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(PACK, root / PACK.name)
    _second_pack(root, applies="applies_to: {org_types: [national]}")
    policy = load_policy_set(root)
    facts = OrgFacts(
        org_id="org-1",
        veu_type="universal",
        hq_country="US",
        parent_hq_country="US",
        aggregate=OrgAggregate(),
    )
    assert "other-pack" not in {f.pack_id for f in policy.evaluate_org(facts, ON)}
    facts.veu_type = "national"
    assert "other-pack" in {f.pack_id for f in policy.evaluate_org(facts, ON)}


def test_licence_pack_must_be_attached(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    _second_pack(root, status="licence-condition")
    with pytest.raises(PackError) as err:
        load_policy_set(root)
    assert err.value.code == "unattached_licence"


def test_unknown_pack_status_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    _second_pack(root, status="draft")
    with pytest.raises(PackError) as err:
        load_policy_set(root)
    assert err.value.code == "bad_status"


def test_the_example_licence_passes_its_fixtures() -> None:
    from server.policy.testing import run_pack_tests

    example = PACK.parents[1] / "docs" / "examples" / "licences" / "uae-gb300-example"
    report = run_pack_tests(example)
    assert report.ok, "\n".join(report.lines())
    assert {c.condition_id.split("/")[1] for c in report.conditions} == {
        "site.licence-not-expired",
        "site.licence-allowed-site",
        "site.licence-models",
        "site.licence-chip-count",
        "site.licence-tpp",
    }
