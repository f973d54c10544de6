"""The verifier's tables (SQLAlchemy 2 typed models). Migrations in ``migrations/`` mirror these.

Evidence is kept verbatim (``Snapshot.envelope``) so it can be re-verified years later; every other
evidence column is derived from it. Secrets (enrollment tokens, API keys) are stored as SHA-256.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    veu: Mapped[str] = mapped_column(String(16))  # universal | national
    hq_country: Mapped[str] = mapped_column(String(2))
    parent_hq_country: Mapped[str | None] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_sites_org_name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    authorized_tpp: Mapped[float] = mapped_column(Float)
    authorization_ref: Mapped[str | None] = mapped_column(String(200))
    test_site: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Host(Base):
    """An enrolled host. Its id is its key id (SHA-256 of the raw Ed25519 public key)."""

    __tablename__ = "hosts"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | active | revoked
    machine_id: Mapped[str | None] = mapped_column(String(200))
    hostname: Mapped[str | None] = mapped_column(String(255))
    facts: Mapped[str] = mapped_column(Text, default="{}")  # JSON as sent at enrollment
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The level the host key lets claims reach (contract.assurance): ``self-reported`` for a
    #: key in a file or one whose TPM residency was not proven, ``tpm-bound-key`` after
    #: credential activation (migration 0008).
    key_level: Mapped[str] = mapped_column(
        String(24), default="self-reported", server_default="self-reported"
    )
    #: After credential activation: JSON {ek_public, ak_public (base64), ak_name (hex),
    #: ek_certificate_sha256}; null otherwise.
    tpm: Mapped[str | None] = mapped_column(Text)


class ChainHead(Base):
    """The last accepted snapshot of a host; advanced only by a conditional update."""

    __tablename__ = "chain_heads"
    key_id: Mapped[str] = mapped_column(ForeignKey("hosts.key_id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    digest: Mapped[str | None] = mapped_column(String(64))
    #: Digest of the current inventory rows: an unchanged inventory is not rewritten.
    inventory_digest: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EnrollToken(Base):
    __tablename__ = "enroll_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    used_by: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | auditor
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DashboardSession(Base):
    """A dashboard sign-in: the cookie's secret is stored as SHA-256 only; signing out or revoking
    the API key ends it."""

    __tablename__ = "dashboard_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RepeatedRejection(Base):
    """Signed evidence refused more than once: the first refusal is a security event in the
    audit log; repeats only count here. ``key`` is the envelope digest, or ``revoked:<key id>``
    for a revoked key's attempts (one audit row per key per hour)."""

    __tablename__ = "repeated_rejections"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_audited: Mapped[datetime] = mapped_column(UTCDateTime())
    count: Mapped[int] = mapped_column(BigInteger)


class Nonce(Base):
    __tablename__ = "nonces"
    __table_args__ = (Index("ix_nonces_key_pending", "key_id", "used", "expires_at"),)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("hosts.key_id"))
    origin: Mapped[str] = mapped_column(String(16))  # agent | request (admin attest-request)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (
        UniqueConstraint("key_id", "seq", name="uq_snapshots_key_seq"),
        Index("ix_snapshots_key_seq", "key_id", "seq"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("hosts.key_id"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    prev: Mapped[str | None] = mapped_column(String(64))
    nonce: Mapped[str | None] = mapped_column(String(64))
    collected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    findings: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of Finding.to_json
    result: Mapped[str] = mapped_column(Text)  # the signed result (JWT)
    size: Mapped[int] = mapped_column(Integer)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    #: Set when retention dropped the raw envelope (``envelope`` is then empty); see
    #: server/store/retention.py. Migration 0003 adds the column and an index on ``received_at``.
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class InventoryAccelerator(Base):
    """The current accelerators of a host, replaced by each accepted snapshot."""

    __tablename__ = "inventory_accelerators"
    __table_args__ = (
        Index("ix_inv_acc_uuid", "uuid"),
        Index("ix_inv_acc_serial", "serial"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("hosts.key_id"), index=True)
    uuid: Mapped[str | None] = mapped_column(String(100))
    serial: Mapped[str | None] = mapped_column(String(100))
    vendor: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    pci_device_id: Mapped[str | None] = mapped_column(String(16))
    pci_bus_id: Mapped[str | None] = mapped_column(String(32))
    memory_mib: Mapped[int | None] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(20))
    snapshot_digest: Mapped[str] = mapped_column(String(64))


class InventoryWeight(Base):
    """The current model-weight files of a host, by digest."""

    __tablename__ = "inventory_weights"
    __table_args__ = (Index("ix_inv_w_sha", "sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("hosts.key_id"), index=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(20))
    root: Mapped[str] = mapped_column(Text)
    encryption: Mapped[str] = mapped_column(String(16))
    snapshot_digest: Mapped[str] = mapped_column(String(64))


class AuditEntry(Base):
    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))  # RFC 3339, hashed as stored
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(300))
    details: Mapped[str] = mapped_column(Text)  # JCS JSON text
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row; appending locks it, so concurrent writers extend one chain, never two."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str | None] = mapped_column(String(64))


EVIDENCE_TABLES = (
    "organizations",
    "sites",
    "hosts",
    "chain_heads",
    "enroll_tokens",
    "api_keys",
    "nonces",
    "snapshots",
    "inventory_accelerators",
    "inventory_weights",
)
