"""Loading validates everything and names the file and line of each mistake."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from server.policy import PackError, load_policy_set
from tests.server.policy.conftest import PACK, edit, line_of


def _load_error(pack_dir: Path) -> PackError:
    with pytest.raises(PackError) as info:
        load_policy_set(pack_dir.parent)
    return info.value


def test_the_shipped_pack_loads_with_status_dates_and_source() -> None:
    policy = load_policy_set(PACK.parent, only=[PACK.name])
    (pack,) = policy.packs
    assert pack.id == "ai-diffusion-2025"
    assert pack.status == "rescinded-not-enforced"
    assert "2025-05-13" in pack.status_note
    assert str(pack.effective) == "2025-01-13"
    assert str(pack.compliance_dates["security"]) == "2026-01-15"
    assert pack.source["rin"] == "0694-AJ90"
    assert pack.source["document"] == "FR Doc 2025-00636"
    assert {v["status"] for v in pack.verification} >= {"confirmed", "unconfirmed"}
    assert len(policy.digest) == 64


def test_digest_changes_when_any_file_changes_and_not_otherwise(pack_copy: Path) -> None:
    first = load_policy_set(pack_copy.parent).digest
    assert load_policy_set(pack_copy.parent).digest == first
    edit(pack_copy / "tests" / "site.yaml", "compliant site", "a compliant site")
    assert load_policy_set(pack_copy.parent).digest != first


def test_unknown_key_is_an_error_with_file_and_line(pack_copy: Path) -> None:
    path = pack_copy / "conditions.yaml"
    edit(
        path,
        "    scope: site\n    severity: cannot_attest",
        "    scope: site\n    sevrity: x\n    severity: cannot_attest",
    )
    err = _load_error(pack_copy)
    assert err.code == "unknown_key"
    assert err.path == path
    assert err.line == line_of(path, "sevrity")


def test_expression_that_does_not_compile_is_rejected(pack_copy: Path) -> None:
    path = pack_copy / "conditions.yaml"
    edit(path, "expression: site.host_count > 0", "expression: site.host_count >")
    err = _load_error(pack_copy)
    assert (err.code, err.line) == ("bad_expression", line_of(path, "site.host_count >"))
    assert "does not compile" in err.detail


def test_expression_naming_an_unknown_variable_or_field_is_rejected(pack_copy: Path) -> None:
    path = pack_copy / "conditions.yaml"
    edit(path, "expression: site.host_count > 0", "expression: sight.host_count > 0")
    assert "unknown variable(s) sight" in _load_error(pack_copy).detail
    edit(path, "expression: sight.host_count > 0", "expression: site.hosts > 0")
    assert "site has no field 'hosts'" in _load_error(pack_copy).detail


def test_expression_with_a_type_error_on_sample_facts_is_rejected(pack_copy: Path) -> None:
    edit(
        pack_copy / "conditions.yaml",
        "expression: site.host_count > 0",
        "expression: site.host_count > 'x' + 1",
    )
    assert _load_error(pack_copy).code == "bad_expression"


def test_condition_without_citation_is_rejected(pack_copy: Path) -> None:
    path = pack_copy / "conditions.yaml"
    text = path.read_text()
    start = text.index("  - id: site.has-evidence")
    cite = text.index("    citation:", start)
    end = text.index("\n", cite) + 1
    path.write_text(text[:cite] + text[end:])
    err = _load_error(pack_copy)
    assert err.code == "missing_citation"
    assert err.line == line_of(path, "- id: site.has-evidence")


def test_template_field_that_does_not_exist_is_rejected(pack_copy: Path) -> None:
    edit(
        pack_copy / "conditions.yaml",
        'seen: "{site.host_count} hosts"',
        'seen: "{site.hostcount} hosts"',
    )
    assert _load_error(pack_copy).code == "bad_template"


def test_same_pci_device_id_twice_in_the_catalog_is_rejected(pack_copy: Path) -> None:
    path = pack_copy / "catalog.yaml"
    edit(
        path,
        '{vendor: "0x10de", device: "0x2331", confidence: U}',
        '{vendor: "0x10de", device: "0x2330", confidence: U}',
    )
    err = _load_error(pack_copy)
    assert err.code == "overlapping_catalog"
    assert err.path == path
    assert "nvidia-h100-sxm" in err.detail


def test_same_reported_name_twice_in_the_catalog_is_rejected(pack_copy: Path) -> None:
    edit(
        pack_copy / "catalog.yaml",
        'names: ["NVIDIA H100 PCIe"]',
        'names: ["NVIDIA H100 80GB HBM3"]',
    )
    assert _load_error(pack_copy).code == "overlapping_catalog"


def test_declared_classification_must_match_the_3a090_rule(pack_copy: Path) -> None:
    path = pack_copy / "catalog.yaml"
    text = path.read_text()
    h20 = text.index("id: nvidia-h20")
    cls = text.index("classification: none", h20)
    path.write_text(
        text[:cls] + "classification: 3A090.b" + text[cls + len("classification: none") :]
    )
    err = _load_error(pack_copy)
    assert err.code == "classification_mismatch"
    assert "give none" in err.detail


def test_missing_confidence_tag_on_a_figure_is_rejected(pack_copy: Path) -> None:
    edit(
        pack_copy / "conditions.yaml",
        "{value: 0.75, confidence: S,",
        "{value: 0.75, confidence: X,",
    )
    assert _load_error(pack_copy).code == "bad_confidence"


def test_yaml_syntax_error_names_the_line(pack_copy: Path) -> None:
    path = pack_copy / "pack.yaml"
    edit(path, 'version: "1.1.0"', "version: [1.0.0")
    err = _load_error(pack_copy)
    assert err.code == "yaml_syntax"
    assert err.path == path and err.line > 0


def test_a_bad_pack_never_replaces_a_good_one(pack_copy: Path) -> None:
    good = load_policy_set(pack_copy.parent)
    edit(pack_copy / "conditions.yaml", "expression: site.host_count > 0", "expression: nope")
    current = good
    with contextlib.suppress(PackError):
        current = load_policy_set(pack_copy.parent)
    assert current is good
    assert any(c.id == "site.has-evidence" for c in good.packs[0].conditions)


def test_only_selects_packs_and_unknown_names_are_errors() -> None:
    with pytest.raises(PackError) as info:
        load_policy_set(PACK.parent, only=["no-such-pack"])
    assert info.value.code == "unknown_pack"
