"""The transparency log's tables (server/log/ owns what they mean; migration 0009 makes them).

- ``log_entries``: one row per leaf, appended in the ingest transaction; ``idx`` (its position
  in the tree) is NULL until the integrator gives it one, in ``id`` order.
- ``log_nodes``: every perfect node of the tree, ``(level, idx)`` = the hash of leaves
  ``[idx << level, (idx + 1) << level)``; level 0 holds the leaf hashes. About two rows a leaf;
  the tiles of C2SP tlog-tiles are the rows of levels 0, 8, 16, ...
- ``log_checkpoints``: every signed checkpoint, one per size (the primary key: a size is never
  signed twice).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.store.models import Base, UTCDateTime

#: SQLite makes an INTEGER PRIMARY KEY the rowid (auto-increment); PostgreSQL a bigint identity.
_ID = BigInteger().with_variant(Integer(), "sqlite")


class LogEntry(Base):
    __tablename__ = "log_entries"
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    idx: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    envelope_digest: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (Index("ix_log_entries_envelope", "envelope_digest"),)


class LogNode(Base):
    __tablename__ = "log_nodes"
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    #: SQLite: the rows live in the primary key's b-tree (no rowid table beside it).
    __table_args__ = ({"sqlite_with_rowid": False},)


class LogCheckpoint(Base):
    __tablename__ = "log_checkpoints"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary)
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
