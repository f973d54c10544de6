"""The digest of a model-weight file, as a snapshot's ``WeightFile.sha256`` and the verifier's
model registry state it: lowercase hex SHA-256 of the file's bytes.

The agent computes the same value with its own streaming hasher (``agent.hashing.hash_fd``, which
also notices a file changing under it); this is the plain definition for everyone else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Lowercase hex SHA-256 of the file at ``path``. Raises :class:`OSError` if unreadable."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
