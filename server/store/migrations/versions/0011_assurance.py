"""Assurance levels: the level each host's latest snapshot reached (host_state.assurance), the
level of the claim each finding rests on (findings.assurance), the level a site's
authorization demands of its hosts (site_authorizations.minimum_assurance; null: no demand), and
what the host key proves (hosts.key_level, ``self-reported`` for every host enrolled before;
hosts.tpm, the TPM identity credential activation proved). Null: not known (rows written before
this migration). host_state.quote_reset / quote_restart / quote_clock: the TPM counters and clock
of the host's last verified quote, which the next must not go back on (null: no quote yet).
tpm_references: known-good PCR values per site (veu-server reference add).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tpm_references",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("site_id", sa.String(40), sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("bank", sa.String(8), nullable=False),
        sa.Column("pcr", sa.Integer(), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("source_host", sa.String(64), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site_id", "bank", "pcr", "value"),
    )
    op.create_index("ix_tpm_references_site_id", "tpm_references", ["site_id"])
    op.add_column(
        "hosts",
        sa.Column("key_level", sa.String(24), nullable=False, server_default="self-reported"),
    )
    op.add_column("hosts", sa.Column("tpm", sa.Text(), nullable=True))
    op.add_column("host_state", sa.Column("assurance", sa.String(24), nullable=True))
    for name in ("quote_reset", "quote_restart", "quote_clock"):
        op.add_column("host_state", sa.Column(name, sa.BigInteger(), nullable=True))
    op.add_column("findings", sa.Column("assurance", sa.String(24), nullable=True))
    op.add_column(
        "site_authorizations", sa.Column("minimum_assurance", sa.String(24), nullable=True)
    )


def downgrade() -> None:
    op.drop_index("ix_tpm_references_site_id", "tpm_references")
    op.drop_table("tpm_references")
    with op.batch_alter_table("site_authorizations") as batch:
        batch.drop_column("minimum_assurance")
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("assurance")
    with op.batch_alter_table("host_state") as batch:
        batch.drop_column("assurance")
        for name in ("quote_reset", "quote_restart", "quote_clock"):
            batch.drop_column(name)
    # Not a batch: SQLite would recreate hosts, which other tables' foreign keys name; its
    # ALTER TABLE DROP COLUMN (3.35+) and PostgreSQL's drop the columns in place.
    op.drop_column("hosts", "tpm")
    op.drop_column("hosts", "key_level")
