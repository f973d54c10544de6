"""Database engine and sessions: SQLite (WAL) in the data directory by default, PostgreSQL by URL.

SQLite: WAL journal, ``busy_timeout`` 5 s, foreign keys on, ``synchronous=FULL`` (WAL with NORMAL
survives a process crash but may lose the last commits on power loss; the verifier answers 2xx only
after commit, so it pays for FULL). One server process per SQLite file.

PostgreSQL (psycopg 3): a small pool per process (``pool_size`` + ``max_overflow``, default 5 + 5).
A verifier worker runs each request in one short transaction, so N workers need about N x 10
connections at most; see docs/verifier.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from server.config import Settings


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping: it costs a round trip per checkout on the hot path. A connection that died
        # fails its request with a 5xx (agents retry) and is dropped from the pool.
        pool_recycle=1800,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def engine_for(settings: Settings) -> Engine:
    if settings.database_url is None:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    return make_engine(
        settings.resolved_database_url(),
        pool_size=settings.pool_size,
        max_overflow=settings.pool_max_overflow,
    )


class Database:
    """An engine, its session factory, and the write lock SQLite needs.

    SQLite allows one writer at a time; serialising writers inside the process avoids busy
    retries. PostgreSQL settles conflicts itself (row locks, unique constraints), so there the
    lock is a no-op.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @contextmanager
    def lookup(self) -> Iterator[Session]:
        """Reads outside any transaction (autocommit): no BEGIN/ROLLBACK round trips.

        For independent point reads whose result is re-checked by a later conditional write.
        On SQLite switching the mode costs more than it saves; there it is a plain read.
        """
        if self.is_sqlite:
            with self.read() as session:
                yield session
            return
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            with Session(bind=conn) as session:
                yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self.is_sqlite:
            with self._write_lock, self.sessions() as session, session.begin():
                yield session
        else:
            with self.sessions() as session, session.begin():
                yield session

    def dispose(self) -> None:
        self.engine.dispose()
