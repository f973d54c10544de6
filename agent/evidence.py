"""The evidence contract: snapshot v1, its canonical bytes, and DSSE signing.

This module is THE contract between the agent and the verifier; the server imports it. It owns:

1. The snapshot predicate (pydantic models, ``extra="forbid"``): what one host says about itself.
2. The in-toto Statement v1 wrapping it: one ``subject`` entry per model-weight file, so that
   model-signing tools can read the evidence without knowing our predicate.
3. Canonical bytes: the payload is RFC 8785 (JCS) JSON. A payload that is not byte-for-byte its own
   canonical form is rejected, so one statement has exactly one encoding and one digest.
4. The DSSE envelope: Ed25519 signatures over DSSE's pre-authentication encoding (PAE).
5. :func:`envelope_digest`, defined once: lowercase hex SHA-256 over the (canonical) payload bytes.
   ``prev`` in the next snapshot is that digest; the verifier deduplicates by it.

Versioning: the predicate type is a versioned URI. :data:`PREDICATE_MODELS` maps each known type to
its model; a v2 adds an entry and v1 envelopes stay verifiable forever.

Strict JSON parsing (duplicate keys, NaN, depth) lives here too because both ends must agree on
what a well-formed envelope is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE_V1 = "https://veu-attest.dev/snapshot/v1"

#: Largest envelope either side accepts by default (the verifier's body cap).
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
#: Deepest JSON nesting accepted anywhere in an envelope or payload.
MAX_JSON_DEPTH = 64

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


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


# --------------------------------------------------------------------------- strict JSON


def _reject_constant(name: str) -> Any:
    raise MalformedError(f"JSON constant {name} is not allowed", code="malformed_json")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, level by level over containers only (no recursion
    limit surprises, and scalars, most of a snapshot, are never visited one by one). Stops as
    soon as the depth passes ``limit``."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below.extend([c for c in children if type(c) is dict or type(c) is list])
        level = below
    return depth


@dataclass(frozen=True)
class StrictJSON:
    """A strictly parsed JSON value, and what the parser saw on the way."""

    value: Any
    #: No floats, and every object key below U+D800: the standard library's encoder gives the
    #: JCS bytes of ``value`` (see :func:`_fast_path_ok`; integers are already bounded to
    #: +-(2^53-1) by the parse), so :func:`canonical_bytes` need not walk it again.
    stdlib_jcs: bool


def parse_json_strict(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse UTF-8 JSON, refusing what JCS cannot represent or what is ambiguous.

    Rejects invalid UTF-8, duplicate keys, NaN/Infinity, integers beyond IEEE-754 double
    precision (2^53), and nesting deeper than ``max_depth``.
    """
    return parse_strict(data, max_depth=max_depth).value


def parse_strict(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> StrictJSON:
    """:func:`parse_json_strict`, also noting whether the value is plain enough for the fast
    canonical encoder (floats and high keys are noted by the parser's own hooks)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"not valid UTF-8 at byte {exc.start}", code="bad_encoding") from exc
    plain = [True]

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)  # C speed; a repeated key shows as a shorter dict, then named below
        if len(out) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    raise MalformedError(f"duplicate JSON key {key!r}", code="duplicate_key")
                seen.add(key)
        if plain[0]:
            keys = "".join(out)
            if not keys.isascii() and max(keys) >= "\ud800":
                plain[0] = False
        return out

    def a_float(number: str) -> float:
        plain[0] = False
        return float(number)

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=a_float,
        )
    except RecursionError as exc:
        raise MalformedError(
            f"JSON nested deeper than {max_depth} levels", code="json_too_deep"
        ) from exc
    except json.JSONDecodeError as exc:
        raise MalformedError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="malformed_json",
        ) from exc
    if _depth(value, max_depth) > max_depth:
        raise MalformedError(f"JSON nested deeper than {max_depth} levels", code="json_too_deep")
    return StrictJSON(value, plain[0])


_MAX_SAFE_INT = 2**53 - 1


def _bounded_int(text: str) -> int:
    if len(text) > 17:
        raise MalformedError(f"integer {text[:20]}... is out of range", code="number_out_of_range")
    value = int(text)
    if abs(value) > _MAX_SAFE_INT:
        raise MalformedError(f"integer {value} exceeds 2^53-1", code="number_out_of_range")
    return value


_MAX_JCS_INT = 2**53 - 1


def _fast_path_ok(value: Any) -> bool:
    """True when the standard library's encoder already produces the JCS bytes of ``value``.

    That holds for strings, integers within +-(2^53-1), booleans, null, lists and objects whose
    keys sort the same by UTF-16 code units (JCS) as by code points (Python): every key below
    U+D800. JCS and ``json.dumps(..., ensure_ascii=False)`` escape strings identically (quote,
    backslash, the short forms b f n r t, other control characters as lowercase u00xx escapes).
    Floats (ES6 number formatting) and other keys take the full RFC 8785 encoder.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) or item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if -_MAX_JCS_INT <= item <= _MAX_JCS_INT:
                continue
            return False
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str) or (not key.isascii() and max(key) >= "\ud800"):
                    return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            return False
    return True


def canonical_bytes(value: Any, *, stdlib_jcs: bool | None = None) -> bytes:
    """RFC 8785 (JCS) encoding of a JSON-compatible value.

    The ``rfc8785`` package is the reference; it is pure Python and takes ~0.6 s for a snapshot of
    10,000 weight files. Where the C encoder of the standard library is provably byte-identical
    (:func:`_fast_path_ok`; a property test compares both), that is used instead.
    ``stdlib_jcs``: that test's answer when the caller already has it (:class:`StrictJSON`).
    """
    if stdlib_jcs is None:
        stdlib_jcs = _fast_path_ok(value)
    if stdlib_jcs:
        try:
            return json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the reference encoder reject it
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise MalformedError(
            f"value cannot be canonicalized: {exc}", code="malformed_json"
        ) from exc


# --------------------------------------------------------------------------- the predicate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Assurance = Literal[
    "declared",  # typed in by a person (inventory file): not probed at all
    "self-reported",  # probed by the host and signed with a key on its disk
    "tpm-bound",  # key held in a TPM and the claim covered by a quote (not provided yet)
    "hardware-attested",  # the device's own attestation report (not provided yet)
]


class AgentInfo(_Strict):
    key_id: str
    version: str

    @field_validator("key_id")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("key_id must be 64 lowercase hex characters")
        return v


class HostInfo(_Strict):
    hostname: str | None = None
    machine_id: str | None = None
    boot_id: str | None = None
    os: str | None = None
    kernel: str | None = None
    arch: str | None = None
    uptime_s: int | None = None


class Accelerator(_Strict):
    """One device. Unknown values are null, never invented."""

    vendor: str | None = None
    model: str | None = None
    pci_vendor_id: str | None = None  # "0x10de"
    pci_device_id: str | None = None  # "0x2330"
    pci_class: str | None = None  # "0x030200"
    pci_bus_id: str | None = None  # "0000:18:00.0"
    uuid: str | None = None
    serial: str | None = None
    board_part_number: str | None = None
    vbios_version: str | None = None
    driver_version: str | None = None
    memory_mib: int | None = None
    architecture: str | None = None
    source: Literal["nvml", "pci", "inventory-file"]
    assurance: Assurance = "self-reported"


class Encryption(_Strict):
    status: Literal["encrypted", "unencrypted", "unknown"]
    method: str | None = None  # "dm-crypt/LUKS2", "dm-crypt", "fscrypt"
    determined_by: str | None = None  # what was read to decide
    reason: str | None = None  # why unknown


class HeaderFacts(_Strict):
    tensor_count: int | None = None
    parameter_count: int | None = None
    dtypes: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)


class FileError(_Strict):
    code: str
    detail: str


WeightFormat = Literal["safetensors", "gguf", "pytorch-zip", "pytorch-pickle", "onnx"]


class WeightFile(_Strict):
    path: str  # UTF-8; undecodable bytes appear as \\xNN and path_b64 holds the raw name
    path_b64: str | None = None
    size: int
    mtime: str
    mode: str  # octal permission bits, e.g. "0640"
    uid: int
    gid: int
    owner: str | None = None
    sha256: str | None = None  # null when the file could not be hashed (see error)
    format: WeightFormat
    header: HeaderFacts | None = None
    error: FileError | None = None


class UnidentifiedFile(_Strict):
    """A regular file under a weight root whose bytes match no weight format and whose name
    suggests none: listed (with its digest, so it can be registered) when it is large."""

    path: str
    path_b64: str | None = None
    size: int
    mtime: str
    sha256: str | None = None  # null when the file could not be read (see error)
    error: FileError | None = None


class StorageRoot(_Strict):
    root: str
    mount_point: str | None = None
    device: str | None = None
    filesystem: str | None = None
    encryption: Encryption
    file_count: int
    total_bytes: int
    files: list[WeightFile]
    #: Every other regular file under the root, counted. None (not 0): an agent from before
    #: this count existed, which said nothing about such files.
    unidentified_count: int | None = None
    unidentified_bytes: int | None = None
    #: The unidentified files of at least ``unidentified_listed_from`` bytes, with digests.
    unidentified_listed_from: int | None = None
    unidentified: list[UnidentifiedFile] = Field(default_factory=list)


class Socket(_Strict):
    proto: Literal["tcp", "tcp6", "udp", "udp6"]
    address: str
    port: int


class Posture(_Strict):
    secure_boot: bool | None = None
    tpm_present: bool | None = None
    tpm_version: str | None = None
    listening_sockets: list[Socket] | None = None


class CollectorError(_Strict):
    collector: str
    code: str
    detail: str


class SnapshotV1(_Strict):
    """The predicate of a snapshot statement, version 1."""

    agent: AgentInfo
    site_id: str | None
    host: HostInfo
    seq: int = Field(ge=1)
    prev: str | None
    nonce: str | None
    collected_at: str
    accelerators: list[Accelerator]
    storage: list[StorageRoot]
    posture: Posture
    errors: list[CollectorError]
    key_protection: Literal["file", "tpm"] = "file"
    #: Reserved for evidence this version does not produce yet (TPM quote, GPU reports, RTT
    #: location bounds). Always empty in v1 agents; the verifier ignores unknown sections.
    extensions: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prev")
    @classmethod
    def _prev_hex(cls, v: str | None) -> str | None:
        if v is not None and not _HEX64.match(v):
            raise ValueError("prev must be 64 lowercase hex characters or null")
        return v

    @field_validator("collected_at")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        if not _RFC3339_UTC.match(v):
            raise ValueError("collected_at must be RFC 3339 UTC, e.g. 2026-01-01T00:00:00Z")
        return v

    def collected_at_datetime(self) -> datetime:
        return parse_timestamp(self.collected_at)


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


PREDICATE_MODELS: dict[str, type[SnapshotV1]] = {PREDICATE_TYPE_V1: SnapshotV1}


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


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
        "predicateType": PREDICATE_TYPE_V1,
        "predicate": snapshot.model_dump(mode="json"),
    }


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


def _summarize(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    suffix = f" (and {more} more)" if more > 0 else ""
    return "schema: " + "; ".join(parts) + suffix


# --------------------------------------------------------------------------- DSSE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


class Signature(_Strict):
    keyid: str
    sig: str


class Envelope(_Strict):
    payloadType: str  # DSSE spelling
    payload: str
    signatures: list[Signature]

    def payload_bytes(self) -> bytes:
        return b64decode_strict(self.payload, "payload")

    def to_bytes(self) -> bytes:
        """Wire form: JCS of the envelope (stable, so stored bytes are reproducible)."""
        return canonical_bytes(self.model_dump())


def b64decode_strict(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedError(f"{what} is not valid standard base64", code="bad_base64") from exc


def sign_envelope(payload: bytes, key: Ed25519PrivateKey, keyid: str) -> Envelope:
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return Envelope(
        payloadType=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode("ascii"),
        signatures=[Signature(keyid=keyid, sig=base64.b64encode(sig).decode("ascii"))],
    )


def parse_envelope(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Shape checks only: size, strict JSON, DSSE fields, payload type."""
    if len(data) > max_bytes:
        raise MalformedError(
            f"envelope is {len(data)} bytes; the limit is {max_bytes}", code="too_large"
        )
    value = parse_json_strict(data)
    if not isinstance(value, dict):
        raise MalformedError("envelope must be a JSON object", code="bad_envelope")
    try:
        envelope = Envelope.model_validate(value)
    except ValidationError as exc:
        raise MalformedError(
            _summarize(exc).replace("schema", "envelope"), code="bad_envelope"
        ) from exc
    if envelope.payloadType != PAYLOAD_TYPE:
        raise MalformedError(
            f"payloadType must be {PAYLOAD_TYPE!r}, got {envelope.payloadType[:80]!r}",
            code="bad_payload_type",
        )
    if not envelope.signatures:
        raise SignatureError("envelope carries no signatures", code="no_signature")
    return envelope


def verify_envelope(
    envelope: Envelope, keys: Mapping[str, Ed25519PublicKey], *, payload: bytes | None = None
) -> tuple[bytes, str]:
    """Return (payload, keyid) for the first signature made by a key in ``keys``.

    Signatures by unknown key ids are skipped (DSSE allows several signers); at least one known
    signature must verify, and any known-key signature that fails is an error. ``payload``:
    ``envelope.payload_bytes()``, if the caller already decoded it.
    """
    if payload is None:
        payload = envelope.payload_bytes()
    message = pae(envelope.payloadType, payload)
    verified: str | None = None
    for signature in envelope.signatures:
        key = keys.get(signature.keyid)
        if key is None:
            continue
        raw = b64decode_strict(signature.sig, "signature")
        try:
            key.verify(raw, message)
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature by key {signature.keyid[:16]}… does not verify over this payload"
            ) from exc
        verified = verified or signature.keyid
    if verified is None:
        ids = ", ".join(s.keyid[:16] for s in envelope.signatures)
        raise SignatureError(f"no signature by a known key (signed by: {ids})", code="unknown_key")
    return payload, verified


def envelope_digest(envelope: Envelope) -> str:
    """THE digest of a snapshot: lowercase hex SHA-256 of its canonical payload bytes.

    Signatures are excluded on purpose: Ed25519 is deterministic, and a digest that ignored the
    payload's signer set would still identify the same statement.
    """
    return hashlib.sha256(envelope.payload_bytes()).hexdigest()


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def open_envelope(
    data: bytes, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[Envelope, str, Statement, SnapshotV1]:
    """Everything a reader does offline: shape, signature, canonical form, schema."""
    envelope = parse_envelope(data)
    payload, keyid = verify_envelope(envelope, keys)
    statement, snapshot = parse_statement(payload)
    if snapshot.agent.key_id != keyid:
        raise SchemaError(
            "predicate agent.key_id does not match the signing key", code="key_mismatch"
        )
    return envelope, keyid, statement, snapshot
