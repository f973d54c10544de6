"""Snapshot v1 envelopes from agents before unidentified files were counted stay verifiable, with
their meaning: "not reported" (None), never "none found" (0). docs/decisions.md, 18."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE_V1,
    canonical_bytes,
    envelope_digest,
    open_envelope,
    sign_envelope,
)
from contract.keys import key_id

NEW_ROOT_FIELDS = (
    "unidentified_count",
    "unidentified_bytes",
    "unidentified_listed_from",
    "unidentified",
)


def old_agent_statement(key_id: str) -> dict[str, Any]:
    """The statement an agent from before this change produced: no unidentified-file fields."""
    root = {
        "root": "/srv/models",
        "mount_point": None,
        "device": None,
        "filesystem": None,
        "encryption": {"status": "unknown", "method": None, "determined_by": None, "reason": "x"},
        "file_count": 1,
        "total_bytes": 10,
        "files": [
            {
                "path": "/srv/models/m.safetensors",
                "path_b64": None,
                "size": 10,
                "mtime": "2026-01-01T00:00:00.000000Z",
                "mode": "0640",
                "uid": 0,
                "gid": 0,
                "owner": "root",
                "sha256": "a" * 64,
                "format": "safetensors",
                "header": None,
                "error": None,
            }
        ],
    }
    predicate = {
        "agent": {"key_id": key_id, "version": "0.1.0"},
        "site_id": "site-1",
        "host": {"hostname": "h"},
        "seq": 1,
        "prev": None,
        "nonce": None,
        "collected_at": "2026-01-01T00:00:00.000000Z",
        "accelerators": [],
        "storage": [root],
        "posture": {},
        "errors": [],
    }
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "/srv/models/m.safetensors", "digest": {"sha256": "a" * 64}}],
        "predicateType": PREDICATE_TYPE_V1,
        "predicate": predicate,
    }


def test_an_envelope_without_the_new_fields_verifies_and_says_not_reported() -> None:
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    payload = canonical_bytes(old_agent_statement(kid))
    envelope = sign_envelope(payload, key, kid)
    assert envelope.payloadType == PAYLOAD_TYPE
    opened, _, _, snapshot = open_envelope(envelope.to_bytes(), {kid: key.public_key()})
    assert envelope_digest(opened) == envelope_digest(envelope)  # the same bytes, same digest
    [root] = snapshot.storage
    assert root.unidentified_count is None and root.unidentified_bytes is None
    assert root.unidentified_listed_from is None and root.unidentified == []
    assert [f.path for f in root.files] == ["/srv/models/m.safetensors"]


def test_the_verifier_judges_an_old_envelope_as_before() -> None:
    from datetime import date

    from server.policy.engine import host_variables, load_policy_set
    from server.policy.facts import HostContext

    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    envelope = sign_envelope(canonical_bytes(old_agent_statement(kid)), key, kid)
    _, _, _, snapshot = open_envelope(envelope.to_bytes(), {kid: key.public_key()})
    policy = load_policy_set(Path(__file__).resolve().parents[2] / "policies")
    pack = policy.packs[0]
    facts = host_variables(pack, policy, snapshot, HostContext("site-1", "DE"), date(2026, 2, 1))
    assert facts["unidentified_files"] == []
    assert facts["host"]["unidentified_file_count"] == 0
    assert [f["path"] for f in facts["files"]] == ["/srv/models/m.safetensors"]
    for name in NEW_ROOT_FIELDS:
        assert name not in old_agent_statement(kid)["predicate"]["storage"][0]
