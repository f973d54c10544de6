"""Every condition of every shipped pack holds in one fixture and fails in another."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.policy import run_pack_tests

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.mark.parametrize(
    "pack_dir", sorted(p.parent for p in POLICIES.glob("*/pack.yaml")), ids=lambda p: p.name
)
def test_every_condition_holds_and_fails_in_some_fixture(pack_dir: Path) -> None:
    report = run_pack_tests(pack_dir)
    assert report.ok, "\n".join(report.lines())
    assert all(c.holds_in and c.fails_in for c in report.conditions)


def test_a_condition_without_a_failing_fixture_fails_the_run(pack_copy: Path) -> None:
    path = pack_copy / "tests" / "site.yaml"
    text = path.read_text().replace(
        "      - site.unique-accelerator-identity\n      - site.hosts-fresh",
        "      - site.hosts-fresh",
    )
    text = text.replace(
        '      duplicates:\n        - {identity: "uuid:GPU-1", hosts: [host-a, host-b]}\n', ""
    )
    path.write_text(text)
    report = run_pack_tests(pack_copy)
    assert not report.ok
    cov = next(
        c for c in report.conditions if c.condition_id.endswith("site.unique-accelerator-identity")
    )
    assert cov.fails_in == []


def test_a_fixture_whose_outcome_differs_is_reported(pack_copy: Path) -> None:
    path = pack_copy / "tests" / "site.yaml"
    path.write_text(path.read_text().replace("authorized_tpp: 200000", "authorized_tpp: 2000", 1))
    report = run_pack_tests(pack_copy)
    bad = [c for c in report.cases if not c.ok]
    assert len(bad) == 1 and "expected site.authorized-tpp to hold" in bad[0].problems[0]
