"""The transparency log: leaves, tree nodes and signed checkpoints (server/store/log_models.py).

Snapshots accepted before this revision have no leaf; the upgrade appends one for each, in the
order they were received, so the log covers every accepted snapshot from its first checkpoint.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    entries = op.create_table(
        "log_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("idx", sa.BigInteger(), nullable=True, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("envelope_digest", sa.String(64), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_log_entries_envelope", "log_entries", ["envelope_digest"])
    op.create_table(
        "log_nodes",
        sa.Column("level", sa.SmallInteger(), primary_key=True),
        sa.Column("idx", sa.BigInteger(), primary_key=True),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sqlite_with_rowid=False,  # SQLite: rows in the primary key's b-tree, half the pages
    )
    op.create_table(
        "log_checkpoints",
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    _backfill(op.get_bind(), entries)


def _backfill(conn: sa.Connection, entries: sa.Table) -> None:
    """A leaf for every snapshot already accepted (the record of server/log/entries.py, kept
    here as it is today: a migration never changes with the code)."""
    rows = conn.execute(
        sa.text(
            "SELECT digest, key_id, site_id, seq, result, received_at FROM snapshots "
            "ORDER BY received_at, digest"
        )
    )
    batch = []
    for digest, key_id, site_id, seq, result, received in rows:
        received_at = datetime.fromisoformat(received) if isinstance(received, str) else received
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=UTC)
        record = {
            "v": 1,
            "kind": "accepted",
            "envelope": digest,
            "host": key_id,
            "site": site_id,
            "seq": int(seq),
            "result": hashlib.sha256(result.encode("utf-8")).hexdigest(),
            "at": received_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        created = received_at.replace(tzinfo=None) if conn.dialect.name == "sqlite" else received_at
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")
        batch.append(
            {"kind": "accepted", "envelope_digest": digest, "data": data, "created_at": created}
        )
        if len(batch) >= 1000:
            conn.execute(entries.insert(), batch)
            batch = []
    if batch:
        conn.execute(entries.insert(), batch)


def downgrade() -> None:
    op.drop_table("log_checkpoints")
    op.drop_table("log_nodes")
    op.drop_index("ix_log_entries_envelope", table_name="log_entries")
    op.drop_table("log_entries")
