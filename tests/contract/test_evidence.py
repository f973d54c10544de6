"""The evidence contract: canonical bytes, DSSE, digests, versioning."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import (
    PAYLOAD_TYPE,
    PREDICATE_MODELS,
    PREDICATE_TYPE_V1,
    Accelerator,
    AgentInfo,
    EvidenceError,
    HostInfo,
    MalformedError,
    Posture,
    SchemaError,
    SignatureError,
    SnapshotV1,
    canonical_bytes,
    envelope_digest,
    open_envelope,
    pae,
    parse_envelope,
    parse_json_strict,
    parse_statement,
    sign_envelope,
    statement_bytes,
    verify_envelope,
)
from contract.keys import key_id as compute_key_id


def _f64(hex_bits: str) -> float:
    return float(struct.unpack(">d", bytes.fromhex(hex_bits))[0])


# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical serialization.
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("4415af1d78b58c40", "100000000000000000000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC8785_NUMBERS)
def test_rfc8785_number_serialization_matches_the_published_vectors(
    bits: str, expected: str
) -> None:
    assert canonical_bytes(_f64(bits)) == expected.encode()


def test_rfc8785_section_3_2_2_example_matches_published_output() -> None:
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_bytes(json.loads(source)) == expected.encode("utf-8")


def test_rfc8785_property_sorting_uses_utf16_code_units() -> None:
    source = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys_in_order = list(json.loads(canonical_bytes(source)))
    assert keys_in_order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_dsse_pae_matches_the_specification_example() -> None:
    # From the DSSE protocol document: PAE("http://example.com/HelloWorld", "hello world")
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


# --------------------------------------------------------------------------- snapshots


def make_snapshot(key: Ed25519PrivateKey, **overrides: object) -> SnapshotV1:
    base: dict[str, object] = {
        "agent": AgentInfo(key_id=compute_key_id(key.public_key()), version="0.1.0"),
        "site_id": "site-1",
        "host": HostInfo(hostname="gpu-node-01", machine_id="ab" * 16),
        "seq": 1,
        "prev": None,
        "nonce": None,
        "collected_at": "2026-11-27T12:00:00.000000Z",
        "accelerators": [
            Accelerator(
                vendor="NVIDIA",
                model="NVIDIA H100 80GB HBM3",
                pci_vendor_id="0x10de",
                pci_device_id="0x2330",
                pci_bus_id=f"0000:{0x18 + i:02x}:00.0",
                uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000",
                source="nvml",
            )
            for i in range(8)
        ],
        "storage": [],
        "posture": Posture(),
        "errors": [],
    }
    base.update(overrides)
    return SnapshotV1.model_validate(base)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_signed_snapshot_opens_with_the_signers_key(key: Ed25519PrivateKey) -> None:
    snapshot = make_snapshot(key)
    kid = compute_key_id(key.public_key())
    envelope = sign_envelope(statement_bytes(snapshot), key, kid)
    _, keyid, statement, parsed = open_envelope(envelope.to_bytes(), {kid: key.public_key()})
    assert keyid == kid
    assert parsed == snapshot
    assert statement.predicateType == PREDICATE_TYPE_V1
    assert envelope.payloadType == PAYLOAD_TYPE


def test_digest_is_sha256_of_the_canonical_payload(key: Ed25519PrivateKey) -> None:
    import hashlib

    payload = statement_bytes(make_snapshot(key))
    envelope = sign_envelope(payload, key, "k")
    assert envelope_digest(envelope) == hashlib.sha256(payload).hexdigest()


def test_statement_subject_lists_each_hashed_weight_file(key: Ed25519PrivateKey) -> None:
    storage = {
        "root": "/models",
        "encryption": {"status": "unknown", "reason": "test"},
        "file_count": 2,
        "total_bytes": 20,
        "files": [
            {
                "path": "/models/a.safetensors",
                "size": 10,
                "mtime": "2026-01-01T00:00:00Z",
                "mode": "0640",
                "uid": 0,
                "gid": 0,
                "sha256": "aa" * 32,
                "format": "safetensors",
            },
            {
                "path": "/models/b.gguf",
                "size": 10,
                "mtime": "2026-01-01T00:00:00Z",
                "mode": "0640",
                "uid": 0,
                "gid": 0,
                "sha256": None,
                "format": "gguf",
                "error": {"code": "unreadable", "detail": "permission denied"},
            },
        ],
    }
    snapshot = make_snapshot(key, storage=[storage])
    statement, _ = parse_statement(statement_bytes(snapshot))
    assert [(s.name, s.digest) for s in statement.subject] == [
        ("/models/a.safetensors", {"sha256": "aa" * 32})
    ]


def test_statement_whose_subject_disagrees_with_predicate_is_rejected(
    key: Ed25519PrivateKey,
) -> None:
    value = json.loads(statement_bytes(make_snapshot(key)))
    value["subject"] = [{"name": "/etc/passwd", "digest": {"sha256": "00" * 32}}]
    with pytest.raises(SchemaError) as err:
        parse_statement(canonical_bytes(value))
    assert err.value.code == "subject_mismatch"


def test_non_canonical_payload_is_rejected_even_when_it_parses(key: Ed25519PrivateKey) -> None:
    value = json.loads(statement_bytes(make_snapshot(key)))
    pretty = json.dumps(value, indent=1).encode()
    with pytest.raises(MalformedError) as err:
        parse_statement(pretty)
    assert err.value.code == "non_canonical_payload"


def test_unknown_predicate_type_is_rejected_with_the_known_list(key: Ed25519PrivateKey) -> None:
    value = json.loads(statement_bytes(make_snapshot(key)))
    value["predicateType"] = "https://veu-attest.dev/snapshot/v9"
    with pytest.raises(SchemaError) as err:
        parse_statement(canonical_bytes(value))
    assert err.value.code == "unsupported_predicate"
    assert PREDICATE_TYPE_V1 in err.value.detail


def test_a_future_predicate_can_coexist_with_the_known_ones(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later version registers its model beside v1 and v2 (the registry is restored after:
    other tests judge real v2 snapshots)."""

    class SnapshotNext(SnapshotV1):
        tpm_quote: str | None = None

    next_type = "https://veu-attest.dev/snapshot/v99-test"
    monkeypatch.setitem(PREDICATE_MODELS, next_type, SnapshotNext)
    value = json.loads(statement_bytes(make_snapshot(key)))
    value["predicateType"] = next_type
    value["predicate"]["tpm_quote"] = "q"
    _, later = parse_statement(canonical_bytes(value))
    assert isinstance(later, SnapshotNext)
    _, v1 = parse_statement(statement_bytes(make_snapshot(key)))
    assert type(v1) is SnapshotV1


def test_unknown_predicate_field_is_a_schema_error(key: Ed25519PrivateKey) -> None:
    value = json.loads(statement_bytes(make_snapshot(key)))
    value["predicate"]["tpp"] = 15832
    with pytest.raises(SchemaError) as err:
        parse_statement(canonical_bytes(value))
    assert "tpp" in err.value.detail


def test_signature_by_another_key_is_reported_as_unknown_key(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    envelope = sign_envelope(statement_bytes(make_snapshot(key)), other, "other")
    with pytest.raises(SignatureError) as err:
        verify_envelope(envelope, {compute_key_id(key.public_key()): key.public_key()})
    assert err.value.code == "unknown_key"


def test_envelope_with_wrong_payload_type_is_rejected(key: Ed25519PrivateKey) -> None:
    envelope = sign_envelope(statement_bytes(make_snapshot(key)), key, "k")
    raw = json.loads(envelope.to_bytes())
    raw["payloadType"] = "text/plain"
    with pytest.raises(MalformedError) as err:
        parse_envelope(json.dumps(raw).encode())
    assert err.value.code == "bad_payload_type"


def test_envelope_without_signatures_is_rejected(key: Ed25519PrivateKey) -> None:
    envelope = sign_envelope(statement_bytes(make_snapshot(key)), key, "k")
    raw = json.loads(envelope.to_bytes())
    raw["signatures"] = []
    with pytest.raises(SignatureError) as err:
        parse_envelope(json.dumps(raw).encode())
    assert err.value.code == "no_signature"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"a": 1, "a": 2}', "duplicate_key"),
        (b'{"a": NaN}', "malformed_json"),
        (b'{"a": Infinity}', "malformed_json"),
        (b'{"a": 123456789012345678901234567890}', "number_out_of_range"),
        (b"\xff\xfe{}", "bad_encoding"),
        (b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
        (b"[" * 70 + b"]" * 70, "json_too_deep"),
        (b'{"a": ', "malformed_json"),
    ],
)
def test_strict_json_rejects_ambiguous_or_hostile_input(data: bytes, code: str) -> None:
    with pytest.raises(MalformedError) as err:
        parse_json_strict(data)
    assert err.value.code == code
    assert err.value.detail


def test_oversized_envelope_is_rejected_before_parsing() -> None:
    with pytest.raises(MalformedError) as err:
        parse_envelope(b" " * 100, max_bytes=10)
    assert err.value.code == "too_large"


def test_non_base64_payload_is_rejected(key: Ed25519PrivateKey) -> None:
    raw = {
        "payloadType": PAYLOAD_TYPE,
        "payload": "***",
        "signatures": [{"keyid": "k", "sig": "AA=="}],
    }
    envelope = parse_envelope(json.dumps(raw).encode())
    with pytest.raises(MalformedError) as err:
        verify_envelope(envelope, {"k": key.public_key()})
    assert err.value.code == "bad_base64"


# --------------------------------------------------------------------------- properties

json_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=8), st.randoms())
@settings(max_examples=150, deadline=None)
def test_key_order_never_changes_canonical_bytes(value: dict[str, object], rnd: object) -> None:
    items = list(value.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert canonical_bytes(dict(items)) == canonical_bytes(value)


@given(json_values)
@settings(max_examples=150, deadline=None)
def test_canonical_bytes_are_a_fixed_point_and_parse_back(value: object) -> None:
    once = canonical_bytes(value)
    assert parse_json_strict(once) == value
    assert canonical_bytes(parse_json_strict(once)) == once


@given(st.text())
@settings(max_examples=150, deadline=None)
def test_unicode_escaping_style_never_changes_canonical_bytes(text: str) -> None:
    ascii_escaped = json.dumps({"s": text}, ensure_ascii=True)
    raw_utf8 = json.dumps({"s": text}, ensure_ascii=False)
    try:
        a = canonical_bytes(json.loads(ascii_escaped))
    except EvidenceError:
        return  # lone surrogates cannot be encoded as UTF-8: rejected either way
    assert a == canonical_bytes(json.loads(raw_utf8))


_SIGNING_KEY = Ed25519PrivateKey.generate()
_SIGNING_KID = compute_key_id(_SIGNING_KEY.public_key())


@given(st.text(max_size=40), st.integers(1, 2**40))
@settings(max_examples=60, deadline=None)
def test_sign_then_verify_round_trips(hostname: str, seq: int) -> None:
    snapshot = make_snapshot(_SIGNING_KEY, host=HostInfo(hostname=hostname), seq=seq, prev="0" * 64)
    envelope = sign_envelope(statement_bytes(snapshot), _SIGNING_KEY, _SIGNING_KID)
    _, _, _, back = open_envelope(envelope.to_bytes(), {_SIGNING_KID: _SIGNING_KEY.public_key()})
    assert back == snapshot


_PAYLOAD = statement_bytes(make_snapshot(_SIGNING_KEY))
_ENVELOPE = sign_envelope(_PAYLOAD, _SIGNING_KEY, _SIGNING_KID)
_SIG = base64.b64decode(_ENVELOPE.signatures[0].sig)


@given(st.integers(0, len(_PAYLOAD) - 1), st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_flipping_any_payload_byte_fails_verification(index: int, flip: int) -> None:
    tampered = bytearray(_PAYLOAD)
    tampered[index] ^= flip
    envelope = _ENVELOPE.model_copy(update={"payload": base64.b64encode(bytes(tampered)).decode()})
    with pytest.raises(SignatureError):
        verify_envelope(envelope, {_SIGNING_KID: _SIGNING_KEY.public_key()})


@given(st.integers(0, len(_SIG) - 1), st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_flipping_any_signature_byte_fails_verification(index: int, flip: int) -> None:
    tampered = bytearray(_SIG)
    tampered[index] ^= flip
    sig = _ENVELOPE.signatures[0].model_copy(
        update={"sig": base64.b64encode(bytes(tampered)).decode()}
    )
    envelope = _ENVELOPE.model_copy(update={"signatures": [sig]})
    with pytest.raises(SignatureError):
        verify_envelope(envelope, {_SIGNING_KID: _SIGNING_KEY.public_key()})


json_any = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=25,
)


@given(json_any)
@settings(max_examples=400, deadline=None)
def test_fast_canonical_encoder_matches_the_rfc8785_reference(value: object) -> None:
    import rfc8785

    try:
        reference = bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        with pytest.raises(EvidenceError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == reference


def test_keys_beyond_the_bmp_sort_by_utf16_even_on_the_fast_path() -> None:
    # U+1F600 sorts before U+FB33 in UTF-16 (surrogate pair D83D...) but after it by code point.
    value = {"\ufb33": 1, "\U0001f600": 2}
    assert list(json.loads(canonical_bytes(value))) == ["\U0001f600", "\ufb33"]


def _reference_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


_JSON_TREES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300)
@given(_JSON_TREES)
def test_depth_check_matches_a_plain_recursive_definition(value: object) -> None:
    from contract.jsonstrict import _depth

    expected = _reference_depth(value)
    assert _depth(value, 1000) == expected
    # With a limit below the depth, it stops early but still reports "over the limit".
    if expected > 1:
        assert _depth(value, expected - 1) > expected - 1


def test_parse_statement_reuses_the_callers_strict_parse(key: Ed25519PrivateKey) -> None:
    from contract import parse_statement, parse_strict, statement_bytes

    payload = statement_bytes(make_snapshot(key))
    parsed = parse_strict(payload)
    assert parsed.stdlib_jcs
    assert parse_statement(payload, parsed=parsed) == parse_statement(payload)


@given(json_any)
@settings(max_examples=400, deadline=None)
def test_what_the_parser_notes_agrees_with_the_fast_path_walk(value: object) -> None:
    """``StrictJSON.stdlib_jcs`` (noted while parsing) is exactly :func:`_fast_path_ok` of the
    parsed value, and canonical bytes made with it match the reference encoder."""
    import rfc8785

    from contract import parse_strict
    from contract.jsonstrict import _fast_path_ok

    try:
        parsed = parse_strict(json.dumps(value).encode())
    except EvidenceError:  # an integer beyond 2^53: refused by the parse itself
        return
    assert parsed.stdlib_jcs == _fast_path_ok(parsed.value)
    try:
        reference = bytes(rfc8785.dumps(parsed.value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        with pytest.raises(EvidenceError):
            canonical_bytes(parsed.value, stdlib_jcs=parsed.stdlib_jcs)
        return
    assert canonical_bytes(parsed.value, stdlib_jcs=parsed.stdlib_jcs) == reference


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        (b'{"a":[1,"x",null,true]}', True),
        (b'{"a":1.5}', False),
        (b'{"a":1.0}', False),
        (b"[1e2]", False),
        ('{"caf\u00e9":1}'.encode(), True),
        ('{"\ufb33":1}'.encode(), False),  # conservative: any key character from U+D800 up
        ('{"\U0001f600":1}'.encode(), False),
        (b'{"x":{"\\ud83d\\ude00":1}}', False),  # escaped, in a nested object
    ],
)
def test_the_parser_notes_floats_and_keys_beyond_the_bmp(text: bytes, plain: bool) -> None:
    from contract import parse_strict

    assert parse_strict(text).stdlib_jcs is plain


def test_fields_added_to_v1_are_left_out_when_there_is_nothing_to_report() -> None:
    """An agent with nothing new to say writes the bytes an older verifier accepts (rolling
    upgrades: agents first); one that counted files says so."""
    from contract import Encryption, StorageRoot

    quiet = StorageRoot(
        root="/srv/models",
        encryption=Encryption(status="unknown"),
        file_count=0,
        total_bytes=0,
        files=[],
    )
    assert not any(k.startswith("unidentified") for k in quiet.model_dump(mode="json"))
    counted = quiet.model_copy(update={"unidentified_count": 0, "unidentified_bytes": 0})
    dumped = counted.model_dump(mode="json")
    assert dumped["unidentified_count"] == 0 and dumped["unidentified_bytes"] == 0
