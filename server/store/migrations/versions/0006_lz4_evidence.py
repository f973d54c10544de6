"""lz4 for the evidence columns on PostgreSQL: ``snapshots.envelope``, ``result`` and ``findings``.

A snapshot's raw envelope (~9 KB for an 8-GPU host) is compressed by TOAST when it is stored.
PostgreSQL's default, pglz, cost ~195 µs of the database's CPU per envelope on this machine; lz4
~40-47 µs, for 3% more bytes (4,674 against 4,546 per envelope). Rows stored before keep their
compression (both read the same). Needs PostgreSQL 14 or later built with lz4 (Debian's and the
official images are); where it is not, the columns keep pglz and the migration says so in a
NOTICE. SQLite stores these columns as they are: nothing to do.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = ("envelope", "result", "findings")


def _set(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    alters = " ".join(
        f"ALTER TABLE snapshots ALTER COLUMN {column} SET COMPRESSION {method};"
        for column in _COLUMNS
    )
    # In a block of its own: a server without lz4 (or older than 14) keeps pglz, and says why.
    op.execute(
        f"""
        DO $$
        BEGIN
            {alters}
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'snapshots keep the default compression: %', SQLERRM;
        END $$
        """
    )


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("default")
