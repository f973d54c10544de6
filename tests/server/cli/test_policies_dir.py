"""One policy directory for every command: ``--policies``, else ``VEU_POLICIES_DIR``, else the packs
shipped inside the package (so an installed wheel judges without a checkout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import policies
from server.cli import main
from server.config import ENV_POLICIES_DIR, Settings, resolve_policies_dir, shipped_policies_dir

SHIPPED = Path(policies.__file__).resolve().parent


def test_flag_wins_over_the_environment_which_wins_over_the_shipped_packs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_POLICIES_DIR, raising=False)
    assert resolve_policies_dir() == shipped_policies_dir() == SHIPPED
    assert (SHIPPED / "ai-diffusion-2025" / "pack.yaml").is_file()
    assert Settings().policies_dir == SHIPPED
    monkeypatch.setenv(ENV_POLICIES_DIR, str(tmp_path))
    assert resolve_policies_dir() == tmp_path == Settings.from_env().policies_dir
    assert resolve_policies_dir(tmp_path / "flag") == tmp_path / "flag"


def test_policy_test_judges_by_the_packs_in_veu_policies_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_POLICIES_DIR, str(tmp_path))
    assert main(["policy", "test"]) == 2
    assert f"no packs under {tmp_path}" in capsys.readouterr().err
    shutil.copytree(SHIPPED / "ai-diffusion-2025", tmp_path / "copied-pack")
    assert main(["policy", "test"]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")


def test_the_demo_judges_by_the_packs_in_veu_policies_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.devtools.demo import Demo

    shutil.copytree(SHIPPED / "ai-diffusion-2025", tmp_path / "packs" / "copied-pack")
    monkeypatch.setenv(ENV_POLICIES_DIR, str(tmp_path / "packs"))
    demo = Demo(tmp_path / "demo", 0, 1, "20s")
    demo.build_app()
    try:
        services = demo.app.state.veu
        assert services.settings.policies_dir == tmp_path / "packs"
    finally:
        demo.app.state.veu.db.dispose()
