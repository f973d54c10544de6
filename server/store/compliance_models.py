"""Tables of the compliance judgement: per-host contributions, site and organization aggregates,
findings with their open/close history, the shipment ledger and the model registry.

Aggregates are stored as JSON next to their site or organization and updated by deltas (see
:mod:`server.policy.aggregate`), so one new snapshot costs the same at any site size.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false, text

from server.store.models import Base, InventoryAccelerator, UTCDateTime


class HostState(Base):
    """What the latest accepted snapshot of a host contributes to its site and organization.

    Ingest writes ``contribution`` and sets ``pending``; settling (:func:`server.compliance.settle.
    settle_site`) folds ``contribution - applied`` into the site aggregate under the site's lock
    and copies ``contribution`` to ``applied``. A revoked host is ``revoked`` + ``pending`` until
    settling takes ``applied`` out of the totals and deletes the row.
    """

    __tablename__ = "host_state"
    __table_args__ = (
        Index("ix_host_state_site_collected", "site_id", "collected_at"),
        # Partial (only rows waiting to be settled): see migration 0004.
        Index(
            "ix_host_state_pending_site",
            "site_id",
            sqlite_where=text("pending = 1"),
            postgresql_where=text("pending = true"),
        ),
    )

    key_id: Mapped[str] = mapped_column(ForeignKey("hosts.key_id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    contribution: Mapped[str] = mapped_column(Text)  # HostContribution JSON
    collected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    snapshot_digest: Mapped[str] = mapped_column(String(64))
    accelerators: Mapped[int] = mapped_column(Integer, default=0)
    tpp: Mapped[int] = mapped_column(BigInteger, default=0)
    applied: Mapped[str | None] = mapped_column(Text)  # HostContribution JSON in the site total
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    findings_key: Mapped[str | None] = mapped_column(String(64))  # digest of open host findings
    #: The level its latest snapshot reached (contract.assurance; null before migration 0011).
    assurance: Mapped[str | None] = mapped_column(String(24))
    #: The TPM reset and restart counters and clock of its last verified quote (null: none).
    quote_reset: Mapped[int | None] = mapped_column(BigInteger)
    quote_restart: Mapped[int | None] = mapped_column(BigInteger)
    quote_clock: Mapped[int | None] = mapped_column(BigInteger)


class SiteState(Base):
    __tablename__ = "site_state"

    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    aggregate: Mapped[str] = mapped_column(Text)  # SiteAggregate JSON
    status: Mapped[str] = mapped_column(String(16))
    policy_digest: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrgState(Base):
    __tablename__ = "org_state"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    aggregate: Mapped[str] = mapped_column(Text)  # OrgAggregate JSON
    status: Mapped[str] = mapped_column(String(16))
    policy_digest: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SiteAuthorization(Base):
    """Terms of a site's authorization beyond its authorized TPP."""

    __tablename__ = "site_authorizations"

    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    allowed_models: Mapped[str | None] = mapped_column(Text)  # JSON list of chip ids, null = any
    may_store_controlled_weights: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The weakest assurance level a host at the site must reach (null: the pack's alone).
    minimum_assurance: Mapped[str | None] = mapped_column(String(24))


class FindingRow(Base):
    """A finding while it is open, and afterwards its history (``closed_at``)."""

    __tablename__ = "findings"
    __table_args__ = (
        Index("ix_findings_scope_open", "scope", "scope_id", "is_open"),
        Index("ix_findings_site_open", "site_id", "is_open"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))  # host | site | organization
    scope_id: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str | None] = mapped_column(String(40))
    org_id: Mapped[str | None] = mapped_column(String(40), index=True)
    condition_id: Mapped[str] = mapped_column(String(200), index=True)
    subject: Mapped[str] = mapped_column(String(500))
    severity: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(Text)
    expected: Mapped[str | None] = mapped_column(Text)
    seen: Mapped[str | None] = mapped_column(Text)
    citation: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[str] = mapped_column(String(40), default="")  # e.g. "E,S"
    #: The pack that judged it ("" for appraisal findings): its version and status.
    pack_version: Mapped[str] = mapped_column(String(40), default="", server_default="")
    pack_status: Mapped[str] = mapped_column(String(32), default="", server_default="")
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The level of the claim the finding rests on (null: none, or before migration 0011).
    assurance: Mapped[str | None] = mapped_column(String(24))


class Shipment(Base):
    __tablename__ = "shipments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    shipped_on: Mapped[date] = mapped_column(Date, index=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"), index=True)
    destination_country: Mapped[str] = mapped_column(String(2))
    consignee: Mapped[str] = mapped_column(String(200), index=True)
    license_exception: Mapped[str] = mapped_column(String(16))  # VEU | LPP | license | ...
    end_user: Mapped[str] = mapped_column(String(16))  # veu | non-veu
    chip_model: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    tpp: Mapped[int] = mapped_column(BigInteger)  # total TPP of the shipment
    #: The U.S. third-party lab test record of the shipment's chips (91 FR 1684), if any.
    lab_test: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ShipmentItem(Base):
    __tablename__ = "shipment_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipments.id"), index=True)
    site_id: Mapped[str | None] = mapped_column(String(40), index=True)
    identity: Mapped[str] = mapped_column(String(120), index=True)  # "uuid:..." / "serial:..."


class RegisteredModel(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    training_ops: Mapped[float | None] = mapped_column(Float)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    derived_from: Mapped[str | None] = mapped_column(String(200))
    derived_from_published: Mapped[bool] = mapped_column(Boolean, default=False)
    added_training_ops: Mapped[float | None] = mapped_column(Float)
    less_capable_than_published: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ModelFile(Base):
    __tablename__ = "model_files"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)


class RegistryState(Base):
    """One row: a number that grows whenever the model registry changes, read with every
    snapshot's lookup so each process may keep the registry's answers in memory until then
    (server.compliance.registry.RegistryCache). Whatever changes ``models`` or ``model_files``
    bumps it in the same transaction (:func:`bump_registry`)."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


# The duplicate-identity check looks accelerators up by UUID and serial across the fleet.
Index("ix_inventory_accelerators_uuid", InventoryAccelerator.uuid)
Index("ix_inventory_accelerators_serial", InventoryAccelerator.serial)


class PolicyState(Base):
    """One row (generation 0 until the first record): the pack set every verifier process
    judges by.

    ``veu-server serve`` records the packs it starts with, and a reload (``POST
    /v1/policy/reload``, ``SIGHUP``) records the packs it loaded: their digest, a generation that
    grows with each change, and the files themselves (JSON: path -> base64), so every process on
    every machine loads the very same bytes (server.compliance.policy_sync)."""

    __tablename__ = "policy_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    files: Mapped[str] = mapped_column(Text, nullable=False)
    recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)


class TpmReference(Base):
    """A known-good PCR value for the hosts of a site (``veu-server reference add``): a quote
    whose PCRs 0-7 each match one of the site's values reaches ``tpm-quoted``."""

    __tablename__ = "tpm_references"
    __table_args__ = (UniqueConstraint("site_id", "bank", "pcr", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    bank: Mapped[str] = mapped_column(String(8))
    pcr: Mapped[int] = mapped_column(Integer)
    value: Mapped[str] = mapped_column(String(128))  # lowercase hex
    #: The host whose verified quote it was recorded from.
    source_host: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
