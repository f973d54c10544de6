"""``veu-server`` checks for the ``[server]`` extra before importing the verifier (the agent-only
install itself is exercised in tests/packaging/test_wheel.py)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

import contract
from server import launch

REPO = Path(__file__).resolve().parents[2]


def test_the_checked_modules_are_those_of_the_server_extra() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    for requirement in extra["server"]:
        if ";" in requirement:  # platform-only (uvloop): uvicorn runs without it
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None
        dist = name.group(0).lower().replace("_", "-")
        assert modules_of[dist] & set(launch.SERVER_MODULES), f"{requirement} is not checked"
    assert launch.missing_modules() == []  # this environment has the extra


def test_version_is_the_contracts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        launch.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"veu-server {contract.__version__}"
