"""Compliance judgement: host contributions, site/organization aggregates, findings history,
site authorizations, shipment ledger, model registry; indexes for the duplicate-identity check.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "host_state",
        sa.Column("key_id", sa.String(64), sa.ForeignKey("hosts.key_id"), primary_key=True),
        sa.Column("site_id", sa.String(40), sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("contribution", sa.Text(), nullable=False),
        sa.Column("collected_at", tz, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("snapshot_digest", sa.String(64), nullable=False),
        sa.Column("accelerators", sa.Integer(), nullable=False),
        sa.Column("tpp", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_host_state_site_collected", "host_state", ["site_id", "collected_at"])
    op.create_index("ix_host_state_org_id", "host_state", ["org_id"])
    op.create_table(
        "site_state",
        sa.Column("site_id", sa.String(40), sa.ForeignKey("sites.id"), primary_key=True),
        sa.Column("aggregate", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("policy_digest", sa.String(64), nullable=True),
        sa.Column("updated_at", tz, nullable=False),
    )
    op.create_table(
        "org_state",
        sa.Column("org_id", sa.String(40), sa.ForeignKey("organizations.id"), primary_key=True),
        sa.Column("aggregate", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("policy_digest", sa.String(64), nullable=True),
        sa.Column("updated_at", tz, nullable=False),
    )
    op.create_table(
        "site_authorizations",
        sa.Column("site_id", sa.String(40), sa.ForeignKey("sites.id"), primary_key=True),
        sa.Column("allowed_models", sa.Text(), nullable=True),
        sa.Column("may_store_controlled_weights", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("site_id", sa.String(40), nullable=True),
        sa.Column("org_id", sa.String(40), nullable=True),
        sa.Column("condition_id", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("expected", sa.Text(), nullable=True),
        sa.Column("seen", sa.Text(), nullable=True),
        sa.Column("citation", sa.Text(), nullable=True),
        sa.Column("confidence", sa.String(40), nullable=False),
        sa.Column("opened_at", tz, nullable=False),
        sa.Column("last_seen_at", tz, nullable=False),
        sa.Column("closed_at", tz, nullable=True),
        sa.Column("is_open", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_findings_scope_open", "findings", ["scope", "scope_id", "is_open"])
    op.create_index("ix_findings_site_open", "findings", ["site_id", "is_open"])
    op.create_index("ix_findings_org_id", "findings", ["org_id"])
    op.create_index("ix_findings_condition_id", "findings", ["condition_id"])
    op.create_index("ix_findings_severity", "findings", ["severity"])
    op.create_table(
        "shipments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("shipped_on", sa.Date(), nullable=False),
        sa.Column("site_id", sa.String(40), sa.ForeignKey("sites.id"), nullable=True),
        sa.Column("destination_country", sa.String(2), nullable=False),
        sa.Column("consignee", sa.String(200), nullable=False),
        sa.Column("license_exception", sa.String(16), nullable=False),
        sa.Column("end_user", sa.String(16), nullable=False),
        sa.Column("chip_model", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("tpp", sa.BigInteger(), nullable=False),
        sa.Column("created_at", tz, nullable=False),
    )
    op.create_index("ix_shipments_shipped_on", "shipments", ["shipped_on"])
    op.create_index("ix_shipments_site_id", "shipments", ["site_id"])
    op.create_index("ix_shipments_consignee", "shipments", ["consignee"])
    op.create_table(
        "shipment_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("shipment_id", sa.String(40), sa.ForeignKey("shipments.id"), nullable=False),
        sa.Column("site_id", sa.String(40), nullable=True),
        sa.Column("identity", sa.String(120), nullable=False),
    )
    op.create_index("ix_shipment_items_shipment_id", "shipment_items", ["shipment_id"])
    op.create_index("ix_shipment_items_site_id", "shipment_items", ["site_id"])
    op.create_index("ix_shipment_items_identity", "shipment_items", ["identity"])
    op.create_table(
        "models",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("training_ops", sa.Float(), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("derived_from", sa.String(200), nullable=True),
        sa.Column("derived_from_published", sa.Boolean(), nullable=False),
        sa.Column("added_training_ops", sa.Float(), nullable=True),
        sa.Column("less_capable_than_published", sa.Boolean(), nullable=False),
        sa.Column("created_at", tz, nullable=False),
    )
    op.create_table(
        "model_files",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(40), sa.ForeignKey("models.id"), nullable=False),
    )
    op.create_index("ix_model_files_model_id", "model_files", ["model_id"])
    op.create_index("ix_inventory_accelerators_uuid", "inventory_accelerators", ["uuid"])
    op.create_index("ix_inventory_accelerators_serial", "inventory_accelerators", ["serial"])


def downgrade() -> None:
    op.drop_index("ix_inventory_accelerators_serial", "inventory_accelerators")
    op.drop_index("ix_inventory_accelerators_uuid", "inventory_accelerators")
    for table in (
        "model_files",
        "models",
        "shipment_items",
        "shipments",
        "findings",
        "site_authorizations",
        "org_state",
        "site_state",
        "host_state",
    ):
        op.drop_table(table)
