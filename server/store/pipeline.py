"""The ingest transaction's statements, run on the driver's connection and pipelined on PostgreSQL.

Why not plain SQLAlchemy here: a group commit runs about ten statements, and through
SQLAlchemy's execution layer each one waits for its answer before the next is sent (a round trip
each on PostgreSQL; psycopg pipelines an ``executemany`` internally but syncs at its end) and
builds an execution context and result object (~0.1 ms of Python each). psycopg 3's pipeline
mode sends several statements and waits once, which SQLAlchemy does not expose: its results need
each statement's answer at once. Measured in process (64 hosts, batches of 4 on PostgreSQL): the
writer's CPU per snapshot fell from 0.61-0.83 ms to 0.39-0.42 ms with the round trips from ten
to four (bench/RESULTS.md).

So the hot transaction keeps SQLAlchemy for what it is good at, and this module only runs what it
compiled: each statement is compiled once per dialect (and per set of inserted columns), with
SQLAlchemy's own bind processors applied to every row (so a UTC datetime is stored exactly as
the ORM stores it) and its literal values bound as SQLAlchemy binds them. Statements whose columns
have Python-side defaults are refused (SQLAlchemy computes those in its execution context, which
this skips). The statements run on the DBAPI connection of the session's transaction: they
commit or roll back with it.

On PostgreSQL, statements issued inside :meth:`Pipeline.batch` are sent together and answered at
the end of the block (a failure of any raises there, and the transaction is then aborted); their
cursors' ``rowcount`` and rows are read after the block. On SQLite (in-process, no round trips)
each runs at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Compiled:
    """One statement as its driver takes it."""

    sql: str
    #: Bind names in order, where the dialect's parameters are positional (SQLite's ``?``).
    positions: tuple[str, ...] | None
    #: Literal values of the statement (``WHERE id = 1``), bound as SQLAlchemy binds them.
    literals: Mapping[str, Any]
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]

    def bind(self, params: Row) -> dict[str, Any] | tuple[Any, ...]:
        row = {**self.literals, **params}
        for name, process in self.processors:
            row[name] = process(row[name])
        if self.positions is None:
            return row
        return tuple(row[name] for name in self.positions)


class UnsupportedStatement(TypeError):
    """A statement this runner cannot run faithfully (a programming error)."""


#: Keyed by the statement object: statements run here are module constants, built once. Should
#: a caller build them per call, the cache is cleared rather than grown without bound.
_CACHE_MAX = 1024
_cache: dict[tuple[Any, ...], Compiled] = {}
_cache_lock = threading.Lock()


def compiled(stmt: ClauseElement, dialect: Dialect, columns: Sequence[str] = ()) -> Compiled:
    """``stmt`` compiled for ``dialect`` (``columns``: the keys of an INSERT's rows), cached."""
    key = (stmt, dialect.name, tuple(columns))
    found = _cache.get(key)
    if found is not None:
        return found
    comp = stmt.compile(dialect=dialect, column_keys=list(columns) or None)
    assert isinstance(comp, SQLCompiler)
    if comp.insert_prefetch or comp.update_prefetch:
        names = [c.name for c in [*comp.insert_prefetch, *comp.update_prefetch]]
        raise UnsupportedStatement(
            f"columns {names} have Python-side defaults; give them values in the rows"
        )
    literals: dict[str, Any] = {}
    processors: list[tuple[str, Callable[[Any], Any]]] = []
    for bind, name in comp.bind_names.items():
        if not bind.required and name not in columns:
            literals[name] = bind.effective_value
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((name, process))
    result = Compiled(
        sql=str(comp),
        positions=tuple(comp.positiontup) if comp.positiontup else None,
        literals=literals,
        processors=tuple(processors),
    )
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = result
    return result


class Pipeline:
    """Statements in the transaction of ``session`` (whose pending ORM changes are flushed
    first, so they precede these as they would precede a ``session.execute``)."""

    def __init__(self, session: Session) -> None:
        session.flush()
        connection = session.connection()
        self.dialect = connection.dialect
        self.driver: Any = connection.connection.driver_connection
        self.pipelined = self.dialect.name == "postgresql"
        self._depth = 0
        #: The driver's IntegrityError (a unique constraint broke).
        self.IntegrityError: type[Exception] = self.dialect.loaded_dbapi.IntegrityError

    @contextmanager
    def batch(self) -> Iterator[None]:
        """On PostgreSQL, send the statements issued in the block together; wait once, at its
        end. A batch inside a batch joins it (psycopg's nested pipelines would sync twice)."""
        if not self.pipelined or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self.driver.pipeline():
                yield
        finally:
            self._depth = 0

    def execute(self, stmt: ClauseElement, params: Row | None = None) -> Any:
        """Run one statement; the driver's cursor (rows and ``rowcount`` after the batch)."""
        statement = compiled(stmt, self.dialect)
        cursor = self.driver.cursor()
        cursor.execute(statement.sql, statement.bind(params or {}))
        return cursor

    def executemany(self, stmt: ClauseElement, rows: Sequence[Row]) -> Any:
        """Run one statement for each row (an INSERT takes the columns of the first row: give
        every row the same keys); the cursor's ``rowcount`` sums the rows affected."""
        if not rows:
            raise ValueError("executemany needs at least one row")
        columns = tuple(rows[0]) if getattr(stmt, "is_insert", False) else ()
        statement = compiled(stmt, self.dialect, columns)
        cursor = self.driver.cursor()
        cursor.executemany(statement.sql, [statement.bind(row) for row in rows])
        return cursor
