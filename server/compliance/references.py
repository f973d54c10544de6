"""Reference values for TPM quotes: the known-good PCR values of a site's hosts, recorded from a
host the operator trusts (``veu-server reference add SITE --from-host HOST``) and read for each
quoted snapshot of a TPM host at that site.

Only a quote the verifier verified can be a reference: the host must be enrolled by credential
activation, and its latest accepted snapshot must carry a quote (rule 10 of server/appraise
verified it on ingest). PCRs 0-7 (firmware, boot loader, Secure Boot state) are recorded; each
PCR may have several known-good values (hosts of one site on two firmware versions).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract import SnapshotV2, parse_statement
from server.errors import NotFound, Refused
from server.store import audit
from server.store.compliance_models import TpmReference
from server.store.models import Host, Snapshot

#: The PCRs a reference covers (and a quote must match to reach tpm-quoted).
REFERENCE_PCRS = tuple(range(8))


def site_references(session: Session, site_id: str) -> dict[int, frozenset[bytes]]:
    """The site's known-good SHA-256 PCR values, per PCR (empty: none recorded)."""
    found: dict[int, set[bytes]] = {}
    rows = session.execute(
        select(TpmReference.pcr, TpmReference.value).where(
            TpmReference.site_id == site_id, TpmReference.bank == "sha256"
        )
    )
    for pcr, value in rows:
        try:
            found.setdefault(int(pcr), set()).add(bytes.fromhex(value))
        except ValueError:
            continue
    return {pcr: frozenset(values) for pcr, values in found.items()}


def add_from_host(
    session: Session, site_id: str, key_id: str, *, now: datetime, actor: str
) -> list[dict[str, Any]]:
    """Record the PCRs 0-7 of ``key_id``'s latest verified quote as known-good for the site."""
    host = session.get(Host, key_id)
    if host is None or host.site_id != site_id:
        raise NotFound("not_found", f"no host {key_id[:64]!r} at this site")
    if host.key_level != "tpm-bound-key":
        raise Refused(
            "not_tpm_host",
            "the host was not enrolled by credential activation: its quotes are unverified",
        )
    latest = session.scalar(
        select(Snapshot).where(Snapshot.key_id == key_id).order_by(Snapshot.seq.desc()).limit(1)
    )
    quote = None
    if latest is not None:
        try:
            payload = base64.b64decode(json.loads(latest.envelope)["payload"])
            snapshot = parse_statement(payload)[1]
        except (ValueError, KeyError, binascii.Error):
            snapshot = None
        if isinstance(snapshot, SnapshotV2) and snapshot.evidence and snapshot.evidence.tpm:
            quote = snapshot.evidence.tpm.quote
    if quote is None:
        raise Refused("no_quote", "the host's latest accepted snapshot carries no TPM quote")
    known = {
        (r.pcr, r.value)
        for r in session.scalars(
            select(TpmReference).where(
                TpmReference.site_id == site_id, TpmReference.bank == quote.bank
            )
        )
    }
    added = []
    for pcr in REFERENCE_PCRS:
        value = quote.pcrs.get(str(pcr))
        if value is None or (pcr, value) in known:
            continue
        session.add(
            TpmReference(
                site_id=site_id, bank=quote.bank, pcr=pcr, value=value, source_host=key_id,
                added_at=now,
            )
        )  # fmt: skip
        added.append({"pcr": pcr, "bank": quote.bank, "value": value})
    audit.append(
        session,
        at=now,
        actor=actor,
        action="tpm.reference_added",
        subject=f"site:{site_id}",
        details={"host": key_id, "added": added},
    )
    return added
