from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from server.policy import PolicySet, load_policy_set

PACK = Path(__file__).resolve().parents[3] / "policies" / "ai-diffusion-2025"


@pytest.fixture(scope="session")
def policy() -> PolicySet:
    return load_policy_set(PACK.parent, only=[PACK.name])


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "policies" / PACK.name
    shutil.copytree(PACK, dest)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)
