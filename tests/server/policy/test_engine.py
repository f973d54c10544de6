"""Judging hosts, sites and organizations: what a finding says and when it is raised."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from contract import Accelerator, SnapshotV1
from server.findings import status_of
from server.policy import (
    HostContext,
    ModelRecord,
    ModelRegistry,
    OrgAggregate,
    OrgFacts,
    PolicySet,
    SiteAggregate,
    SiteFacts,
    load_policy_set,
)
from server.policy.errors import PolicyEvaluationError

ON = date(2026, 2, 1)
CONTROLLED = "a" * 64


def snapshot(
    accs: list[dict[str, Any]] | None = None,
    files: list[dict[str, Any]] | None = None,
    encryption: str = "encrypted",
    errors: list[dict[str, str]] | None = None,
) -> SnapshotV1:
    storage = []
    if files is not None:
        storage = [
            {
                "root": "/m",
                "encryption": {"status": encryption},
                "file_count": len(files),
                "total_bytes": 0,
                "files": files,
            }
        ]
    return SnapshotV1.model_validate({
        "agent": {"key_id": "1" * 64, "version": "t"}, "site_id": "s", "host": {}, "seq": 1,
        "prev": None, "nonce": None, "collected_at": "2026-01-01T00:00:00Z",
        "accelerators": accs or [], "storage": storage, "posture": {}, "errors": errors or [],
    })  # fmt: skip


def h100(i: int) -> dict[str, Any]:
    return {"model": "NVIDIA H100 80GB HBM3", "pci_vendor_id": "0x10de", "pci_device_id": "0x2330",
            "pci_bus_id": f"0000:{i:02x}:00.0", "uuid": f"GPU-{i}", "source": "nvml"}  # fmt: skip


def wfile(i: int, digest: str, mode: str = "0600") -> dict[str, Any]:
    return {"path": f"/m/{i}.safetensors", "size": 1000 + i, "mtime": "2026-01-01T00:00:00Z",
            "mode": mode, "uid": 0, "gid": 0, "sha256": digest, "format": "safetensors"}  # fmt: skip # noqa: E501


def ctx(country: str = "DE", **kw: Any) -> HostContext:
    reg = ModelRegistry.of([ModelRecord("frontier", 3e26, digests=(CONTROLLED,))])
    return HostContext(site_id="s", site_country=country, models=reg, **kw)


def test_pci_device_id_wins_over_the_reported_name(policy: PolicySet) -> None:
    acc = Accelerator(
        model="NVIDIA H100 80GB HBM3", pci_vendor_id="0x10DE", pci_device_id="2331", source="nvml"
    )
    match = policy.identify(acc, ON)
    assert match is not None
    assert (match.chip_id, match.matched_by, match.tpp) == ("nvidia-h100-pcie", "pci", 12104)


def test_name_is_used_when_pci_ids_are_unknown(policy: PolicySet) -> None:
    match = policy.identify(Accelerator(model="NVIDIA  H20", source="nvml"), ON)
    assert match is not None
    assert (match.chip_id, match.matched_by, match.classification) == ("nvidia-h20", "name", "none")
    assert match.confidence == ("S",)


def test_identification_is_remembered_per_reported_ids_and_name_and_bounded(
    policy: PolicySet,
) -> None:
    from server.policy import catalog as catalog_module

    cat = policy.active_packs(ON)[0].catalog
    h100_by_pci = Accelerator(pci_vendor_id="0x10de", pci_device_id="0x2331", source="pci")
    first = cat.identify(h100_by_pci)
    assert first is not None and first is cat.identify(h100_by_pci.model_copy())
    # Same name, other ids: another answer, not the remembered one.
    unknown = Accelerator(pci_vendor_id="0x10de", pci_device_id="0xffff", source="pci")
    assert cat.identify(unknown) is None
    # Endless variations (a hostile host) never grow the memory past its bound.
    for i in range(catalog_module._SEEN_MAX + 10):
        cat.identify(Accelerator(model=f"board {i}", source="pci"))
    assert len(cat._seen) <= catalog_module._SEEN_MAX
    assert cat.identify(h100_by_pci) == first


def test_compliant_host_has_no_findings(policy: PolicySet) -> None:
    snap = snapshot([h100(1), h100(2)], [wfile(1, CONTROLLED)])
    assert policy.evaluate_host(snap, ctx(site_may_store_controlled_weights=True), ON) == []


def test_one_finding_per_offending_file_with_subject_and_sizes(policy: PolicySet) -> None:
    files = [wfile(i, f"{i:064x}") for i in range(5)] + [wfile(9, CONTROLLED)]
    findings = policy.evaluate_host(
        snapshot([h100(1)], files), ctx(site_may_store_controlled_weights=True), ON
    )
    unclassified = [f for f in findings if f.condition_id.endswith("host.weights-classified")]
    assert [f.subject for f in unclassified] == [f"file:/m/{i}.safetensors" for i in range(5)]
    assert all(f.severity == "warning" for f in unclassified)
    assert unclassified[0].seen is not None and "1,000 bytes" in unclassified[0].seen
    assert status_of(findings) == "warning"


def test_security_conditions_are_info_before_their_compliance_date(policy: PolicySet) -> None:
    snap = snapshot([], [wfile(1, CONTROLLED, mode="0644")], encryption="unknown")
    before = policy.evaluate_host(
        snap, ctx(site_may_store_controlled_weights=True), date(2025, 6, 1)
    )
    after = policy.evaluate_host(snap, ctx(site_may_store_controlled_weights=True), ON)
    enc_before = [f for f in before if "encrypted" in f.condition_id]
    enc_after = [f for f in after if "encrypted" in f.condition_id]
    assert [f.severity for f in enc_before] == ["info"]
    assert enc_before[0].message.startswith("[compliance from 2026-01-15]")
    assert [f.severity for f in enc_after] == ["violation"]
    assert enc_after[0].seen == "encryption unknown on /m"
    assert enc_after[0].citation is not None and "par. 14" in enc_after[0].citation


def test_gpu_hidden_from_nvml_is_a_violation_only_when_nvml_ran(policy: PolicySet) -> None:
    hidden = {
        "pci_vendor_id": "0x10de",
        "pci_device_id": "0x2330",
        "pci_bus_id": "0000:3b:00.0",
        "source": "pci",
    }
    found = policy.evaluate_host(snapshot([h100(1), hidden]), ctx(), ON)
    assert [f.condition_id.split("/")[1] for f in found] == ["host.accelerator-visible-to-driver"]
    nvml_failed = [{"collector": "nvml", "code": "nvml_init_failed", "detail": "x"}]
    found = policy.evaluate_host(snapshot([hidden], errors=nvml_failed), ctx(), ON)
    assert {f.condition_id.split("/")[1] for f in found} == {"host.collectors-succeeded"}
    assert status_of(found) == "none"


def test_same_gpu_on_the_pci_bus_and_in_nvml_is_not_hidden(policy: PolicySet) -> None:
    twin = {
        "pci_vendor_id": "0x10de",
        "pci_device_id": "0x2330",
        "pci_bus_id": "00000000:01:00.0",
        "source": "pci",
    }
    assert policy.evaluate_host(snapshot([h100(1), twin]), ctx(), ON) == []


def test_site_finding_states_expected_and_seen_tpp(policy: PolicySet) -> None:
    agg = SiteAggregate()
    snap = snapshot([h100(i) for i in range(8)])
    agg.apply(None, policy.contribution(snap, ON, country="DE"))
    facts = SiteFacts("fra-1", "DE", 100_000, agg, host_count=1)
    (finding,) = policy.evaluate_site(facts, ON)
    assert finding.condition_id == "ai-diffusion-2025/site.authorized-tpp"
    assert (finding.expected, finding.seen) == ("≤ 100,000 TPP", "126,656 TPP")
    assert finding.subject == "site:fra-1"
    assert "S" in finding.confidence


def test_universal_veu_report_names_its_denominator(policy: PolicySet) -> None:
    facts = OrgFacts("o", "universal", "US", "US", OrgAggregate({"US": 100, "IN": 900}))
    findings = policy.evaluate_org(facts, ON)
    by_id = {f.condition_id.split("/")[1]: f for f in findings}
    assert set(by_id) == {
        "org.universal-tier1-share",
        "org.universal-country-share",
        "org.universal-us-share",
    }
    assert (
        "latest accepted snapshot of each active host" in by_id["org.universal-tier1-share"].message
    )
    assert by_id["org.universal-country-share"].subject == "country:IN"
    assert by_id["org.universal-country-share"].seen == "90.00% (900 TPP)"
    assert "U" in by_id["org.universal-tier1-share"].confidence


def test_macau_tpp_counts_with_china_and_embargoed_hq_is_a_violation(policy: PolicySet) -> None:
    facts = OrgFacts(
        "o", "national", "MO", "MO", OrgAggregate({"MO": 10, "CN": 10}), national_country="CN"
    )
    ids = {f.condition_id.split("/")[1] for f in policy.evaluate_org(facts, ON)}
    assert "org.hq-not-embargoed" in ids


def test_expression_failing_at_run_time_is_cannot_attest_not_a_pass(policy: PolicySet) -> None:
    from server.policy.engine import judge_condition

    pack = policy.packs[0]
    cond = next(c for c in pack.conditions if c.id == "site.authorized-tpp")
    variables = {
        "site": {"has_authorization": True, "installed_tpp": "lots", "authorized_tpp": 5, "id": "x"}
    }
    (finding,) = judge_condition(pack, cond, variables, ON)
    assert finding.severity == "cannot_attest"
    assert "could not be evaluated" in finding.message


def test_inactive_pack_judges_nothing(policy: PolicySet) -> None:
    assert policy.active_packs(date(2024, 12, 31)) == []
    assert policy.evaluate_site(SiteFacts("s", "CN", 0, SiteAggregate()), date(2024, 12, 31)) == []


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"x": True}, {"x": 1}),
        ({"x": 1}, {"x": 1.0}),
        ({"x": "1"}, {"x": 1}),
        ({"x": None}, {"x": "None"}),
        ({"x": ["a,b"]}, {"x": ["a", "b"]}),
        ({"x": {"k": "v"}}, {"x": {"k": "v "}}),
    ],
)
def test_the_verdict_memo_never_takes_one_set_of_facts_for_another(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    from server.policy.cel import compile_expression
    from server.policy.engine import _fingerprint

    assert _fingerprint(a) != _fingerprint(b)
    expr = compile_expression("x == true", {"x": True})
    first = expr.holds_memo(a, _fingerprint(a))
    assert first == expr.holds(a)
    try:
        expected: bool | None = expr.holds(b)
    except PolicyEvaluationError:
        expected = None
    try:
        second: bool | None = expr.holds_memo(b, _fingerprint(b))
    except PolicyEvaluationError:
        second = None
    assert second == expected


def test_a_remembered_finding_is_rendered_again_when_a_variable_its_text_names_changes(
    pack_copy: Path,
) -> None:
    """Findings are remembered by the facts they are rendered from; a text may name a variable
    the expression does not read (here ``host.id``), and that variable is part of the key."""
    conditions = pack_copy / "conditions.yaml"
    text = conditions.read_text()
    old = 'message: "Unclassified weight file {file.path} ('
    assert old in text
    conditions.write_text(
        text.replace(old, 'message: "Unclassified weight file {file.path} on {host.id} (')
    )
    policy = load_policy_set(pack_copy.parent, only=[pack_copy.name])
    snap = snapshot([h100(1)], [wfile(1, "e" * 64)])

    def messages(host_id: str) -> list[str]:
        found = policy.evaluate_host(snap, ctx(host_id=host_id), ON)
        return [f.message for f in found if f.condition_id.endswith("weights-classified")]

    assert messages("host-a") == messages("host-a")
    assert "on host-a" in messages("host-a")[0]
    assert "on host-b" in messages("host-b")[0]
    # The date is part of it too: a condition's compliance date may pass between two snapshots.
    cond = next(
        c for c in policy.active_packs(ON)[0].conditions if c.id == "host.weights-classified"
    )
    assert {key[0] for key in cond.findings_memo} == {ON}
