"""The host key: a file (Ed25519, PKCS#8 PEM, mode 0600) or, when the host has a TPM, a key
held in it (agent.tpm.keys); :func:`initialize` picks, :func:`load_signer` loads either.

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
from contract.keys import Signer, private_pem, public_pem

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


def load_signer(state_dir: Path) -> Signer:
    """What signs for this host: its TPM-resident key when ``init`` made one (``tpm-keys.json``;
    ``VEU_TPM_TCTI`` overrides the TPM it names), else the key file."""
    from agent.tpm import TCTI_ENV, TpmError
    from agent.tpm import keys as tpm_keys

    try:
        stored = tpm_keys.stored(state_dir)
    except TpmError as exc:
        raise KeyFileError(exc.code, exc.detail) from exc
    if stored is None:
        return load(state_dir)
    try:
        return tpm_keys.TpmSigner(stored, os.environ.get(TCTI_ENV, "").strip() or None)
    except TpmError as exc:
        raise KeyFileError(exc.code, exc.detail) from exc


def initialize(state_dir: Path, *, tpm: bool | None, force: bool = False) -> tuple[Signer, str]:
    """Create this host's key: in its TPM when ``tpm`` is true (refusing when there is none),
    in a file when false, and when None in the TPM if one is present and usable, else in a file.
    Returns the signer and a sentence saying which, and why."""
    from agent.tpm import TpmError, detect, pytss_missing
    from agent.tpm import keys as tpm_keys

    for name in (PRIVATE_NAME, tpm_keys.KEYS_NAME):
        if (state_dir / name).exists() and not force:
            raise KeyFileError(
                "key_exists",
                f"{state_dir / name} already exists; pass --force to replace it (the host will "
                "need to enroll again, and its evidence chain starts over)",
            )
    tcti = detect() if tpm is not False else None
    missing = pytss_missing() if tcti is not None else None
    if tpm is True and tcti is None:
        raise KeyFileError(
            "no_tpm",
            "no TPM found (no /dev/tpmrm0 and VEU_TPM_TCTI is not set); run without --tpm to "
            "keep the host key in a file",
        )
    if tpm is True and missing is not None:
        raise KeyFileError("tpm_unavailable", missing)
    if tcti is not None and missing is None:
        try:
            made = tpm_keys.create(state_dir, tcti, force=True)
        except TpmError as exc:
            raise KeyFileError(exc.code, exc.detail) from exc
        (state_dir / PRIVATE_NAME).unlink(missing_ok=True)
        signer = tpm_keys.TpmSigner(made)
        atomic_write(state_dir / PUBLIC_NAME, public_pem(signer.public_key()), mode=0o644)
        return signer, (
            f"Host key created in the TPM ({tcti}): ECDSA P-256, certified by a restricted "
            f"attestation key under the endorsement key; kept in {state_dir / tpm_keys.KEYS_NAME}."
        )
    key = create(state_dir, force=True)
    (state_dir / tpm_keys.KEYS_NAME).unlink(missing_ok=True)
    if tpm is False:
        why = "--no-tpm given"
    elif tcti is None:
        why = "no TPM found"
    else:
        why = f"a TPM is present but {missing}"
    return key, (
        f"Host key written to {state_dir / PRIVATE_NAME} (mode 0600); {why}: evidence is "
        "self-reported (root on this host can read the key)."
    )
