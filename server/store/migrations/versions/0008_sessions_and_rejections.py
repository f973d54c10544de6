"""Dashboard sessions held by the verifier, so that signing out (or revoking the API key) ends a
session at once: before, the cookie was a stateless MAC valid until it expired. And repeated
signed rejections counted in one row each (``repeated_rejections``) instead of one audit row per
resend.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("api_key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_dashboard_sessions_api_key_id", "dashboard_sessions", ["api_key_id"])
    op.create_table(
        "repeated_rejections",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_audited", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_repeated_rejections_key_id", "repeated_rejections", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_repeated_rejections_key_id", "repeated_rejections")
    op.drop_table("repeated_rejections")
    op.drop_index("ix_dashboard_sessions_api_key_id", "dashboard_sessions")
    op.drop_table("dashboard_sessions")
