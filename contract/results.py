"""Signed attestation results (EAR, EAT Attestation Results, as an EdDSA JWT): their shape and the
offline check a relying party or an agent runs on one.

The verifier signs results (``server.results``); this module only verifies them, with
``cryptography`` alone, so an agent host needs no JOSE library. A result is a JWS compact
serialization ``header.claims.signature`` (base64url, no padding) whose header says ``alg`` EdDSA
(RFC 8037: Ed25519 here) and ``typ`` JWT, signed over the ASCII ``header.claims``. Anything else
(``alg`` none or another algorithm, ``crit`` extensions, a ``kid`` naming another key, a bad
signature, claims without the EAR profile or our submodule's status) is a :class:`ResultError`
with a stable code.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from contract.errors import EvidenceError, ResultError
from contract.jsonstrict import parse_json_strict
from contract.keys import key_id, load_public_pem

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
#: The submodule of an EAR that carries the appraisal of one snapshot.
SUBMOD = "veu-snapshot"
ALG = "EdDSA"
TYP = "JWT"
#: Largest token checked at all. The verifier condenses findings so results stay far below it
#: (docs/decisions.md, 10); anything larger is refused before it is decoded.
MAX_RESULT_BYTES = 1024 * 1024

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _b64url(part: str, what: str) -> bytes:
    if not _B64URL.match(part) or len(part) % 4 == 1:
        raise ResultError(f"result {what} is not base64url", code="result_malformed")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the pattern rules these out
        raise ResultError(f"result {what} is not base64url", code="result_malformed") from exc


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = parse_json_strict(data)
    except EvidenceError as exc:
        raise ResultError(
            f"result {what} is not JSON: {exc.detail}", code="result_malformed"
        ) from exc
    if not isinstance(value, dict):
        raise ResultError(f"result {what} is not a JSON object", code="result_malformed")
    return value


def verify_result(token: str, public_key: Ed25519PublicKey | bytes | str) -> dict[str, Any]:
    """Check a result's signature and shape; return its claims. Raises :class:`ResultError`.

    ``public_key``: the verifier's key, as a key or as PEM (``GET /v1/verifier-key``).
    """
    if isinstance(public_key, str):
        public_key = public_key.encode("ascii")
    if isinstance(public_key, bytes):
        public_key = load_public_pem(public_key)
    if len(token) > MAX_RESULT_BYTES:
        raise ResultError(
            f"result is {len(token)} characters; the limit is {MAX_RESULT_BYTES}",
            code="result_too_large",
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise ResultError(
            f"result is not a compact JWS (header.claims.signature): {len(parts)} part(s)",
            code="result_malformed",
        )
    header_part, claims_part, signature_part = parts
    header = _json_object(_b64url(header_part, "header"), "header")
    if header.get("alg") != ALG:
        raise ResultError(
            f"result is signed with alg {str(header.get('alg'))[:20]!r}; only {ALG!r} is accepted",
            code="result_bad_alg",
        )
    if header.get("typ") != TYP:
        raise ResultError(
            f"result typ is {str(header.get('typ'))[:20]!r}, not {TYP!r}", code="result_malformed"
        )
    if "crit" in header:
        raise ResultError("result header names critical extensions", code="result_malformed")
    kid = header.get("kid")
    if kid is not None and kid != key_id(public_key):
        raise ResultError(
            f"result is signed by key {str(kid)[:16]}…, not by this verifier key",
            code="result_wrong_key",
        )
    claims_bytes = _b64url(claims_part, "claims")
    signature = _b64url(signature_part, "signature")
    try:
        public_key.verify(signature, f"{header_part}.{claims_part}".encode("ascii"))
    except InvalidSignature as exc:
        raise ResultError(
            "result signature does not verify with this verifier key", code="result_bad_signature"
        ) from exc
    claims = _json_object(claims_bytes, "claims")
    if claims.get("eat_profile") != EAR_PROFILE:
        raise ResultError(
            "result is not an EAR (eat_profile missing or wrong)", code="result_not_ear"
        )
    submods = claims.get("submods")
    sub = submods.get(SUBMOD) if isinstance(submods, dict) else None
    if not isinstance(sub, dict) or "ear.status" not in sub:
        raise ResultError(f"result has no {SUBMOD} submodule status", code="result_not_ear")
    return claims


def result_status(claims: dict[str, Any]) -> str:
    return str(claims["submods"][SUBMOD]["ear.status"])
