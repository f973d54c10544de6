"""Signed attestation results: the EAR shape (EAT Attestation Results) as an EdDSA JWT.

The verifier's Ed25519 key lives in the data directory (``verifier.key``, PKCS#8 PEM, mode 0600)
and is created on first use. A relying party checks a result offline with the public key from
``GET /v1/verifier-key``; :func:`verify_result` is that check.

``alg`` is ``EdDSA`` (RFC 8037), which every JOSE library and Veraison's EAR tooling accept; RFC
9864 prefers the fully specified ``Ed25519`` name, so joserfc warns about ``EdDSA``. That warning
is about naming, not strength, and is silenced for this one algorithm here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from agent.fsutil import atomic_write
from agent.keys import key_id, load_public_pem, private_pem, public_pem
from server.findings import Finding, Status, status_of

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
SUBMOD = "veu-snapshot"
ALG = "EdDSA"

warnings.filterwarnings("ignore", message=r"EdDSA is deprecated", module=r"joserfc\..*")


class ResultError(Exception):
    """A result token that does not verify or does not have the EAR shape."""


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
        raise ResultError(f"{path} is readable by group or others; chmod 600 it")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ResultError(f"{path} is not an Ed25519 key")
    return VerifierKey(private=key, key_id=key_id(key.public_key()))


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
) -> str:
    """Sign an EAR for one appraised snapshot; ``status`` defaults to the findings' worst."""
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
            }
        },
    }
    header = {"alg": ALG, "kid": key.key_id, "typ": "JWT"}
    return jwt.encode(header, claims, key.jwk, algorithms=[ALG])


def verify_result(token: str, public_key: Ed25519PublicKey | bytes | str) -> dict[str, Any]:
    """Check a result's signature and shape; return its claims. Raises :class:`ResultError`."""
    if isinstance(public_key, str):
        public_key = public_key.encode("ascii")
    if isinstance(public_key, bytes):
        public_key = load_public_pem(public_key)
    jwk = OKPKey.import_key(public_pem(public_key))
    try:
        decoded = jwt.decode(token, jwk, algorithms=[ALG])
    except (JoseError, ValueError) as exc:
        raise ResultError(f"result does not verify: {exc}") from exc
    claims = dict(decoded.claims)
    if claims.get("eat_profile") != EAR_PROFILE:
        raise ResultError("result is not an EAR (eat_profile missing or wrong)")
    sub = claims.get("submods", {}).get(SUBMOD)
    if not isinstance(sub, dict) or "ear.status" not in sub:
        raise ResultError(f"result has no {SUBMOD} submodule status")
    return claims


def result_status(claims: dict[str, Any]) -> str:
    return str(claims["submods"][SUBMOD]["ear.status"])
