"""The host key file: create, store (PKCS#8 PEM, mode 0600) and load.

Key ids and encodings come from :mod:`contract.keys` (the key id is the SHA-256 of the raw public
key). The private key is never logged or printed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.fsutil import atomic_write
from contract.keys import private_pem, public_pem

PRIVATE_NAME = "agent.key"
PUBLIC_NAME = "agent.pub"


class KeyFileError(Exception):
    """A key that cannot be created or loaded. ``code`` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def create(state_dir: Path, *, force: bool = False) -> Ed25519PrivateKey:
    """Create a new host key in ``state_dir``; refuse to overwrite one unless ``force``."""
    private_path = state_dir / PRIVATE_NAME
    if private_path.exists() and not force:
        raise KeyFileError(
            "key_exists",
            f"{private_path} already exists; pass --force to replace it (the host will need "
            "to enroll again, and its evidence chain starts over)",
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    atomic_write(private_path, private_pem(key), mode=0o600)
    atomic_write(state_dir / PUBLIC_NAME, public_pem(key.public_key()), mode=0o644)
    return key


def load(state_dir: Path) -> Ed25519PrivateKey:
    """Load the host key, refusing one that others can read."""
    path = state_dir / PRIVATE_NAME
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise KeyFileError("no_key", f"no host key at {path}; run `veu-agent init` first") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            "key_permissions",
            f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`",
        )
    if os.name == "posix" and st.st_uid != os.geteuid() and os.geteuid() != 0:
        raise KeyFileError("key_permissions", f"{path} is owned by another user")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError("bad_key", f"{path} is not an unencrypted PKCS#8 PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("bad_key", f"{path} is not an Ed25519 key")
    return key
