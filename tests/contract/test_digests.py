"""The contract's file digest is the one the agent's streaming hasher states in snapshots."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.hashing import hash_fd
from contract.digests import file_sha256


@pytest.mark.parametrize("size", [0, 1, 4 * 1024 * 1024 + 3])
def test_file_sha256_matches_the_agents_hasher(tmp_path: Path, size: int) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        streamed, _ = hash_fd(fd)
    finally:
        os.close(fd)
    assert file_sha256(path) == streamed == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unreadable_path_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        file_sha256(tmp_path / "missing")
    with pytest.raises(OSError):
        file_sha256(tmp_path)
