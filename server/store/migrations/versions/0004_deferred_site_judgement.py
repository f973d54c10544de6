"""Deferred site judgement: a host's contribution is folded into its site's aggregate by the
settling step, not by ingest. ``host_state.applied`` is the contribution last folded in (so the
delta is exact however many snapshots arrived in between), ``pending`` marks rows not yet folded,
``findings_key`` names the host's open findings so an unchanged set costs one statement, and
``revoked`` marks a host whose contribution must leave the totals.

Existing rows were folded in by the old per-snapshot update: ``applied = contribution``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("host_state") as batch:
        batch.add_column(sa.Column("applied", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("findings_key", sa.String(64), nullable=True))
    op.execute("UPDATE host_state SET applied = contribution")
    # Partial: a queue flag is almost always false, so a full index on it has no selectivity
    # (SQLite's planner then scans every host of the site); the partial index holds only the
    # rows waiting to be settled.
    op.create_index(
        "ix_host_state_pending_site",
        "host_state",
        ["site_id"],
        sqlite_where=sa.text("pending = 1"),
        postgresql_where=sa.text("pending = true"),
    )


def downgrade() -> None:
    op.drop_index("ix_host_state_pending_site", "host_state")
    with op.batch_alter_table("host_state") as batch:
        batch.drop_column("findings_key")
        batch.drop_column("revoked")
        batch.drop_column("pending")
        batch.drop_column("applied")
