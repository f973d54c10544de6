"""The evidence contract between veu-agent and veu-server: what both ends must agree on, byte for
byte. Imported by both sides; imports neither (an import-linter contract keeps it so).

- :mod:`contract.jsonstrict`: strict JSON parsing and RFC 8785 (JCS) canonical bytes.
- :mod:`contract.snapshot`: the snapshot predicates v1 and v2 (pydantic models) and their registry.
- :mod:`contract.assurance`: the assurance ladder (levels, their order, the EAR evidence sources).
- :mod:`contract.statement`: the in-toto Statement v1 around it, built and parsed.
- :mod:`contract.dsse`: the DSSE envelope (PAE, sign, parse, verify, open) and THE snapshot digest.
- :mod:`contract.keys`: Ed25519 key encodings and key ids.
- :mod:`contract.reqsign`: signed agent requests and the enrollment proof.
- :mod:`contract.results`: the signed result (EAR JWT): its shape and its offline verification.
- :mod:`contract.timestamps`, :mod:`contract.digests`, :mod:`contract.errors`.
- :mod:`contract.fsutil` (crash-safe writes) and :mod:`contract.jsonlog` (the JSON log line) are
  shared by both programs but are not part of the evidence; they are not re-exported here.
"""

from __future__ import annotations

from contract.assurance import (
    LADDER,
    Level,
    at_least,
    parse_level,
    weakest,
)
from contract.digests import (
    file_sha256,
)
from contract.dsse import (
    MAX_ENVELOPE_BYTES,
    PAYLOAD_TYPE,
    Envelope,
    Signature,
    b64decode_strict,
    envelope_digest,
    open_envelope,
    pae,
    parse_envelope,
    payload_digest,
    sign_envelope,
    verify_envelope,
)
from contract.errors import (
    EvidenceError,
    KeyFormatError,
    MalformedError,
    ResultError,
    SchemaError,
    SignatureError,
)
from contract.jsonstrict import (
    MAX_JSON_DEPTH,
    StrictJSON,
    canonical_bytes,
    parse_json_strict,
    parse_strict,
)
from contract.keys import (
    key_id,
    load_public_pem,
    private_pem,
    public_from_raw,
    public_pem,
    raw_public,
)
from contract.reqsign import (
    ENROLL_CONTEXT,
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    enroll_message,
    request_message,
    sign_request,
    verify_request,
)
from contract.results import (
    ALG,
    EAR_PROFILE,
    SUBMOD,
    TYP,
    result_status,
    verify_result,
)
from contract.snapshot import (
    PREDICATE_MODELS,
    PREDICATE_TYPE_V1,
    PREDICATE_TYPE_V2,
    Accelerator,
    AgentInfo,
    Assurance,
    CollectorError,
    Encryption,
    Evidence,
    FileError,
    HeaderFacts,
    HostInfo,
    Posture,
    SnapshotV1,
    SnapshotV2,
    Socket,
    StorageRoot,
    TpmCertifiedKey,
    TpmEvidence,
    TpmQuote,
    UnidentifiedFile,
    WeightFile,
    WeightFormat,
)
from contract.statement import (
    STATEMENT_TYPE,
    ResourceDescriptor,
    Statement,
    build_statement,
    parse_statement,
    statement_bytes,
)
from contract.timestamps import (
    format_timestamp,
    parse_timestamp,
)

#: The one version of the distribution (pyproject reads it from here).
__version__ = "0.1.0"

__all__ = [
    "ALG",
    "EAR_PROFILE",
    "ENROLL_CONTEXT",
    "HEADER_KEY_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "LADDER",
    "MAX_ENVELOPE_BYTES",
    "MAX_JSON_DEPTH",
    "PAYLOAD_TYPE",
    "PREDICATE_MODELS",
    "PREDICATE_TYPE_V1",
    "PREDICATE_TYPE_V2",
    "STATEMENT_TYPE",
    "SUBMOD",
    "TYP",
    "Accelerator",
    "AgentInfo",
    "Assurance",
    "CollectorError",
    "Encryption",
    "Envelope",
    "Evidence",
    "EvidenceError",
    "FileError",
    "HeaderFacts",
    "HostInfo",
    "KeyFormatError",
    "Level",
    "MalformedError",
    "Posture",
    "ResourceDescriptor",
    "ResultError",
    "SchemaError",
    "Signature",
    "SignatureError",
    "SnapshotV1",
    "SnapshotV2",
    "Socket",
    "Statement",
    "StorageRoot",
    "StrictJSON",
    "TpmCertifiedKey",
    "TpmEvidence",
    "TpmQuote",
    "UnidentifiedFile",
    "WeightFile",
    "WeightFormat",
    "__version__",
    "at_least",
    "b64decode_strict",
    "build_statement",
    "canonical_bytes",
    "enroll_message",
    "envelope_digest",
    "file_sha256",
    "format_timestamp",
    "key_id",
    "load_public_pem",
    "open_envelope",
    "pae",
    "parse_envelope",
    "parse_json_strict",
    "parse_level",
    "parse_statement",
    "parse_strict",
    "parse_timestamp",
    "payload_digest",
    "private_pem",
    "public_from_raw",
    "public_pem",
    "raw_public",
    "request_message",
    "result_status",
    "sign_envelope",
    "sign_request",
    "statement_bytes",
    "verify_envelope",
    "verify_request",
    "verify_result",
    "weakest",
]
