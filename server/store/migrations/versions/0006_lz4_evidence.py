"""lz4 for the evidence columns on PostgreSQL: ``snapshots.envelope``, ``result`` and ``findings``.

A snapshot's raw envelope (~9 KB for an 8-GPU host) is compressed by TOAST when it is stored.
PostgreSQL's default, pglz, cost ~195 µs of the database's CPU per envelope on this machine; lz4
~40-47 µs, for 3% more bytes (4,674 against 4,546 per envelope). Rows stored before keep their
compression (both read the same). Needs PostgreSQL 14 or later built with lz4 (Debian's and the
official images are); where it is not, the columns keep the default and the upgrade logs a
warning saying why. SQLite stores these columns as they are: nothing to do.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("veu.migrate")
_COLUMNS = ("envelope", "result", "findings")


def compress(conn: sa.Connection, method: str) -> str | None:
    """Set the evidence columns' compression (``lz4``, ``pglz`` or ``default``); None if done,
    else why not (nothing changed: a savepoint keeps the migration's transaction usable)."""
    if conn.dialect.name != "postgresql":
        return None
    try:
        with conn.begin_nested():
            for column in _COLUMNS:
                conn.execute(
                    sa.text(f"ALTER TABLE snapshots ALTER COLUMN {column} SET COMPRESSION {method}")
                )
    except sa.exc.DBAPIError as exc:
        return str(exc.orig).strip()
    return None


def _set(method: str) -> None:
    why = compress(op.get_bind(), method)
    if why is not None:
        log.warning("snapshots keep PostgreSQL's default compression: %s", why)


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("default")
