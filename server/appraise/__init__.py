"""Appraisal of one snapshot envelope: every trust decision the verifier makes about evidence.

Pure, in the manner of python-tuf's ``trusted_metadata_set``: bytes and trusted state go in,
:class:`Accepted` or :class:`Duplicate` comes out, or a :class:`Rejected` subclass says exactly
what was wrong. No I/O, no SQL, no HTTP and no clock: the shell calls :func:`preparse`, looks up
the records it names (host by key id, chain head, nonce, "already accepted?"), passes ``now`` to
:func:`appraise`, and commits what comes back in one transaction.

Rules, in the order they are checked; the first that fails decides:

1. Size: the body is at most ``max_bytes`` (``too_large``), checked before anything is parsed.
2. Strict JSON: UTF-8 (``bad_encoding``), valid JSON (``malformed_json``), no duplicate keys
   (``duplicate_key``), no NaN or Infinity (``malformed_json``), integers within 2^53
   (``number_out_of_range``), nesting at most ``max_depth`` (``json_too_deep``).
3. DSSE shape: an object with exactly ``payloadType``, ``payload`` and ``signatures``
   (``bad_envelope``); the in-toto payload type (``bad_payload_type``); 1 to ``max_signatures``
   signatures (``no_signature``, ``bad_envelope``); the payload and every signature strict
   standard base64 (``bad_base64``). Rules 1-3 are :func:`preparse`: they need no trusted state,
   and what fails them is unauthenticated.
4. Signature: one signature names an enrolled key id (``unknown_key``); that host is not revoked
   (``revoked_key``) and is active (``key_not_active``); every signature under that key id
   verifies over DSSE's PAE (``bad_signature``). Signatures by other key ids are ignored.
5. Idempotence: a digest this key already had accepted is a :class:`Duplicate`, answered before
   freshness because its nonce was consumed when it was first accepted.
6. Payload: exactly its own RFC 8785 form (``non_canonical_payload``) and strict JSON (rule 2's
   codes); an in-toto Statement v1 (``schema_invalid``) of a known predicate type
   (``unsupported_predicate``) whose subject lists exactly its hashed weight files
   (``subject_mismatch``) and whose ``agent.key_id`` is the signing key (``key_mismatch``).
7. Binding: not a ``--dry-run`` snapshot (``extensions.dry_run``, ``dry_run``); ``site_id`` is
   the site the host enrolled at (``site_mismatch``); when enrollment
   recorded a machine id, ``host.machine_id`` is that one (``host_mismatch``).
8. Freshness: a nonce in the snapshot was issued by this verifier (``nonce_unknown``) to this host
   (``nonce_wrong_host``), is unused (``nonce_reused``) and unexpired at ``now``
   (``nonce_expired``), and ``collected_at`` is not earlier than its issue time less
   ``max_future_skew`` (``clock_skew``). ``collected_at`` is at most ``max_future_skew`` ahead of
   ``now`` (``clock_skew``) and at most ``max_delay`` behind it (``evidence_too_old``); older than
   ``late_after`` is accepted with the info finding ``chain.late-delivery``, because spooled
   evidence delivered after an outage must not be lost.
9. Chain, against the host's stored head:
   ``seq = head + 1`` and ``prev = head digest`` (or the head has no digest): accept;
   ``seq = head + 1`` with another ``prev``: a second child of the head (``fork``);
   ``seq = head`` with a new digest: ``replay``; ``seq < head`` with a new digest: ``rollback``;
   ``seq > head + 1``: accept with the warning finding ``chain.gap`` (evidence went missing).
   With no head at all, ``seq = 1`` and ``prev = null`` is accepted as the start of the chain;
   anything else is accepted with ``chain.gap``: earlier snapshots of this key were never seen.

10. TPM evidence (snapshot v2, ``evidence.tpm``), for a host whose key enrollment bound to its TPM
   (credential activation recorded its attestation key): the quote is signed by that AK
   (``quote_bad_signature``), its qualifying data is SHA-256(nonce || inventory digest)
   (``quote_wrong_data``: a quote over another snapshot, or a replayed one), it selects exactly
   the PCR values sent and its PCR digest is theirs (``quote_pcr_mismatch``); the AK sent is the
   enrolled one (``quote_wrong_ak``); an event log parses with bounds (``event_log_*``) and
   replays to the quoted PCRs it measures (``event_log_mismatch``); against the host's last
   verified quote, the reset count does not go back (``quote_reset_backwards``), nor the
   restart count within one reset (``quote_restart_backwards``), and the clock advances within
   one boot (``quote_clock_stalled``); a TPM reset without orderly shutdown (``safe`` not set)
   is the warning ``tpm.clock-not-safe``, a reboot the info ``tpm.rebooted``. All are
   :class:`TpmEvidenceRejected` (``tpm_evidence_invalid``, 422, each with its own code).
   With the site's reference values, a verified quote whose PCRs 0-7 are each known-good
   raises the host's claims to ``tpm-quoted``; each PCR that is not is the finding
   ``tpm.pcr-unknown`` (cannot attest) naming the PCR and the event (server/appraise/assurance.py).

Every :class:`Rejected` is permanent: the same bytes fail the same way again, so the agent must not
resend them. Failures worth retrying (the database is down) are the shell's 5xx, never raised
here. ``authenticated`` is true when a valid signature of an enrolled key came with the bad
evidence: the shell writes those to its audit log (a fork or replay is a security event) and only
counts the rest. Details quote at most about 100 characters of what was received, escaped.

Naive datetimes (as SQLite returns them) are taken to be UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from contract import (
    MAX_ENVELOPE_BYTES,
    MAX_JSON_DEPTH,
    PAYLOAD_TYPE,
    PREDICATE_MODELS,
    Envelope,
    EvidenceError,
    MalformedError,
    SchemaError,
    SignatureError,
    SnapshotV1,
    SnapshotV2,
    Statement,
    StrictJSON,
    b64decode_strict,
    format_timestamp,
    parse_json_strict,
    parse_statement,
    parse_strict,
    payload_digest,
    verify_envelope,
)
from contract.assurance import Level
from contract.keys import PublicKey
from contract.statement import inventory_digest, quote_qualifying_data
from server.appraise.assurance import Assessment, assess
from server.appraise.eventlog import (
    EventLogError,
    QuoteFacts,
    replay_event_log,
    replay_mismatches,
    verify_quote,
)
from server.appraise.eventlog import Replay as LogReplay
from server.appraise.tpm import TpmFormatError, parse_public
from server.findings import Finding

__all__ = [
    "Accepted",
    "Assessment",
    "BadBase64",
    "BadEncoding",
    "BadEnvelope",
    "BadPayloadType",
    "BadSignature",
    "ChainHead",
    "ChainRejected",
    "ClockSkew",
    "DryRunEvidence",
    "Duplicate",
    "DuplicateKey",
    "EvidenceTooOld",
    "Fork",
    "FreshnessRejected",
    "HostMismatch",
    "HostRecord",
    "InvalidStatement",
    "JsonTooDeep",
    "KeyMismatch",
    "KeyNotActive",
    "KeyRefused",
    "Malformed",
    "MalformedJson",
    "NoSignature",
    "NonCanonicalPayload",
    "NonceExpired",
    "NonceRecord",
    "NonceReused",
    "NonceUnknown",
    "NonceWrongHost",
    "NumberOutOfRange",
    "Parsed",
    "Rejected",
    "Replay",
    "RevokedKey",
    "Rollback",
    "SchemaInvalid",
    "SiteMismatch",
    "SubjectMismatch",
    "TooLarge",
    "TpmEvidenceRejected",
    "Unauthenticated",
    "UnknownKey",
    "UnsupportedPredicate",
    "VerifyConfig",
    "appraise",
    "preparse",
]

_KEY_ID = re.compile(r"^[0-9a-f]{64}$")
_MAX_NONCE_CHARS = 256
_QUOTE_LIMIT = 100
#: contract details quote received text after a short lead-in of their own.
_EVIDENCE_DETAIL_LIMIT = 120


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class VerifyConfig:
    max_bytes: int = MAX_ENVELOPE_BYTES
    max_depth: int = MAX_JSON_DEPTH
    #: ``collected_at`` later than ``now`` plus this is rejected (``clock_skew``).
    max_future_skew: timedelta = timedelta(minutes=5)
    #: ``collected_at`` older than this is no evidence of the present (``evidence_too_old``).
    max_delay: timedelta = timedelta(days=30)
    #: Older than this, but within ``max_delay``: accepted with ``chain.late-delivery`` (info).
    late_after: timedelta = timedelta(minutes=5)
    #: More signatures than this is not a snapshot but an attempt to make the shell look up keys.
    max_signatures: int = 16


# --------------------------------------------------------------------------- errors


class Rejected(Exception):
    """Evidence that cannot be accepted, with a stable ``code`` and an actionable ``detail``."""

    code: ClassVar[str] = "rejected"
    permanent: ClassVar[bool] = True
    authenticated: bool = False
    #: What the sender should do about it; always the end of ``detail``.
    hint: ClassVar[str] = "do not resend these bytes"

    def __init__(
        self,
        message: str,
        *,
        authenticated: bool | None = None,
        key_id: str | None = None,
        code: str | None = None,
    ) -> None:
        self.detail = f"{message}; {self.hint}"
        super().__init__(self.detail)
        if authenticated is not None:
            self.authenticated = authenticated
        #: The enrolled key whose valid signature came with the evidence, when ``authenticated``.
        self.key_id = key_id
        if code is not None:
            # Only for a contract error code this module has no class for (yet).
            self.code = code  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail}


class Malformed(Rejected):
    """Bytes that are not a well-formed envelope or payload."""

    code = "malformed"
    hint = "the sender is not a conforming VEU Attest agent or the body was corrupted in transit"


class TooLarge(Malformed):
    code = "too_large"
    hint = "no conforming agent sends a snapshot this large; the limit is the verifier's max_bytes"


class BadEncoding(Malformed):
    code = "bad_encoding"
    hint = "send the envelope as UTF-8 JSON"


class MalformedJson(Malformed):
    code = "malformed_json"
    hint = "send strict JSON (RFC 8259; no NaN or Infinity)"


class DuplicateKey(Malformed):
    code = "duplicate_key"
    hint = "JSON objects must not repeat a key: parsers disagree on which one wins"


class JsonTooDeep(Malformed):
    code = "json_too_deep"
    hint = "no snapshot nests this deep; the body is not an agent's"


class NumberOutOfRange(Malformed):
    code = "number_out_of_range"
    hint = "integers must fit in an IEEE-754 double exactly (at most 2^53-1)"


class BadEnvelope(Malformed):
    code = "bad_envelope"
    hint = "send a DSSE envelope: exactly payloadType, payload and signatures"


class BadPayloadType(Malformed):
    code = "bad_payload_type"
    hint = f"snapshots are in-toto statements: payloadType must be {PAYLOAD_TYPE!r}"


class BadBase64(Malformed):
    code = "bad_base64"
    hint = "payload and sig must be standard base64 with padding (RFC 4648 section 4)"


class NonCanonicalPayload(Malformed):
    code = "non_canonical_payload"
    hint = "sign the RFC 8785 (JCS) bytes of the statement, as contract.statement_bytes does"


class Unauthenticated(Rejected):
    """No valid signature by an enrolled key."""

    code = "unauthenticated"
    hint = "sign with the host key enrolled at this verifier"


class NoSignature(Unauthenticated):
    code = "no_signature"
    hint = "sign the envelope with the host key (veu-agent snapshot signs it)"


class UnknownKey(Unauthenticated):
    code = "unknown_key"
    hint = "enroll this host (veu-agent enroll) before submitting evidence, or sign with its key"


class BadSignature(Unauthenticated):
    code = "bad_signature"
    hint = "the envelope was altered after signing or signed with another key; take a new snapshot"


class KeyRefused(Rejected):
    """An enrolled key that may not submit evidence now."""

    code = "key_refused"
    hint = "ask the verifier's administrator about this host's enrollment"


class RevokedKey(KeyRefused):
    code = "revoked_key"
    hint = "this host key was revoked; create a new key and enroll again (veu-agent init --force)"


class KeyNotActive(KeyRefused):
    code = "key_not_active"
    hint = "the enrollment awaits approval; an administrator must activate the host"


class InvalidStatement(Rejected):
    """A signed, well-formed payload whose statement does not match the snapshot contract."""

    code = "invalid_statement"
    hint = "upgrade the agent to a version that speaks this verifier's snapshot contract"


class DryRunEvidence(InvalidStatement):
    code = "dry_run"
    hint = (
        "a snapshot taken with `veu-agent snapshot --dry-run` is for looking at only and never "
        "joins the chain; take a snapshot without --dry-run"
    )


class SchemaInvalid(InvalidStatement):
    code = "schema_invalid"


class UnsupportedPredicate(InvalidStatement):
    code = "unsupported_predicate"
    hint = (
        f"this verifier knows the predicate types {sorted(PREDICATE_MODELS)}; upgrade the "
        "verifier, or send a snapshot version it knows"
    )


class SubjectMismatch(InvalidStatement):
    code = "subject_mismatch"
    hint = "the statement subject must list exactly the hashed weight files of the predicate"


class KeyMismatch(InvalidStatement):
    code = "key_mismatch"
    hint = "predicate agent.key_id must be the key id of the key that signs the envelope"


class BindingMismatch(Rejected):
    """Evidence about a site or machine the signing key was not enrolled for."""

    code = "binding_mismatch"
    hint = "a host key speaks only for the site and machine it was enrolled on"


class SiteMismatch(BindingMismatch):
    code = "site_mismatch"
    hint = (
        "a host key speaks only for the site it was enrolled at; re-enroll the host at the "
        "new site (veu-agent enroll) if it moved"
    )


class HostMismatch(BindingMismatch):
    code = "host_mismatch"
    hint = (
        "a host key speaks only for the machine it was enrolled on; a copied key is refused. "
        "Create a key on this machine and enroll it"
    )


class FreshnessRejected(Rejected):
    """Evidence that cannot prove it describes the present."""

    code = "not_fresh"
    hint = "take a new snapshot"


class NonceUnknown(FreshnessRejected):
    code = "nonce_unknown"
    hint = "request a challenge (POST /v1/challenges) and bind a new snapshot to its nonce"


class NonceWrongHost(FreshnessRejected):
    code = "nonce_wrong_host"
    hint = "a nonce binds only the host it was issued to; request a challenge with this host key"


class NonceReused(FreshnessRejected):
    code = "nonce_reused"
    hint = "each nonce is good for one snapshot; request a new challenge"


class NonceExpired(FreshnessRejected):
    code = "nonce_expired"
    hint = "request a new challenge and submit the snapshot before it expires"


class ClockSkew(FreshnessRejected):
    code = "clock_skew"
    hint = "synchronize the host clock (NTP) and take a new snapshot"


class EvidenceTooOld(FreshnessRejected):
    code = "evidence_too_old"
    hint = "it no longer describes the host; take a new snapshot"


class TpmEvidenceRejected(Rejected):
    """Signed TPM evidence that does not hold: a bad quote or an event log that does not
    replay to it. ``code`` is the specific check's (server/appraise/tpm.py, eventlog.py)."""

    code = "tpm_evidence_invalid"
    hint = "the quote and event log must come from this host's TPM, for this very snapshot"


class ChainRejected(Rejected):
    """Evidence that does not continue this host's hash chain."""

    code = "chain_broken"
    hint = "take a new snapshot that continues the chain"


class Replay(ChainRejected):
    code = "replay"
    hint = (
        "two different snapshots carry the same seq: a replay or a restored agent state. "
        "Investigate the host; its next snapshot must continue the accepted head"
    )


class Rollback(ChainRejected):
    code = "rollback"
    hint = (
        "the agent's chain state went backwards (restored from a backup or a replay). "
        "Investigate the host; its next snapshot must continue the accepted head"
    )


class Fork(ChainRejected):
    code = "fork"
    hint = (
        "a second child of the accepted head: two agents hold this key, or its state was "
        "restored. Investigate the host; only the first child is kept"
    )


_MALFORMED: tuple[type[Malformed], ...] = (
    TooLarge,
    BadEncoding,
    MalformedJson,
    DuplicateKey,
    JsonTooDeep,
    NumberOutOfRange,
    BadEnvelope,
    BadPayloadType,
    BadBase64,
    NonCanonicalPayload,
)
_FROM_EVIDENCE: tuple[type[Rejected], ...] = (
    *_MALFORMED,
    NoSignature,
    UnknownKey,
    BadSignature,
    SchemaInvalid,
    UnsupportedPredicate,
    SubjectMismatch,
    KeyMismatch,
)
_BY_CODE: dict[str, type[Rejected]] = {cls.code: cls for cls in _FROM_EVIDENCE}


def _clip(text: str, limit: int = _QUOTE_LIMIT) -> str:
    """Text that may hold received bytes, made safe for a detail: escaped and cut short."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return cut.encode("unicode_escape").decode("ascii")


def _quote(value: object, limit: int = _QUOTE_LIMIT) -> str:
    """A received value quoted for a detail: at most ``limit`` characters of it, escaped."""
    if value is None:
        return "null"
    text = value if isinstance(value, str) else repr(value)
    return ascii(text) if len(text) <= limit else ascii(text[:limit]) + "..."


def _from_evidence(
    exc: EvidenceError, *, authenticated: bool = False, key_id: str | None = None
) -> Rejected:
    """This module's class for a contract error, keeping its specific code."""
    cls = _BY_CODE.get(exc.code)
    message = _clip(exc.detail, _EVIDENCE_DETAIL_LIMIT)
    if cls is not None:
        return cls(message, authenticated=authenticated, key_id=key_id)
    family: type[Rejected] = (
        Malformed
        if isinstance(exc, MalformedError)
        else Unauthenticated
        if isinstance(exc, SignatureError)
        else InvalidStatement
        if isinstance(exc, SchemaError)
        else Rejected
    )
    return family(message, authenticated=authenticated, key_id=key_id, code=exc.code)


# --------------------------------------------------------------------------- stage 1: bytes


@dataclass(frozen=True)
class Parsed:
    """What the bytes alone say (no trust yet), and what the shell must look up for stage 2."""

    envelope: Envelope
    raw: bytes
    digest: str
    #: Well-formed key ids named by the signatures, distinct, in order.
    key_ids: tuple[str, ...]
    #: The unauthenticated payload's nonce, or None if it has none or cannot be read.
    nonce: str | None
    size: int
    #: The payload strictly parsed, or None if it is not strict JSON within the depth limit:
    #: parsed once here, for the nonce, and reused by appraisal once the signature holds.
    payload_json: StrictJSON | None = None
    #: The payload's bytes (base64-decoded once, here).
    payload: bytes | None = None


def preparse(data: bytes, config: VerifyConfig = VerifyConfig()) -> Parsed:
    """Rules 1-3: size, strict JSON, DSSE shape, payload type, base64."""
    size = len(data)
    if size > config.max_bytes:
        raise TooLarge(f"the body is {size} bytes; the limit is {config.max_bytes}")
    try:
        value = parse_json_strict(data, max_depth=config.max_depth)
    except EvidenceError as exc:
        raise _from_evidence(exc) from None
    if not isinstance(value, dict):
        raise BadEnvelope(f"the body is a JSON {type(value).__name__}, not an object")
    try:
        envelope = Envelope.model_validate(value)
    except ValidationError as exc:
        raise BadEnvelope(_summarize(exc)) from None
    if envelope.payloadType != PAYLOAD_TYPE:
        raise BadPayloadType(f"payloadType is {_quote(envelope.payloadType)}")
    if not envelope.signatures:
        raise NoSignature("the envelope carries no signatures")
    if len(envelope.signatures) > config.max_signatures:
        raise BadEnvelope(
            f"the envelope carries {len(envelope.signatures)} signatures; "
            f"the limit is {config.max_signatures}"
        )
    try:
        payload = b64decode_strict(envelope.payload, "payload")
        for index, signature in enumerate(envelope.signatures):
            b64decode_strict(signature.sig, f"signatures[{index}].sig")
    except EvidenceError as exc:
        raise _from_evidence(exc) from None
    key_ids = tuple(dict.fromkeys(s.keyid for s in envelope.signatures if _KEY_ID.match(s.keyid)))
    try:
        payload_json: StrictJSON | None = parse_strict(payload, max_depth=config.max_depth)
    except EvidenceError:
        payload_json = None
    return Parsed(
        envelope=envelope,
        raw=data,
        digest=payload_digest(payload),
        key_ids=key_ids,
        nonce=_peek_nonce(payload_json.value) if payload_json is not None else None,
        size=size,
        payload_json=payload_json,
        payload=payload,
    )


def _summarize(exc: ValidationError, limit: int = 2) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(_clip(str(p), 40) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "envelope: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _peek_nonce(value: Any) -> str | None:
    predicate = value.get("predicate") if isinstance(value, dict) else None
    nonce = predicate.get("nonce") if isinstance(predicate, dict) else None
    if isinstance(nonce, str) and 0 < len(nonce) <= _MAX_NONCE_CHARS:
        return nonce
    return None


# --------------------------------------------------------------------------- stage 2: trust


@dataclass(frozen=True)
class HostRecord:
    key_id: str
    public_key: PublicKey
    site_id: str
    status: Literal["pending", "active", "revoked"]
    #: Recorded at enrollment; None = not bound to a machine.
    machine_id: str | None
    #: The level the host key lets claims reach: ``self-reported`` for a key in a file,
    #: ``tpm-bound-key`` for one enrolled by credential activation.
    key_level: Level = "self-reported"
    #: The attestation key's TPM2B_PUBLIC recorded by credential activation (None: none).
    ak_public: bytes | None = None
    #: The reset count, restart count and clock of the host's last verified quote.
    last_quote: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ChainHead:
    seq: int
    #: None only for a head recorded at enrollment, before any snapshot.
    digest: str | None
    #: The head snapshot's own ``prev``, when the verifier holds that snapshot (``parent_known``):
    #: a different snapshot with the head's seq AND this prev is a second child of the same
    #: parent — a fork — rather than a replay.
    parent: str | None = None
    parent_known: bool = False


@dataclass(frozen=True)
class NonceRecord:
    nonce: str
    #: The host it was issued to.
    key_id: str
    issued_at: datetime
    expires_at: datetime
    used: bool


@dataclass(frozen=True)
class Accepted:
    digest: str
    key_id: str
    snapshot: SnapshotV1
    statement: Statement
    seq: int
    prev: str | None
    #: The nonce this snapshot consumes; the shell marks it used in the same transaction.
    nonce: str | None
    #: ``chain.gap`` (warning), ``chain.late-delivery`` (info).
    findings: tuple[Finding, ...]
    collected_at: datetime
    #: The level each claim reached and each evidence source's result.
    assessment: Assessment
    #: A verified quote's reset count, restart count and clock (None: no quote verified).
    quote_counters: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Duplicate:
    """An envelope already accepted for this key: answer its stored result again."""

    digest: str
    key_id: str


def appraise(
    parsed: Parsed,
    *,
    host: HostRecord | None,
    head: ChainHead | None,
    nonce: NonceRecord | None,
    already_accepted: bool,
    now: datetime,
    config: VerifyConfig = VerifyConfig(),
    references: Mapping[int, frozenset[bytes]] | None = None,
) -> Accepted | Duplicate:
    """Rules 4-10 for one preparsed envelope against the trusted state the shell looked up.
    ``references``: the site's known-good SHA-256 PCR values (server.compliance.references).

    ``host`` is the enrolled record of one of ``parsed.key_ids`` (None if none is enrolled);
    ``head`` is that host's chain head, ``nonce`` the record of ``parsed.nonce`` (None if not
    found), ``already_accepted`` whether this key already had ``parsed.digest`` accepted.
    """
    now = utc(now)
    payload = _check_signature(parsed.envelope, host, parsed.payload)
    assert host is not None  # _check_signature raised otherwise
    key_id = host.key_id
    if already_accepted:
        return Duplicate(digest=parsed.digest, key_id=key_id)

    def reject(cls: type[Rejected], message: str) -> Rejected:
        return cls(message, authenticated=True, key_id=key_id)

    # The payload parsed in stage 1 is these very bytes (the same base64 text); reuse it when it
    # was parsed under a depth limit no looser than the statement's own.
    reuse = parsed.payload_json if config.max_depth <= MAX_JSON_DEPTH else None
    try:
        statement, snapshot = parse_statement(payload, parsed=reuse)
    except EvidenceError as exc:
        raise _from_evidence(exc, authenticated=True, key_id=key_id) from None
    if snapshot.agent.key_id != key_id:
        raise reject(
            KeyMismatch,
            f"predicate agent.key_id is {snapshot.agent.key_id}; "
            f"the envelope is signed by {key_id}",
        )

    _check_binding(snapshot, host, reject)
    collected_at = snapshot.collected_at_datetime()
    checked = _check_tpm_evidence(snapshot, host)
    quote = None if checked is None else checked[0]
    matched, pcr_findings = _compare_references(checked, references, key_id)
    assessment = assess(
        snapshot, host.key_level, quote_verified=quote is not None, reference_match=matched
    )
    findings = [
        replace(f, level=assessment.key_level)
        for f in _check_freshness(snapshot, collected_at, host, nonce, now, config, reject)
    ]
    findings.extend(
        replace(f, level=assessment.key_level) for f in _check_chain(snapshot, head, key_id, reject)
    )
    return Accepted(
        digest=parsed.digest,
        key_id=key_id,
        snapshot=snapshot,
        statement=statement,
        seq=snapshot.seq,
        prev=snapshot.prev,
        nonce=snapshot.nonce,
        findings=tuple(findings)
        + _clock_findings(quote, host, assessment.key_level)
        + tuple(replace(f, level=assessment.key_level) for f in pcr_findings),
        collected_at=collected_at,
        assessment=assessment,
        quote_counters=(
            None if quote is None else (quote.reset_count, quote.restart_count, quote.clock)
        ),
    )


_Reject = Callable[[type[Rejected], str], Rejected]


def _check_tpm_evidence(
    snapshot: SnapshotV1, host: HostRecord
) -> tuple[QuoteFacts, LogReplay | None] | None:
    """Rule 10. The verified quote's facts and the event log's replay (None: no quote)."""
    if not isinstance(snapshot, SnapshotV2) or snapshot.evidence is None:
        return None
    tpm = snapshot.evidence.tpm
    if tpm is None or tpm.quote is None or host.ak_public is None:
        return None

    def fail(code: str, message: str) -> Rejected:
        return TpmEvidenceRejected(message, authenticated=True, key_id=host.key_id, code=code)

    try:
        if b64decode_strict(tpm.ak_public, "evidence.tpm.ak_public") != host.ak_public:
            raise fail("quote_wrong_ak", "the snapshot's attestation key is not the enrolled one")
        quoted = b64decode_strict(tpm.quote.quoted, "evidence.tpm.quote.quoted")
        signature = b64decode_strict(tpm.quote.signature, "evidence.tpm.quote.signature")
        pcrs = {int(i): bytes.fromhex(v) for i, v in tpm.quote.pcrs.items()}
        expected = quote_qualifying_data(snapshot.nonce, inventory_digest(snapshot))
        ak = parse_public(host.ak_public)
        facts = verify_quote(ak, quoted, signature, tpm.quote.bank, pcrs, expected)
        replay = None
        if tpm.event_log is not None:
            replay = replay_event_log(b64decode_strict(tpm.event_log, "evidence.tpm.event_log"))
            wrong = replay_mismatches(replay, tpm.quote.bank, pcrs)
            if wrong:
                raise fail(
                    "event_log_mismatch",
                    f"the event log does not replay to quoted PCR(s) {wrong[:8]}",
                )
    except (TpmFormatError, EventLogError) as exc:
        raise fail(exc.code, exc.detail) from None
    except MalformedError as exc:
        raise fail("tpm_evidence_malformed", exc.detail) from None
    _check_clock(facts, host, fail)
    return facts, replay


def _compare_references(
    checked: tuple[QuoteFacts, LogReplay | None] | None,
    references: Mapping[int, frozenset[bytes]] | None,
    key_id: str,
) -> tuple[bool, list[Finding]]:
    """Whether the verified quote's PCRs 0-7 are each one of the site's known-good values
    (``tpm-quoted``); a ``tpm.pcr-unknown`` finding (cannot attest) for each that is not,
    naming the PCR and the last event the log extended into it."""
    if checked is None or not references:
        return False, []
    facts, replay = checked
    findings = []
    for pcr in range(8):
        value = facts.pcrs.get(pcr)
        if value is not None and value in references.get(pcr, frozenset()):
            continue
        events = [e for e in replay.events if e.pcr == pcr] if replay is not None else []
        if events:
            last = events[-1]
            digest = last.digests.get("sha256", b"").hex()[:16]
            event = f"event {len(events)} of PCR {pcr}: type 0x{last.type:08x}, sha256 {digest}…"
        else:
            event = "no event log names the event"
        findings.append(
            Finding(
                condition_id="tpm.pcr-unknown",
                severity="cannot_attest",
                subject=f"host:{key_id}",
                message=f"PCR {pcr} is not a known-good value for this site ({event})",
                expected="one of the site's reference values (veu-server reference add)",
                seen="none" if value is None else value.hex(),
            )
        )
    return not findings, findings


def _check_clock(facts: QuoteFacts, host: HostRecord, fail: Callable[[str, str], Rejected]) -> None:
    """Rule 10's clock rules against the host's last verified quote: the reset counter never
    goes back (``quote_reset_backwards``), nor, within one reset, the restart counter
    (``quote_restart_backwards``), and within one boot the clock advances
    (``quote_clock_stalled``)."""
    if host.last_quote is None:
        return
    reset, restart, clock = host.last_quote
    if facts.reset_count < reset:
        raise fail(
            "quote_reset_backwards",
            f"the TPM's reset count went back from {reset} to {facts.reset_count}",
        )
    if facts.reset_count == reset and facts.restart_count < restart:
        raise fail(
            "quote_restart_backwards",
            f"the TPM's restart count went back from {restart} to {facts.restart_count}",
        )
    if (facts.reset_count, facts.restart_count) == (reset, restart) and facts.clock <= clock:
        raise fail(
            "quote_clock_stalled",
            f"the TPM's clock did not advance since the last quote ({facts.clock} <= {clock})",
        )


def _clock_findings(
    facts: QuoteFacts | None, host: HostRecord, level: Level
) -> tuple[Finding, ...]:
    """``tpm.clock-not-safe`` (warning): the TPM cannot vouch that its clock never ran back
    (it was reset without an orderly shutdown); ``tpm.rebooted`` (info): the reset count grew."""
    if facts is None:
        return ()
    subject = f"host:{host.key_id}"
    out: list[Finding] = []
    if not facts.safe:
        out.append(
            Finding(
                condition_id="tpm.clock-not-safe",
                severity="warning",
                subject=subject,
                message=(
                    "the TPM was reset without an orderly shutdown; its clock may have run back"
                ),
                expected="safe = YES",
                seen="safe = NO",
                level=level,
            )
        )
    if host.last_quote is not None and facts.reset_count > host.last_quote[0]:
        out.append(
            Finding(
                condition_id="tpm.rebooted",
                severity="info",
                subject=subject,
                message="the host rebooted since its last quote (the TPM's reset count grew)",
                expected=f"reset count {host.last_quote[0]}",
                seen=f"reset count {facts.reset_count}",
                level=level,
            )
        )
    return tuple(out)


def _check_signature(
    envelope: Envelope, host: HostRecord | None, payload: bytes | None = None
) -> bytes:
    """Rule 4. Returns the authenticated payload bytes (``payload``: the envelope's payload
    already decoded, if the caller has it)."""
    named = [s.keyid for s in envelope.signatures]
    if host is None or host.key_id not in named:
        shown = ", ".join(_quote(k, 16) for k in named[:4])
        raise UnknownKey(f"no signature is by a key enrolled here (signed by {shown})")
    keys = {host.key_id: host.public_key}
    if host.status != "active":
        try:
            verify_envelope(envelope, keys, payload=payload)
            valid = True
        except EvidenceError:
            valid = False
        cls: type[KeyRefused] = RevokedKey if host.status == "revoked" else KeyNotActive
        state = "revoked" if host.status == "revoked" else f"{_quote(host.status)}, not active"
        raise cls(
            f"host key {host.key_id} is {state}",
            authenticated=valid,
            key_id=host.key_id if valid else None,
        )
    try:
        payload, _ = verify_envelope(envelope, keys, payload=payload)
    except EvidenceError as exc:
        if exc.code != "bad_signature":
            raise _from_evidence(exc) from None
        raise BadSignature(
            f"a signature by enrolled key {host.key_id} does not verify over this payload"
        ) from None
    return payload


def _check_binding(snapshot: SnapshotV1, host: HostRecord, reject: _Reject) -> None:
    """Rule 7."""
    if snapshot.extensions.get("dry_run") is True:
        raise reject(DryRunEvidence, "the snapshot is marked dry_run: it was never chained")
    if snapshot.site_id != host.site_id:
        raise reject(
            SiteMismatch,
            f"the snapshot names site {_quote(snapshot.site_id)}; "
            f"this key is enrolled at site {_quote(host.site_id)}",
        )
    if host.machine_id is not None and snapshot.host.machine_id != host.machine_id:
        raise reject(
            HostMismatch,
            f"the snapshot names machine id {_quote(snapshot.host.machine_id)}; "
            f"this key was enrolled on machine id {_quote(host.machine_id)}",
        )


def _check_freshness(
    snapshot: SnapshotV1,
    collected_at: datetime,
    host: HostRecord,
    nonce: NonceRecord | None,
    now: datetime,
    config: VerifyConfig,
    reject: _Reject,
) -> list[Finding]:
    """Rule 8."""
    if snapshot.nonce is not None:
        if nonce is None or nonce.nonce != snapshot.nonce:
            raise reject(
                NonceUnknown,
                f"nonce {_quote(snapshot.nonce, 40)} was never issued by this verifier",
            )
        if nonce.key_id != host.key_id:
            raise reject(
                NonceWrongHost,
                f"nonce {_quote(snapshot.nonce, 40)} was issued to host key {nonce.key_id}, "
                f"not to {host.key_id}",
            )
        if nonce.used:
            raise reject(
                NonceReused,
                f"nonce {_quote(snapshot.nonce, 40)} was already consumed by an accepted snapshot",
            )
        expires_at = utc(nonce.expires_at)
        if now >= expires_at:
            raise reject(
                NonceExpired,
                f"nonce {_quote(snapshot.nonce, 40)} expired at {format_timestamp(expires_at)}; "
                f"it is now {format_timestamp(now)}",
            )
        issued_at = utc(nonce.issued_at)
        if collected_at < issued_at - config.max_future_skew:
            raise reject(
                ClockSkew,
                f"collected_at {snapshot.collected_at} precedes the issue of its nonce at "
                f"{format_timestamp(issued_at)} by more than {_span(config.max_future_skew)}",
            )
    if collected_at > now + config.max_future_skew:
        raise reject(
            ClockSkew,
            f"collected_at {snapshot.collected_at} is {_span(collected_at - now)} ahead of the "
            f"verifier's clock ({format_timestamp(now)}); at most "
            f"{_span(config.max_future_skew)} is allowed",
        )
    age = now - collected_at
    if age > config.max_delay:
        raise reject(
            EvidenceTooOld,
            f"collected_at {snapshot.collected_at} is {_span(age)} old; evidence older than "
            f"{_span(config.max_delay)} is not accepted",
        )
    if age > config.late_after:
        return [
            Finding(
                condition_id="chain.late-delivery",
                severity="info",
                subject=f"host:{host.key_id}",
                message=(
                    f"snapshot seq {snapshot.seq} was delivered {_span(age)} after it was "
                    "collected (spooled during an outage); it describes the host as it was then"
                ),
                expected=f"delivered within {_span(config.late_after)}",
                seen=f"delivered after {_span(age)}",
            )
        ]
    return []


def _check_chain(
    snapshot: SnapshotV1, head: ChainHead | None, key_id: str, reject: _Reject
) -> list[Finding]:
    """Rule 9."""
    seq, prev = snapshot.seq, snapshot.prev
    if head is None:
        if seq == 1 and prev is None:
            return []
        if seq == 1:
            lost = f"it names a predecessor {prev} that was never received"
        else:
            lost = f"{seq - 1} earlier snapshot(s) of its chain were never received"
        return [
            _gap(
                key_id,
                expected="seq 1 with prev null (the start of the chain)",
                seen=f"seq {seq} with prev {prev or 'null'}",
                message=f"the first snapshot received from this host is seq {seq}: {lost}",
            )
        ]
    expected_seq = head.seq + 1
    if seq == expected_seq:
        if head.digest is None or prev == head.digest:
            return []
        raise reject(
            Fork,
            f"seq {seq} continues head seq {head.seq}, but its prev is {prev or 'null'}, "
            f"not the head's digest {head.digest}",
        )
    if seq == head.seq and head.parent_known and prev == head.parent:
        raise reject(
            Fork,
            f"seq {seq} is a second child of {prev or 'the start of the chain'}: seq {seq} was "
            f"already accepted with digest {head.digest}, and this different snapshot names the "
            "same predecessor (the host's chain forked)",
        )
    if seq == head.seq:
        raise reject(
            Replay,
            f"seq {seq} was already accepted with digest {head.digest or 'unknown'}; this is a "
            f"different snapshot with the same seq (expected seq {expected_seq})",
        )
    if seq < head.seq:
        raise reject(
            Rollback,
            f"seq {seq} is below the accepted head seq {head.seq} (expected seq {expected_seq})",
        )
    missing = seq - expected_seq
    return [
        _gap(
            key_id,
            expected=f"seq {expected_seq}",
            seen=f"seq {seq}",
            message=(
                f"expected seq {expected_seq}, got seq {seq}: {missing} snapshot(s) of this "
                "host's chain went missing"
            ),
        )
    ]


def _gap(key_id: str, *, expected: str, seen: str, message: str) -> Finding:
    return Finding(
        condition_id="chain.gap",
        severity="warning",
        subject=f"host:{key_id}",
        message=message,
        expected=expected,
        seen=seen,
    )


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive value (as SQLite returns) is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _span(delta: timedelta) -> str:
    """A duration for people: ``2d 3h``, ``5m 10s``, ``0s``."""
    total = int(abs(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s"))
    ]
    shown = [p for p in parts if not p.startswith("0")][:2]
    return " ".join(shown) or "0s"
