"""Signed attestation results: the EAR shape (EAT Attestation Results) as an EdDSA JWT.

The verifier's Ed25519 key lives in the data directory (``verifier.key``, PKCS#8 PEM, mode 0600)
and is created on first use. A relying party checks a result offline with the public key from
``GET /v1/verifier-key``; :func:`contract.results.verify_result` is that check (written with
``cryptography`` alone, so agents need no JOSE library); the profile, submodule name and algorithm
are the contract's.

``alg`` is ``EdDSA`` (RFC 8037), which every JOSE library and Veraison's EAR tooling accept; RFC
9864 prefers the fully specified ``Ed25519`` name, so joserfc warns about ``EdDSA``. That warning
is about naming, not strength, and is silenced for this one algorithm here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jwt
from joserfc.jwk import OKPKey

from contract.assurance import ASSURANCE_CLAIM
from contract.errors import ResultError
from contract.fsutil import atomic_write
from contract.keys import key_id, private_pem, public_pem
from contract.results import ALG, EAR_PROFILE, SUBMOD, TYP
from server.findings import Finding, Status, status_of

warnings.filterwarnings("ignore", message=r"EdDSA is deprecated", module=r"joserfc\..*")


@dataclass(frozen=True)
class VerifierKey:
    private: Ed25519PrivateKey
    key_id: str
    jwk: OKPKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Imported once: building the JWK per result costs more than the signature itself.
        object.__setattr__(self, "jwk", OKPKey.import_key(private_pem(self.private)))

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def public_pem(self) -> str:
        return public_pem(self.public).decode("ascii")


def load_or_create_key(path: Path) -> VerifierKey:
    """Load the verifier key, creating it (0600) if absent. Refuses a key others can read."""
    key = load_or_create_private(path, kind="verifier")
    return VerifierKey(private=key, key_id=key_id(key.public_key()))


def load_or_create_private(path: Path, *, kind: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PKCS#8 PEM file, created (0600) if absent; a file others
    can read is refused (code ``<kind>_key_permissions``). The verifier's result key and the
    transparency log's key (server/log/) are two such files."""
    from cryptography.hazmat.primitives import serialization

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd_key = Ed25519PrivateKey.generate()
            # O_EXCL semantics via a temp + link would race with a sibling worker; atomic_write
            # then re-read means two workers starting together end up with the same key.
            atomic_write(path, private_pem(fd_key), mode=0o600)
        except FileExistsError:  # pragma: no cover
            pass
    if path.stat().st_mode & 0o077:
        raise ResultError(
            f"{path} is readable by group or others; chmod 600 it", code=f"{kind}_key_permissions"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ResultError(f"{path} is not an Ed25519 key", code=f"bad_{kind}_key")
    return key


def sign_result(
    key: VerifierKey,
    *,
    verifier_id: str,
    issued_at: datetime,
    findings: tuple[Finding, ...] | list[Finding],
    digest: str,
    host_key_id: str,
    site_id: str,
    seq: int,
    nonce: str | None,
    policy_digest: str | None = None,
    status: Status | None = None,
    assurance: str | None = None,
    sources: Mapping[str, dict[str, Any]] | None = None,
) -> str:
    """Sign an EAR for one appraised snapshot; ``status`` defaults to the findings' worst.

    ``assurance``: the host's level (its weakest claim's), in ``veu-snapshot``; ``sources``: one
    submodule per evidence source (name to its ``ear.status``, level and detail)."""
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": int(issued_at.timestamp()),
        "ear.verifier-id": {"developer": "veu-attest", "build": verifier_id},
        "submods": {
            SUBMOD: {
                "ear.status": status or status_of(list(findings)),
                "findings": [f.to_json() for f in findings],
                "digest": digest,
                "host_key_id": host_key_id,
                "site_id": site_id,
                "seq": seq,
                "policy_digest": policy_digest,
                "nonce": nonce,
                ASSURANCE_CLAIM: assurance,
            },
            **(sources or {}),
        },
    }
    header = {"alg": ALG, "kid": key.key_id, "typ": TYP}
    return jwt.encode(header, claims, key.jwk, algorithms=[ALG])
