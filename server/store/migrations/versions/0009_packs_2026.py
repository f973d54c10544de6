"""Several packs side by side: each finding records the version and status of the pack that
judged it (``in-force``, ``proposed``...), so a status can be shown with or without proposed
packs; and a shipment records the U.S. third-party lab test of its chips (91 FR 1684).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.add_column(
            sa.Column("pack_version", sa.String(40), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("pack_status", sa.String(32), nullable=False, server_default=""))
    with op.batch_alter_table("shipments") as batch:
        batch.add_column(sa.Column("lab_test", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shipments") as batch:
        batch.drop_column("lab_test")
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("pack_status")
        batch.drop_column("pack_version")
