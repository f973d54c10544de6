"""The audit log is one hash chain; `verify_audit` names the first row that breaks it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from server.store import audit
from server.store.db import Database, make_engine
from server.store.migrate import upgrade
from server.store.models import AuditEntry

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Database:
    upgrade(db_url)
    return Database(make_engine(db_url))


def _fill(db: Database, n: int) -> None:
    for i in range(n):
        with db.write() as s:
            audit.append(
                s,
                at=NOW + timedelta(seconds=i),
                actor="cli",
                action="test.event",
                subject=f"thing:{i}",
                details={"i": i, "text": "naïve ☃"},
            )


def test_an_untouched_audit_chain_verifies(db: Database) -> None:
    _fill(db, 5)
    with db.read() as s:
        assert audit.verify_audit(s) is None


def test_each_row_links_to_the_hash_of_the_previous_row(db: Database) -> None:
    _fill(db, 3)
    with db.read() as s:
        rows = s.query(AuditEntry).order_by(AuditEntry.seq).all()
    assert rows[0].prev_hash is None
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]


def test_an_edited_row_is_named_as_the_first_bad_row(db: Database) -> None:
    _fill(db, 5)
    with db.write() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(subject="thing:forged"))
    with db.read() as s:
        broken = audit.verify_audit(s)
    assert broken is not None and broken.seq == 3


def test_a_deleted_row_is_detected(db: Database) -> None:
    _fill(db, 5)
    with db.write() as s:
        s.query(AuditEntry).filter(AuditEntry.seq == 2).delete()
    with db.read() as s:
        broken = audit.verify_audit(s)
    assert broken is not None and broken.seq == 2


def test_a_truncated_tail_is_detected(db: Database) -> None:
    _fill(db, 5)
    with db.write() as s:
        s.query(AuditEntry).filter(AuditEntry.seq == 5).delete()
    with db.read() as s:
        broken = audit.verify_audit(s)
    assert broken is not None and broken.seq == 5
