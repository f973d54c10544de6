"""Retention: ``snapshots.pruned_at`` marks a snapshot whose raw envelope was dropped by the
retention setting (row, digest, findings and signed result kept); indexes for the pruning scans.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_snapshots_received_at", "snapshots", ["received_at"])
    op.create_index("ix_findings_closed_at", "findings", ["closed_at"])


def downgrade() -> None:
    op.drop_index("ix_findings_closed_at", "findings")
    op.drop_index("ix_snapshots_received_at", "snapshots")
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("pruned_at")
