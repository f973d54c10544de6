"""What one leaf of the log says: a small canonical record (RFC 8785 JCS bytes), as Sigsum
keeps bulk data out of its log. The evidence itself stays in the database; the leaf commits to
it by digest, so a relying party holding an envelope and its result can find and check its leaf.

``accepted``: ``{"v":1,"kind":"accepted","envelope":<sha256 of the envelope>,"host":<key id>,
"site":<site id>,"seq":<chain seq>,"result":<sha256 of the signed result JWT>,"at":<accepted
time, RFC 3339 UTC>}``.

``rejected`` (signed evidence the verifier refused as a fork or a replay: a host's own key
vouched for two histories, or for an old one): ``{"v":1,"kind":"rejected","code":<rejection
code>,"envelope":<digest>,"host":<key id>,"at":<time>}``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from contract.jsonstrict import canonical_bytes
from contract.timestamps import format_timestamp

__all__ = ["LOGGED_REJECTIONS", "accepted_entry", "entry_row", "rejected_entry"]

#: Rejections of authenticated evidence that get a leaf: proof that a host's key signed a
#: history the verifier refused. Other refusals are in the audit log only.
LOGGED_REJECTIONS = frozenset({"fork", "replay", "rollback"})


def accepted_entry(
    *, digest: str, key_id: str, site_id: str, seq: int, result: str, at: datetime
) -> bytes:
    return canonical_bytes(
        {
            "v": 1,
            "kind": "accepted",
            "envelope": digest,
            "host": key_id,
            "site": site_id,
            "seq": seq,
            "result": hashlib.sha256(result.encode("utf-8")).hexdigest(),
            "at": format_timestamp(at),
        }
    )


def rejected_entry(*, code: str, digest: str, key_id: str, at: datetime) -> bytes:
    return canonical_bytes(
        {
            "v": 1,
            "kind": "rejected",
            "code": code,
            "envelope": digest,
            "host": key_id,
            "at": format_timestamp(at),
        }
    )


def entry_row(kind: str, digest: str | None, data: bytes, at: datetime) -> dict[str, Any]:
    """The ``log_entries`` row of a leaf (the store inserts it in the caller's transaction)."""
    return {"kind": kind, "envelope_digest": digest, "data": data, "created_at": at}
