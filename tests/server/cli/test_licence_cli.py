"""`veu-server licence add DIR`: a licence pack is validated like a pack, its fixtures run, the
organizations it is attached to exist, and only then is it written into the policy directory and
recorded for every worker; any refusal leaves the directory as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from server.cli import main
from server.config import ENV_POLICIES_DIR, shipped_policies_dir
from tests.server.policy.conftest import edit

EXAMPLE = (
    Path(__file__).resolve().parents[3] / "docs" / "examples" / "licences" / "uae-gb300-example"
)
LICENCE_ID = "licence-d000000-uae-example"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    policies = tmp_path / "policies"
    shutil.copytree(shipped_policies_dir(), policies, ignore=shutil.ignore_patterns("*.py*"))
    monkeypatch.setenv(ENV_POLICIES_DIR, str(policies))
    data = tmp_path / "data"
    for argv in (
        ["org", "add", "UAE Ops", "--veu", "universal", "--hq", "AE"],
        ["site", "add", "UAE Ops", "abu-dhabi-1", "--country", "AE", "--authorized-tpp", "1e9"],
    ):
        code, _, err = run(capsys, *argv, "--data-dir", str(data))
        assert code == 0, err
    return policies, data


def _listing(policies: Path) -> list[str]:
    return sorted(p.relative_to(policies).as_posix() for p in policies.rglob("*"))


def test_a_licence_is_checked_attached_written_and_recorded(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policies, data = setup
    code, out, err = run(
        capsys, "licence", "add", str(EXAMPLE), "--organization", "UAE Ops", "--data-dir", str(data)
    )
    assert code == 0, err
    assert out.strip() == LICENCE_ID and "recorded as policy generation" in err
    installed = (policies / LICENCE_ID / "pack.yaml").read_text()
    assert "org-uae-example" in installed and "org_" in installed  # the example's and the real id
    code, out, err = run(capsys, "policy", "test", "--policies", str(policies))
    assert code == 0 and out.count("PASS") == 4, out + err
    # A second add of the same licence is a conflict unless it replaces the first.
    code, _, err = run(capsys, "licence", "add", str(EXAMPLE), "--data-dir", str(data))
    assert code == 6 and "licence_exists" in err


@pytest.mark.parametrize(
    ("change", "code", "error"),
    [
        (("status: licence-condition", "status: in-force"), 4, "not_a_licence"),
        (("value: 35000,", "value: 35000000,"), 4, "licence_fixtures_failed"),
        (("licensed_models:", "licenced_models:"), 4, "bad-licence/conditions.yaml:"),
    ],
)
def test_a_bad_licence_changes_nothing(
    setup: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    change: tuple[str, str],
    code: int,
    error: str,
) -> None:
    policies, data = setup
    before = _listing(policies)
    bad = tmp_path / "bad-licence"
    shutil.copytree(EXAMPLE, bad)
    target = "pack.yaml" if change[0].startswith("status") else "conditions.yaml"
    edit(bad / target, *change)
    got, _, err = run(
        capsys, "licence", "add", str(bad), "--organization", "UAE Ops", "--data-dir", str(data)
    )
    assert (got, error in err, "Traceback" in err) == (code, True, False), err
    assert _listing(policies) == before


def test_an_unknown_organization_is_not_found(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policies, data = setup
    before = _listing(policies)
    code, _, err = run(
        capsys, "licence", "add", str(EXAMPLE), "--organization", "Nobody", "--data-dir", str(data)
    )
    assert code == 3 and "unknown_org" in err
    # Without --organization the licence must name organizations that exist.
    code, _, err = run(capsys, "licence", "add", str(EXAMPLE), "--data-dir", str(data))
    assert code == 3 and "org-uae-example" in err
    assert _listing(policies) == before


def test_the_shipped_packs_are_not_written_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_POLICIES_DIR, raising=False)
    code, _, err = run(capsys, "licence", "add", str(EXAMPLE), "--data-dir", str(tmp_path / "data"))
    assert code == 4 and "shipped_policies" in err
