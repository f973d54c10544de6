"""The verifier's error vocabulary: a few families, no transport codes.

Every refusal the verifier explains is a :class:`VeuError` with a stable ``code`` (clients and
scripts branch on it; it never changes meaning) and a ``detail`` a person can act on. The family
says what kind of refusal it is; each edge renders a family one way, from one table: the API
(server/api/errors.py: family -> HTTP status) and the CLI (server/cli/errors.py: family -> exit
code). Evidence refused by the appraisal is the :class:`~server.appraise.Rejected` family, with
one class per way evidence can be bad.

In the manner of python-tuf's ``api/exceptions.py``; the per-error code and detail are this
project's own.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Gone",
    "Invalid",
    "NotFound",
    "RateLimited",
    "Refused",
    "Unauthenticated",
    "Unprocessable",
    "VeuError",
]


class VeuError(Exception):
    """A refusal with a stable ``code`` and a ``detail`` that says what to do."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Invalid(VeuError):
    """The input is malformed or breaks a rule of its own (a bad country code, an empty name)."""


class Unprocessable(Invalid):
    """The input is well formed but names something the verifier cannot act on (a chip model
    not in the catalog, a missing field of a record)."""


class Unauthenticated(VeuError):
    """Who is asking is not established (an unknown, used or expired token)."""


class Refused(VeuError):
    """The caller is known but may not do this (a revoked key)."""


class RateLimited(Refused):
    """The caller asked too often or holds too much; it may try again later."""


class NotFound(VeuError):
    """What the request names does not exist."""


class Gone(NotFound):
    """It existed, and was removed on purpose (a pruned envelope)."""


class Conflict(VeuError):
    """The request contradicts what is recorded (a name that exists, a key already enrolled)."""
