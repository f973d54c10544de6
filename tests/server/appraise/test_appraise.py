"""server.appraise: which evidence is accepted, and the precise reason for the rest."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import server.appraise as verify
from contract import (
    PAYLOAD_TYPE,
    EvidenceError,
    HostInfo,
    MalformedError,
    Posture,
    SchemaError,
    SignatureError,
    SnapshotV1,
    build_statement,
    canonical_bytes,
    format_timestamp,
    sign_envelope,
    statement_bytes,
)
from contract.keys import key_id
from server.api.errors import http_status
from server.appraise import (
    Accepted,
    ChainHead,
    Duplicate,
    HostRecord,
    NonceRecord,
    Parsed,
    Rejected,
    VerifyConfig,
    appraise,
    preparse,
)
from server.findings import status_of

# --------------------------------------------------------------------------- builders

KEY = Ed25519PrivateKey.generate()
KID = key_id(KEY.public_key())
OTHER_KEY = Ed25519PrivateKey.generate()
OTHER_KID = key_id(OTHER_KEY.public_key())
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SITE = "site-frankfurt-1"
MACHINE = "4c4c4544003957108052b4c04f4e4d32"
HEAD_DIGEST = "ab" * 32
NONCE = "n-7f3a9c1e5b2d4a6f8e0c1b3d5f7a9c2e"


def make_snapshot(**changes: Any) -> SnapshotV1:
    """A valid snapshot by KEY at SITE on MACHINE, seq 1, collected a minute before NOW."""
    fields: dict[str, Any] = {
        "agent": {"key_id": KID, "version": "0.1.0"},
        "site_id": SITE,
        "host": HostInfo(hostname="gpu-node-07", machine_id=MACHINE).model_dump(),
        "seq": 1,
        "prev": None,
        "nonce": None,
        "collected_at": format_timestamp(NOW - timedelta(minutes=1)),
        "accelerators": [{"vendor": "NVIDIA", "model": "NVIDIA H100 80GB HBM3", "source": "nvml"}],
        "storage": [
            {
                "root": "/models",
                "encryption": {"status": "unknown", "reason": "not determined"},
                "file_count": 1,
                "total_bytes": 10,
                "files": [
                    {
                        "path": "/models/llama/model.safetensors",
                        "size": 10,
                        "mtime": "2026-01-01T00:00:00Z",
                        "mode": "0640",
                        "uid": 0,
                        "gid": 0,
                        "sha256": "cd" * 32,
                        "format": "safetensors",
                    }
                ],
            }
        ],
        "posture": Posture().model_dump(),
        "errors": [],
    }
    fields.update(changes)
    return SnapshotV1.model_validate(fields)


def sign(payload: bytes, *, key: Ed25519PrivateKey = KEY, keyid: str | None = None) -> bytes:
    keyid = keyid if keyid is not None else key_id(key.public_key())
    return sign_envelope(payload, key, keyid).to_bytes()


def envelope(snapshot: SnapshotV1 | None = None, **changes: Any) -> bytes:
    """Signed envelope bytes of a snapshot (by default make_snapshot(**changes))."""
    return sign(statement_bytes(snapshot or make_snapshot(**changes)))


def statement_dict(**changes: Any) -> dict[str, Any]:
    return build_statement(make_snapshot(**changes))


def envelope_dict(data: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(data)
    return value


def to_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def host_record(**changes: Any) -> HostRecord:
    record = HostRecord(
        key_id=KID, public_key=KEY.public_key(), site_id=SITE, status="active", machine_id=MACHINE
    )
    return replace(record, **changes)


def nonce_record(**changes: Any) -> NonceRecord:
    record = NonceRecord(
        nonce=NONCE,
        key_id=KID,
        issued_at=NOW - timedelta(seconds=30),
        expires_at=NOW + timedelta(minutes=5),
        used=False,
    )
    return replace(record, **changes)


_DEFAULT_HOST = host_record()


def run(
    data: bytes,
    *,
    host: HostRecord | None = _DEFAULT_HOST,
    head: ChainHead | None = None,
    nonce: NonceRecord | None = None,
    already_accepted: bool = False,
    now: datetime = NOW,
    config: VerifyConfig | None = None,
) -> Accepted | Duplicate:
    config = config or VerifyConfig()
    return appraise(
        preparse(data, config),
        host=host,
        head=head,
        nonce=nonce,
        already_accepted=already_accepted,
        now=now,
        config=config,
    )


def accepted(data: bytes, **kwargs: Any) -> Accepted:
    result = run(data, **kwargs)
    assert isinstance(result, Accepted)
    return result


def rejected(
    expected: type[Rejected], action: Callable[[], object], *, authenticated: bool = False
) -> Rejected:
    """Run ``action``; it must raise exactly ``expected`` with an actionable, bounded detail."""
    with pytest.raises(Rejected) as info:
        action()
    exc = info.value
    assert type(exc) is expected, f"{type(exc).__name__}: {exc.detail}"
    assert exc.code == expected.code
    assert exc.permanent is True
    assert exc.authenticated is authenticated
    assert exc.key_id == (KID if authenticated else None)
    assert exc.detail.endswith(exc.hint), "detail ends with what to do"
    assert len(exc.detail) > len(exc.hint) + 10, "detail says what was seen"
    assert len(exc.detail) < 800
    assert exc.__cause__ is None, "no chained traceback"
    assert exc.__context__ is None or exc.__suppress_context__, "no chained traceback"
    assert exc.to_json() == {"code": exc.code, "detail": exc.detail}
    return exc


def pre(data: bytes, config: VerifyConfig | None = None) -> Callable[[], Parsed]:
    return lambda: preparse(data, config or VerifyConfig())


def app(data: bytes, **kwargs: Any) -> Callable[[], object]:
    return lambda: run(data, **kwargs)


# --------------------------------------------------------------------------- the error vocabulary

LEAVES = [
    cls
    for cls in vars(verify).values()
    if isinstance(cls, type) and issubclass(cls, Rejected) and not cls.__subclasses__()
]
STATUS = {
    "too_large": 413,
    "unknown_key": 401,
    "bad_signature": 401,
    "no_signature": 401,
    "revoked_key": 403,
    "key_not_active": 403,
    "site_mismatch": 403,
    "host_mismatch": 403,
    "schema_invalid": 422,
    "unsupported_predicate": 422,
    "subject_mismatch": 422,
    "key_mismatch": 422,
    "dry_run": 422,
    "clock_skew": 422,
    "evidence_too_old": 422,
    "nonce_unknown": 409,
    "nonce_wrong_host": 409,
    "nonce_reused": 409,
    "nonce_expired": 409,
    "replay": 409,
    "rollback": 409,
    "fork": 409,
    "tpm_evidence_invalid": 422,
}


def test_every_rejection_has_a_unique_code_documented_in_the_rules() -> None:
    codes = [cls.code for cls in LEAVES]
    assert len(codes) == len(set(codes)) == 32
    for code in codes:
        assert f"``{code}``" in (verify.__doc__ or ""), code


@pytest.mark.parametrize("cls", LEAVES, ids=lambda cls: cls.code)
def test_every_rejection_is_permanent_with_its_documented_http_status(
    cls: type[Rejected],
) -> None:
    assert cls.permanent is True
    assert http_status(cls) == STATUS.get(cls.code, 400)
    assert cls.authenticated is False, "authenticated is decided per instance"


@pytest.mark.parametrize(
    ("family", "code", "expected"),
    [
        (MalformedError, "some_new_malformation", verify.Malformed),
        (SignatureError, "some_new_signature_problem", verify.Unauthenticated),
        (SchemaError, "some_new_schema_problem", verify.InvalidStatement),
        (EvidenceError, "some_new_problem", Rejected),
    ],
)
def test_an_evidence_code_without_a_class_keeps_its_code_and_family_status(
    family: type[EvidenceError], code: str, expected: type[Rejected]
) -> None:
    exc = verify._from_evidence(family("it went wrong", code=code))
    assert type(exc) is expected
    assert exc.code == code
    assert http_status(exc) == http_status(expected)
    assert "it went wrong" in exc.detail


# --------------------------------------------------------------------------- stage 1: bytes


def test_a_well_formed_envelope_preparses_to_digest_key_ids_and_nonce() -> None:
    data = envelope(nonce=NONCE)
    parsed = preparse(data)
    assert parsed.raw == data
    assert parsed.size == len(data)
    assert parsed.key_ids == (KID,)
    assert parsed.nonce == NONCE
    assert len(parsed.digest) == 64


def test_a_20_mib_body_is_too_large_before_it_is_parsed() -> None:
    exc = rejected(verify.TooLarge, pre(b"{" * (20 * 1024 * 1024)))
    assert http_status(exc) == 413
    assert str(16 * 1024 * 1024) in exc.detail


def test_the_size_limit_is_configurable() -> None:
    data = envelope()
    exc = rejected(verify.TooLarge, pre(data, VerifyConfig(max_bytes=len(data) - 1)))
    assert f"{len(data)} bytes" in exc.detail
    assert preparse(data, VerifyConfig(max_bytes=len(data))).size == len(data)


def test_invalid_utf8_is_bad_encoding() -> None:
    exc = rejected(verify.BadEncoding, pre(b'{"payloadType": "\xff\xfe"}'))
    assert "UTF-8" in exc.detail


def test_truncated_json_is_malformed() -> None:
    exc = rejected(verify.MalformedJson, pre(b'{"payloadType": '))
    assert "line 1" in exc.detail


def test_nan_in_the_envelope_is_malformed_json() -> None:
    exc = rejected(verify.MalformedJson, pre(b'{"payloadType": NaN}'))
    assert "NaN" in exc.detail


def test_a_huge_integer_is_out_of_range() -> None:
    rejected(verify.NumberOutOfRange, pre(b'{"payloadType": 1' + b"0" * 400 + b"}"))


def test_duplicate_keys_are_rejected_because_parsers_disagree_on_the_winner() -> None:
    good = envelope_dict(envelope())
    data = b'{"payloadType": "%s", "payload": "%s", "payload": "e30=", "signatures": []}' % (
        PAYLOAD_TYPE.encode(),
        good["payload"].encode(),
    )
    exc = rejected(verify.DuplicateKey, pre(data))
    assert "'payload'" in exc.detail


def test_100000_deep_nesting_is_too_deep() -> None:
    exc = rejected(verify.JsonTooDeep, pre(b"[" * 100_000 + b"]" * 100_000))
    assert "64" in exc.detail


def test_the_depth_limit_is_configurable() -> None:
    data = to_bytes({"payloadType": [[[[1]]]]})
    rejected(verify.JsonTooDeep, pre(data, VerifyConfig(max_depth=3)))
    rejected(verify.BadEnvelope, pre(data, VerifyConfig(max_depth=5)))


@pytest.mark.parametrize(
    ("body", "seen"),
    [
        (b"[]", "list"),
        (b'"envelope"', "str"),
        (b'{"payloadType": "x"}', "payload"),
        (b'{"payloadType": "x", "payload": 5, "signatures": []}', "payload"),
    ],
)
def test_anything_but_a_dsse_envelope_object_is_a_bad_envelope(body: bytes, seen: str) -> None:
    exc = rejected(verify.BadEnvelope, pre(body))
    assert seen in exc.detail


def test_an_extra_envelope_field_is_a_bad_envelope_and_its_name_is_not_echoed_in_full() -> None:
    value = envelope_dict(envelope())
    value["x" * 5000 + "\n\x1b[31m"] = 1
    exc = rejected(verify.BadEnvelope, pre(to_bytes(value)))
    assert "x" * 41 not in exc.detail
    assert "\n" not in exc.detail and "\x1b" not in exc.detail


def test_more_signatures_than_the_limit_is_a_bad_envelope() -> None:
    value = envelope_dict(envelope())
    value["signatures"] = value["signatures"] * 17
    exc = rejected(verify.BadEnvelope, pre(to_bytes(value)))
    assert "17 signatures" in exc.detail
    assert preparse(to_bytes(value), VerifyConfig(max_signatures=17)).key_ids == (KID,)


def test_a_wrong_payload_type_is_rejected_and_named() -> None:
    value = envelope_dict(envelope())
    value["payloadType"] = "text/plain" + "A" * 500
    exc = rejected(verify.BadPayloadType, pre(to_bytes(value)))
    assert "'text/plain" in exc.detail
    assert "A" * 101 not in exc.detail
    assert PAYLOAD_TYPE in exc.detail


def test_an_envelope_without_signatures_is_rejected() -> None:
    value = envelope_dict(envelope())
    value["signatures"] = []
    exc = rejected(verify.NoSignature, pre(to_bytes(value)))
    assert http_status(exc) == 401


def test_a_non_base64_payload_is_rejected() -> None:
    value = envelope_dict(envelope())
    value["payload"] = "not base64!"
    exc = rejected(verify.BadBase64, pre(to_bytes(value)))
    assert "payload" in exc.detail


def test_a_non_base64_signature_is_rejected_and_located() -> None:
    value = envelope_dict(envelope())
    value["signatures"].append({"keyid": OTHER_KID, "sig": "@@@@"})
    exc = rejected(verify.BadBase64, pre(to_bytes(value)))
    assert "signatures[1].sig" in exc.detail


def test_key_ids_for_lookup_are_distinct_and_well_formed_only() -> None:
    value = envelope_dict(envelope())
    sig = value["signatures"][0]
    value["signatures"] = [
        {"keyid": "' OR 1=1 --", "sig": sig["sig"]},
        sig,
        {"keyid": OTHER_KID, "sig": sig["sig"]},
        sig,
    ]
    assert preparse(to_bytes(value)).key_ids == (KID, OTHER_KID)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1]",
        b'{"predicate": []}',
        b'{"predicate": {"nonce": 5}}',
        b'{"predicate": {"nonce": ""}}',
        b'{"predicate": {"nonce": "%s"}}' % (b"n" * 257),
    ],
)
def test_the_nonce_for_lookup_is_none_when_the_payload_has_no_plausible_one(
    payload: bytes,
) -> None:
    assert preparse(sign(payload)).nonce is None


# --------------------------------------------------------------------------- signature


def test_a_valid_first_snapshot_is_accepted_without_findings() -> None:
    data = envelope()
    result = accepted(data)
    assert result.digest == preparse(data).digest
    assert result.key_id == KID
    assert (result.seq, result.prev, result.nonce) == (1, None, None)
    assert result.findings == ()
    assert result.collected_at == NOW - timedelta(minutes=1)
    assert result.snapshot.site_id == SITE
    assert result.statement.subject[0].digest == {"sha256": "cd" * 32}


def test_a_key_with_no_enrollment_is_unknown() -> None:
    exc = rejected(verify.UnknownKey, app(envelope(), host=None))
    assert KID[:16] in exc.detail
    assert "enroll" in exc.detail


def test_a_host_record_for_a_key_that_did_not_sign_is_an_unknown_key() -> None:
    other = host_record(key_id=OTHER_KID, public_key=OTHER_KEY.public_key())
    rejected(verify.UnknownKey, app(envelope(), host=other))


def test_a_revoked_key_is_refused_and_audited_when_its_signature_is_valid() -> None:
    exc = rejected(
        verify.RevokedKey, app(envelope(), host=host_record(status="revoked")), authenticated=True
    )
    assert http_status(exc) == 403
    assert "revoked" in exc.detail


def test_a_revoked_key_id_with_a_forged_signature_is_refused_but_not_audited() -> None:
    value = envelope_dict(envelope())
    value["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
    rejected(verify.RevokedKey, app(to_bytes(value), host=host_record(status="revoked")))


def test_a_pending_key_is_not_yet_active() -> None:
    exc = rejected(
        verify.KeyNotActive,
        app(envelope(), host=host_record(status="pending")),
        authenticated=True,
    )
    assert "approval" in exc.detail


def test_a_tampered_payload_byte_breaks_the_signature() -> None:
    value = envelope_dict(envelope())
    payload = bytearray(base64.b64decode(value["payload"]))
    payload[payload.index(b"gpu-node-07")] ^= 0x01
    value["payload"] = base64.b64encode(bytes(payload)).decode()
    exc = rejected(verify.BadSignature, app(to_bytes(value)))
    assert KID in exc.detail
    assert http_status(exc) == 401


def test_a_tampered_signature_is_rejected() -> None:
    value = envelope_dict(envelope())
    sig = bytearray(base64.b64decode(value["signatures"][0]["sig"]))
    sig[10] ^= 0x80
    value["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    rejected(verify.BadSignature, app(to_bytes(value)))


def test_a_signature_by_another_key_under_the_enrolled_key_id_is_rejected() -> None:
    data = sign(statement_bytes(make_snapshot()), key=OTHER_KEY, keyid=KID)
    rejected(verify.BadSignature, app(data))


def test_two_signatures_one_by_an_unknown_key_is_accepted_on_the_enrolled_one() -> None:
    payload = statement_bytes(make_snapshot())
    value = envelope_dict(sign(payload, key=OTHER_KEY))
    value["signatures"].append(envelope_dict(sign(payload))["signatures"][0])
    result = accepted(to_bytes(value))
    assert result.key_id == KID
    assert preparse(to_bytes(value)).key_ids == (OTHER_KID, KID)


def test_a_second_bad_signature_under_the_enrolled_key_id_is_rejected() -> None:
    value = envelope_dict(envelope())
    value["signatures"].append({"keyid": KID, "sig": base64.b64encode(b"\1" * 64).decode()})
    rejected(verify.BadSignature, app(to_bytes(value)))


# --------------------------------------------------------------------------- idempotence


def test_an_already_accepted_envelope_is_a_duplicate_even_after_its_nonce_was_used() -> None:
    data = envelope(nonce=NONCE, seq=5, prev=HEAD_DIGEST)
    result = run(
        data,
        already_accepted=True,
        head=ChainHead(seq=9, digest="ef" * 32),
        nonce=nonce_record(used=True),
        now=NOW + timedelta(days=365),
    )
    assert result == Duplicate(digest=preparse(data).digest, key_id=KID)


def test_a_duplicate_still_needs_a_valid_signature() -> None:
    value = envelope_dict(envelope())
    value["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
    rejected(verify.BadSignature, app(to_bytes(value), already_accepted=True))


# --------------------------------------------------------------------------- payload and schema


@pytest.mark.parametrize(
    "encode",
    [
        lambda v: json.dumps(v, indent=1).encode(),
        lambda v: json.dumps(v, sort_keys=False, separators=(",", ":")).encode(),
        lambda v: canonical_bytes(v) + b" ",
    ],
    ids=["whitespace", "key-order", "trailing-space"],
)
def test_the_same_json_in_another_encoding_is_a_non_canonical_payload(
    encode: Callable[[Any], bytes],
) -> None:
    value = statement_dict()
    value = {"predicateType": value["predicateType"], **value}  # not JCS key order
    exc = rejected(verify.NonCanonicalPayload, app(sign(encode(value))), authenticated=True)
    assert "8785" in exc.detail
    assert http_status(exc) == 400


def test_duplicate_keys_in_a_signed_payload_are_rejected_and_audited() -> None:
    payload = b'{"_type":"a","_type":"b"}'
    rejected(verify.DuplicateKey, app(sign(payload)), authenticated=True)


def test_nan_in_a_signed_payload_is_malformed_json() -> None:
    rejected(verify.MalformedJson, app(sign(b'{"seq":NaN}')), authenticated=True)


def test_a_payload_that_is_not_a_statement_is_schema_invalid() -> None:
    value = statement_dict()
    del value["subject"]
    exc = rejected(verify.SchemaInvalid, app(sign(canonical_bytes(value))), authenticated=True)
    assert "subject" in exc.detail
    assert http_status(exc) == 422


def test_a_predicate_missing_a_field_is_schema_invalid() -> None:
    value = statement_dict()
    del value["predicate"]["errors"]
    exc = rejected(verify.SchemaInvalid, app(sign(canonical_bytes(value))), authenticated=True)
    assert "errors" in exc.detail


def test_an_unknown_predicate_type_is_unsupported() -> None:
    value = statement_dict()
    value["predicateType"] = "https://veu-attest.dev/snapshot/v9"
    exc = rejected(
        verify.UnsupportedPredicate, app(sign(canonical_bytes(value))), authenticated=True
    )
    assert "snapshot/v9" in exc.detail
    assert "snapshot/v1" in exc.detail


def test_a_long_unknown_predicate_type_is_not_echoed_in_full() -> None:
    value = statement_dict()
    value["predicateType"] = "https://example.com/" + "p" * 10_000
    exc = rejected(
        verify.UnsupportedPredicate, app(sign(canonical_bytes(value))), authenticated=True
    )
    assert "p" * 101 not in exc.detail
    assert "snapshot/v1" in exc.detail


def test_a_long_duplicate_key_is_not_echoed_in_full() -> None:
    key = "k" * 10_000
    data = b'{"%s": 1, "%s": 2}' % (key.encode(), key.encode())
    exc = rejected(verify.DuplicateKey, pre(data))
    assert "k" * 101 not in exc.detail


def test_a_subject_that_differs_from_the_weight_files_is_a_subject_mismatch() -> None:
    value = statement_dict()
    value["subject"][0]["digest"]["sha256"] = "00" * 32
    rejected(verify.SubjectMismatch, app(sign(canonical_bytes(value))), authenticated=True)


def test_a_predicate_naming_another_key_is_a_key_mismatch() -> None:
    data = envelope(agent={"key_id": OTHER_KID, "version": "0.1.0"})
    exc = rejected(verify.KeyMismatch, app(data), authenticated=True)
    assert OTHER_KID in exc.detail and KID in exc.detail


# --------------------------------------------------------------------------- binding


def test_a_snapshot_for_another_site_is_a_site_mismatch() -> None:
    exc = rejected(verify.SiteMismatch, app(envelope(site_id="site-elsewhere")), authenticated=True)
    assert "'site-elsewhere'" in exc.detail and f"'{SITE}'" in exc.detail


def test_a_snapshot_without_a_site_is_a_site_mismatch() -> None:
    exc = rejected(verify.SiteMismatch, app(envelope(site_id=None)), authenticated=True)
    assert "null" in exc.detail


def test_a_snapshot_from_another_machine_is_a_host_mismatch() -> None:
    data = envelope(host={"machine_id": "f" * 32})
    exc = rejected(verify.HostMismatch, app(data), authenticated=True)
    assert "f" * 32 in exc.detail and MACHINE in exc.detail


def test_a_host_enrolled_without_a_machine_id_is_not_bound_to_one() -> None:
    data = envelope(host={"machine_id": "f" * 32})
    assert accepted(data, host=host_record(machine_id=None)).key_id == KID


def test_a_long_site_id_is_not_echoed_in_full() -> None:
    exc = rejected(verify.SiteMismatch, app(envelope(site_id="s" * 10_000)), authenticated=True)
    assert "s" * 101 not in exc.detail


# --------------------------------------------------------------------------- nonce


def test_a_snapshot_bound_to_a_valid_nonce_is_accepted_and_consumes_it() -> None:
    result = accepted(envelope(nonce=NONCE), nonce=nonce_record())
    assert result.nonce == NONCE


def test_a_nonce_the_verifier_never_issued_is_unknown() -> None:
    exc = rejected(verify.NonceUnknown, app(envelope(nonce=NONCE)), authenticated=True)
    assert NONCE in exc.detail and "challenge" in exc.detail


def test_a_nonce_record_for_another_nonce_counts_as_unknown() -> None:
    rejected(
        verify.NonceUnknown,
        app(envelope(nonce=NONCE), nonce=nonce_record(nonce="something-else")),
        authenticated=True,
    )


def test_a_nonce_issued_to_another_host_is_refused() -> None:
    exc = rejected(
        verify.NonceWrongHost,
        app(envelope(nonce=NONCE), nonce=nonce_record(key_id=OTHER_KID)),
        authenticated=True,
    )
    assert OTHER_KID in exc.detail and http_status(exc) == 409


def test_a_used_nonce_is_a_reuse() -> None:
    exc = rejected(
        verify.NonceReused,
        app(envelope(nonce=NONCE), nonce=nonce_record(used=True)),
        authenticated=True,
    )
    assert "new challenge" in exc.detail


def test_an_expired_nonce_is_refused() -> None:
    exc = rejected(
        verify.NonceExpired,
        app(envelope(nonce=NONCE), nonce=nonce_record(expires_at=NOW)),
        authenticated=True,
    )
    assert format_timestamp(NOW) in exc.detail


def test_a_snapshot_collected_before_its_nonce_was_issued_is_clock_skew() -> None:
    data = envelope(nonce=NONCE, collected_at=format_timestamp(NOW - timedelta(minutes=10)))
    exc = rejected(
        verify.ClockSkew,
        app(data, nonce=nonce_record(issued_at=NOW - timedelta(minutes=4))),
        authenticated=True,
    )
    assert "precedes the issue of its nonce" in exc.detail


def test_a_snapshot_collected_slightly_before_its_nonce_is_within_the_skew() -> None:
    data = envelope(nonce=NONCE, collected_at=format_timestamp(NOW - timedelta(minutes=2)))
    accepted(data, nonce=nonce_record(issued_at=NOW - timedelta(minutes=1)))


def test_a_nonce_record_without_a_nonce_in_the_snapshot_is_ignored() -> None:
    assert accepted(envelope(), nonce=nonce_record(used=True)).nonce is None


def test_naive_nonce_times_are_taken_as_utc() -> None:
    record = nonce_record(
        issued_at=(NOW - timedelta(seconds=30)).replace(tzinfo=None),
        expires_at=(NOW + timedelta(minutes=5)).replace(tzinfo=None),
    )
    assert accepted(envelope(nonce=NONCE), nonce=record).nonce == NONCE


# --------------------------------------------------------------------------- clock


def test_a_snapshot_from_the_future_beyond_the_skew_is_refused() -> None:
    data = envelope(collected_at=format_timestamp(NOW + timedelta(minutes=6)))
    exc = rejected(verify.ClockSkew, app(data), authenticated=True)
    assert "6m ahead" in exc.detail and "NTP" in exc.detail and http_status(exc) == 422


def test_a_snapshot_slightly_in_the_future_is_within_the_skew() -> None:
    accepted(envelope(collected_at=format_timestamp(NOW + timedelta(minutes=4))))


def test_a_snapshot_older_than_the_maximum_delay_is_too_old() -> None:
    data = envelope(collected_at=format_timestamp(NOW - timedelta(days=31)))
    exc = rejected(verify.EvidenceTooOld, app(data), authenticated=True)
    assert "31d old" in exc.detail and "30d" in exc.detail


def test_spooled_evidence_delivered_late_is_accepted_with_an_info_finding() -> None:
    data = envelope(collected_at=format_timestamp(NOW - timedelta(days=2, hours=3)))
    result = accepted(data)
    (finding,) = result.findings
    assert finding.condition_id == "chain.late-delivery"
    assert finding.severity == "info"
    assert finding.subject == f"host:{KID}"
    assert finding.seen == "delivered after 2d 3h"
    assert status_of(result.findings) == "affirming"


def test_the_time_limits_are_configurable() -> None:
    data = envelope(collected_at=format_timestamp(NOW - timedelta(hours=2)))
    config = VerifyConfig(max_delay=timedelta(hours=1))
    rejected(verify.EvidenceTooOld, app(data, config=config), authenticated=True)
    assert accepted(data, config=VerifyConfig(late_after=timedelta(hours=3))).findings == ()


def test_a_naive_now_is_taken_as_utc() -> None:
    assert accepted(envelope(), now=NOW.replace(tzinfo=None)).findings == ()


def test_now_in_another_time_zone_is_the_same_instant() -> None:
    tokyo = NOW.astimezone(datetime.now().astimezone().tzinfo)
    assert accepted(envelope(), now=tokyo).findings == ()


# --------------------------------------------------------------------------- chain


def test_the_next_snapshot_continuing_the_head_is_accepted() -> None:
    data = envelope(seq=8, prev=HEAD_DIGEST)
    result = accepted(data, head=ChainHead(seq=7, digest=HEAD_DIGEST))
    assert (result.seq, result.prev, result.findings) == (8, HEAD_DIGEST, ())


def test_the_first_snapshot_after_enrollment_continues_a_head_without_digest() -> None:
    result = accepted(envelope(seq=4, prev="12" * 32), head=ChainHead(seq=3, digest=None))
    assert result.findings == ()


def test_a_second_child_of_the_head_is_a_fork() -> None:
    data = envelope(seq=8, prev="99" * 32)
    exc = rejected(
        verify.Fork, app(data, head=ChainHead(seq=7, digest=HEAD_DIGEST)), authenticated=True
    )
    assert HEAD_DIGEST in exc.detail and "99" * 32 in exc.detail and http_status(exc) == 409


def test_a_new_snapshot_with_the_head_seq_is_a_replay() -> None:
    data = envelope(seq=7, prev="99" * 32)
    exc = rejected(
        verify.Replay, app(data, head=ChainHead(seq=7, digest=HEAD_DIGEST)), authenticated=True
    )
    assert "expected seq 8" in exc.detail and HEAD_DIGEST in exc.detail


def test_a_sibling_of_the_head_appraised_after_it_was_accepted_is_a_fork() -> None:
    """The loser of a race appraised after the winner committed: same seq as the new head and
    the same predecessor -> a second child of that predecessor, i.e. a fork, not a replay."""
    parent = "99" * 32
    head = ChainHead(seq=7, digest=HEAD_DIGEST, parent=parent, parent_known=True)
    exc = rejected(verify.Fork, app(envelope(seq=7, prev=parent), head=head), authenticated=True)
    assert "second child" in exc.detail and HEAD_DIGEST in exc.detail
    other = ChainHead(seq=7, digest=HEAD_DIGEST, parent="aa" * 32, parent_known=True)
    rejected(verify.Replay, app(envelope(seq=7, prev=parent), head=other), authenticated=True)
    first = ChainHead(seq=1, digest=HEAD_DIGEST, parent=None, parent_known=True)
    rejected(verify.Fork, app(envelope(seq=1, prev=None), head=first), authenticated=True)


def test_a_new_snapshot_below_the_head_is_a_rollback() -> None:
    data = envelope(seq=3, prev="99" * 32)
    exc = rejected(
        verify.Rollback, app(data, head=ChainHead(seq=7, digest=HEAD_DIGEST)), authenticated=True
    )
    assert "seq 3" in exc.detail and "head seq 7" in exc.detail


def test_a_jump_in_seq_is_accepted_with_a_gap_warning_saying_how_many_are_missing() -> None:
    data = envelope(seq=12, prev="99" * 32)
    result = accepted(data, head=ChainHead(seq=7, digest=HEAD_DIGEST))
    (finding,) = result.findings
    assert finding.condition_id == "chain.gap"
    assert finding.severity == "warning"
    assert "expected seq 8, got seq 12: 4 snapshot(s)" in finding.message
    assert (finding.expected, finding.seen) == ("seq 8", "seq 12")
    assert status_of(result.findings) == "warning"


def test_a_late_gap_carries_both_findings() -> None:
    data = envelope(seq=9, prev="99" * 32, collected_at=format_timestamp(NOW - timedelta(hours=1)))
    result = accepted(data, head=ChainHead(seq=7, digest=HEAD_DIGEST))
    assert [f.condition_id for f in result.findings] == ["chain.late-delivery", "chain.gap"]


def test_a_first_snapshot_above_seq_1_without_a_head_is_accepted_with_a_gap_warning() -> None:
    result = accepted(envelope(seq=5, prev=HEAD_DIGEST))
    (finding,) = result.findings
    assert finding.condition_id == "chain.gap"
    assert "4 earlier snapshot(s)" in finding.message


def test_a_first_snapshot_naming_a_predecessor_without_a_head_gets_a_gap_warning() -> None:
    result = accepted(envelope(seq=1, prev=HEAD_DIGEST))
    (finding,) = result.findings
    assert finding.condition_id == "chain.gap"
    assert HEAD_DIGEST in finding.message


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("delta", "shown"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(days=1, seconds=5), "1d 5s"),
        (timedelta(days=2, hours=3, minutes=4), "2d 3h"),
    ],
)
def test_durations_are_shown_for_people(delta: timedelta, shown: str) -> None:
    assert verify._span(delta) == shown


# --------------------------------------------------------------------------- property

ORIGINAL = envelope(seq=2, prev=HEAD_DIGEST)
ORIGINAL_DIGEST = preparse(ORIGINAL).digest


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=len(ORIGINAL) - 1),
    value=st.integers(min_value=0, max_value=255),
)
def test_flipping_any_byte_never_yields_evidence_with_another_digest(
    index: int, value: int
) -> None:
    mutated = bytearray(ORIGINAL)
    mutated[index] = value
    try:
        result = run(bytes(mutated), head=ChainHead(seq=1, digest=HEAD_DIGEST))
    except Rejected:
        return
    assert isinstance(result, Accepted)
    assert result.digest == ORIGINAL_DIGEST
    assert result.snapshot == make_snapshot(seq=2, prev=HEAD_DIGEST)


def test_a_hand_built_parsed_with_a_non_base64_signature_is_still_rejected() -> None:
    parsed = preparse(envelope())
    sig = parsed.envelope.signatures[0].model_copy(update={"sig": "@@@@"})
    bad = replace(parsed, envelope=parsed.envelope.model_copy(update={"signatures": [sig]}))
    with pytest.raises(verify.BadBase64):
        appraise(bad, host=_DEFAULT_HOST, head=None, nonce=None, already_accepted=False, now=NOW)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_are_parsed_or_rejected_never_crash(data: bytes) -> None:
    try:
        preparse(data)
    except Rejected as exc:
        assert exc.code and not exc.authenticated


PAYLOAD = statement_bytes(make_snapshot())
SIGNATURES = envelope_dict(sign(PAYLOAD))["signatures"]


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(PAYLOAD) - 1), bit=st.integers(0, 7))
def test_any_flipped_payload_bit_under_the_original_signature_is_a_bad_signature(
    index: int, bit: int
) -> None:
    payload = bytearray(PAYLOAD)
    payload[index] ^= 1 << bit
    value = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(bytes(payload)).decode(),
        "signatures": SIGNATURES,
    }
    rejected(verify.BadSignature, app(to_bytes(value)))


def test_the_digest_ignores_how_the_envelope_itself_is_formatted() -> None:
    data = envelope()
    pretty = json.dumps(envelope_dict(data), indent=4).encode()
    assert accepted(pretty).digest == accepted(data).digest


# --------------------------------------------------------------------------- parse once


def test_preparse_keeps_the_strictly_parsed_payload_for_appraisal() -> None:
    data = envelope()
    parsed = preparse(data)
    assert parsed.payload_json is not None
    assert parsed.payload_json.value == json.loads(statement_bytes(make_snapshot()))
    assert isinstance(accepted(data), Accepted)


def _deep_payload(depth: int) -> bytes:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return canonical_bytes({"deep": value})


@pytest.mark.parametrize("envelope_limit", [64, 100])
def test_a_looser_envelope_depth_limit_never_loosens_the_statement_limit(
    envelope_limit: int,
) -> None:
    # 70 levels: within a 100-level envelope limit, beyond the statement's own 64.
    data = sign(_deep_payload(70))
    exc = rejected(
        verify.JsonTooDeep,
        app(data, config=VerifyConfig(max_depth=envelope_limit)),
        authenticated=True,
    )
    assert "64" in exc.detail


def test_a_payload_too_deep_to_peek_is_still_appraised_and_refused_precisely() -> None:
    data = sign(_deep_payload(70))
    assert preparse(data).payload_json is None
    assert preparse(data).nonce is None
