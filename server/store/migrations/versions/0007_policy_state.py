"""Policy state: one row naming the pack set every verifier process judges by (its digest, a
generation and the files), so a reload on one process reaches every worker
(server.compliance.policy_sync).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "policy_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
    )
    # Generation 0: nothing recorded yet. The row exists from the start so that the first two
    # records at once (two machines starting) queue on its lock instead of racing to insert it.
    op.bulk_insert(table, [{"id": 1, "generation": 0, "digest": "", "files": "{}", "actor": ""}])


def downgrade() -> None:
    op.drop_table("policy_state")
