"""The in-toto Statement v1 that wraps a snapshot predicate, and its canonical payload bytes.

One ``subject`` entry per hashed model-weight file, so that model-signing tools can read the
evidence without knowing our predicate. The payload is RFC 8785 (JCS) JSON; a payload that is not
byte-for-byte its own canonical form is rejected, so one statement has exactly one encoding and one
digest.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract._model import Strict as _Strict
from contract._model import summarize as _summarize
from contract.errors import MalformedError, SchemaError
from contract.jsonstrict import StrictJSON, canonical_bytes, parse_strict
from contract.snapshot import PREDICATE_MODELS, SnapshotV1

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


class ResourceDescriptor(_Strict):
    name: str
    digest: dict[str, str]


class Statement(BaseModel):
    """in-toto Statement v1. ``predicate`` is validated per ``predicateType``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(
        default="https://in-toto.io/Statement/v1", alias="_type"
    )
    subject: list[ResourceDescriptor]
    predicateType: str  # in-toto spelling
    predicate: dict[str, Any]


def build_statement(snapshot: SnapshotV1) -> dict[str, Any]:
    """The in-toto statement (as a JSON-compatible dict) for a snapshot."""
    subjects = [
        {"name": f.path, "digest": {"sha256": f.sha256}}
        for root in snapshot.storage
        for f in root.files
        if f.sha256 is not None
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": snapshot.predicate_type(),
        "predicate": snapshot.model_dump(mode="json"),
    }


def inventory_digest(snapshot: SnapshotV1) -> str:
    """Lowercase hex SHA-256 of the predicate's canonical form without its ``evidence``
    section: what a TPM quote's qualifying data binds (the quote cannot sign the payload it is
    part of; the envelope signature covers both)."""
    facts = snapshot.model_dump(mode="json", exclude={"evidence"})
    return hashlib.sha256(canonical_bytes(facts)).hexdigest()


def quote_qualifying_data(nonce: str | None, digest: str) -> bytes:
    """SHA-256(nonce || inventory digest), the qualifying data of a snapshot's quote (the nonce
    as its ASCII text, empty without one; the digest as its 32 bytes)."""
    return hashlib.sha256((nonce or "").encode("ascii") + bytes.fromhex(digest)).digest()


def statement_bytes(snapshot: SnapshotV1) -> bytes:
    return canonical_bytes(build_statement(snapshot))


def parse_statement(
    payload: bytes, *, parsed: StrictJSON | None = None
) -> tuple[Statement, SnapshotV1]:
    """Validate payload bytes: canonical JCS, an in-toto Statement, a known predicate.

    ``parsed``: the caller's own :func:`parse_strict` of exactly ``payload`` (with a depth limit
    no looser than :data:`MAX_JSON_DEPTH`), so the bytes are not parsed twice.
    """
    strict = parsed if parsed is not None else parse_strict(payload)
    value = strict.value
    if canonical_bytes(value, stdlib_jcs=strict.stdlib_jcs) != payload:
        raise MalformedError(
            "payload is not in RFC 8785 canonical form", code="non_canonical_payload"
        )
    try:
        statement = Statement.model_validate(value)
    except ValidationError as exc:
        raise SchemaError(_summarize(exc)) from exc
    model = PREDICATE_MODELS.get(statement.predicateType)
    if model is None:
        raise SchemaError(
            f"unsupported predicateType {statement.predicateType!r}; "
            f"this verifier knows {sorted(PREDICATE_MODELS)}",
            code="unsupported_predicate",
        )
    try:
        snapshot = model.model_validate(statement.predicate)
    except ValidationError as exc:
        raise SchemaError(_summarize(exc)) from exc
    expected = build_statement(snapshot)["subject"]
    if [s.model_dump() for s in statement.subject] != expected:
        raise SchemaError(
            "statement subject does not list exactly the hashed weight files of the predicate",
            code="subject_mismatch",
        )
    return statement, snapshot
