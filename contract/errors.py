"""The evidence contract's error types: one base with a stable ``code`` and a ``detail``.

Every check in :mod:`contract` raises one of these, so both ends report the same code for the same
defect: malformed bytes, a signature that does not verify, a schema mismatch, a public key that is
not one, or a signed result that does not check.
"""

from __future__ import annotations

#: The exit status of a usage error (a bad flag, an unusable setting or input) in both command
#: lines; ``veu-agent`` keeps 0-3 for verdicts, so neither uses argparse's 2.
EXIT_USAGE = 4


def error_line(code: str, detail: str) -> str:
    """How both command lines show an error: one line, the stable code first."""
    return f"error[{code}]: {detail}"


class EvidenceError(Exception):
    """Evidence that cannot be accepted. ``code`` is stable; ``detail`` is for a person."""

    code = "evidence_invalid"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class MalformedError(EvidenceError):
    """Bytes that are not a well-formed envelope or payload."""

    code = "malformed"


class SignatureError(EvidenceError):
    """A signature that does not verify, or no signature by a key we know."""

    code = "bad_signature"


class SchemaError(EvidenceError):
    """A payload that parses but does not match the predicate schema."""

    code = "schema_invalid"


class KeyFormatError(EvidenceError):
    """Bytes that are not an Ed25519 public key (PEM or raw)."""

    code = "bad_public_key"


class ResultError(EvidenceError):
    """A result token that does not verify or does not have the EAR shape."""

    code = "result_invalid"
