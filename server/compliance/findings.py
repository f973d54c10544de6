"""Findings history: the open findings of a scope kept in step with what the last judgement said
(a finding opens when first seen, stays open while seen, closes when no longer seen).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.assurance import is_level, parse_level
from server.findings import Finding
from server.store.compliance_models import (
    FindingRow,
)
from server.store.ingest import db_text


def _key(f: Finding) -> tuple[str, str]:
    return (db_text(f.condition_id, 200) or "", db_text(f.subject, 500) or "")


def sync_findings(
    session: Session,
    scope: str,
    scope_id: str,
    *,
    site_id: str | None,
    org_id: str | None,
    findings: Sequence[Finding],
    now: datetime,
) -> None:
    """Open new findings, refresh those still present, close those gone (with timestamps)."""
    current = {_key(f): f for f in findings if f.severity != "info"}
    open_rows = session.scalars(
        select(FindingRow).where(
            FindingRow.scope == scope, FindingRow.scope_id == scope_id, FindingRow.is_open.is_(True)
        )
    ).all()
    seen: set[tuple[str, str]] = set()
    for row in open_rows:
        key = (row.condition_id, row.subject)
        f = current.get(key)
        if f is None or key in seen:
            row.is_open = False
            row.closed_at = now
            continue
        seen.add(key)
        row.last_seen_at = now
        message, seen_text = db_text(f.message, 4000) or "", db_text(f.seen, 4000)
        if row.pack_status != f.pack_status or row.pack_version != f.pack_version:
            row.pack_status, row.pack_version = f.pack_status, f.pack_version
        if (row.severity, row.message, row.seen, row.assurance) != (
            f.severity,
            message,
            seen_text,
            f.level,
        ):
            row.severity, row.message, row.seen = f.severity, message, seen_text
            row.expected = db_text(f.expected, 4000)
            row.assurance = f.level
    for key, f in current.items():
        if key in seen:
            continue
        session.add(
            FindingRow(
                scope=scope,
                scope_id=scope_id,
                site_id=site_id,
                org_id=org_id,
                condition_id=db_text(f.condition_id, 200) or "",
                subject=db_text(f.subject, 500) or "",
                severity=f.severity,
                message=db_text(f.message, 4000) or "",
                expected=db_text(f.expected, 4000),
                seen=db_text(f.seen, 4000),
                citation=db_text(f.citation, 1000),
                confidence=",".join(f.confidence),
                pack_version=db_text(f.pack_version, 40) or "",
                pack_status=db_text(f.pack_status, 32) or "",
                opened_at=now,
                last_seen_at=now,
                closed_at=None,
                is_open=True,
                assurance=f.level,
            )
        )


def finding_of(row: FindingRow) -> Finding:
    return Finding(
        condition_id=row.condition_id,
        severity=row.severity,  # type: ignore[arg-type]
        subject=row.subject,
        message=row.message,
        expected=row.expected,
        seen=row.seen,
        citation=row.citation,
        confidence=tuple(c for c in row.confidence.split(",") if c),
        pack_id=row.condition_id.split("/", 1)[0] if row.pack_status else "",
        pack_version=row.pack_version,
        pack_status=row.pack_status,
        level=parse_level(row.assurance) if is_level(row.assurance) else None,
    )


def findings_key(findings: Sequence[Finding]) -> str:
    """Names a set of open findings as :func:`sync_findings` would store them."""
    rows = sorted(
        (
            *_key(f),
            f.severity,
            db_text(f.message, 4000) or "",
            db_text(f.seen, 4000) or "",
            db_text(f.expected, 4000) or "",
            f.pack_status,
            f.pack_version,
            f.level or "",
        )
        for f in findings
        if f.severity != "info"
    )
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()
