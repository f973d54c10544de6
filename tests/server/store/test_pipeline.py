"""server.store.pipeline: compiled statements on the driver's connection, pipelined on PostgreSQL
— and the ingest write's lost-race mapping on top of it. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)

from server.store import pipeline
from server.store.db import Database, make_engine
from server.store.ingest import AlreadyStored, HeadMoved, send_accepted, snapshot_races
from server.store.migrate import upgrade
from server.store.models import UTCDateTime
from server.store.pipeline import Pipeline, UnsupportedStatement
from server.store.sqllist import values_in
from tests.server.builders import HostKit
from tests.server.ingest.test_group_commit import _prepared

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_META = MetaData()
_PROBE = Table(
    "pipeline_probe",
    _META,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40)),
    Column("at", UTCDateTime()),
    Column("flag", Boolean),
)
_DEFAULTED = Table(
    "pipeline_probe",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40), default=lambda: "made up"),
)
_INSERT = insert(_PROBE)
_RENAME = update(_PROBE).where(_PROBE.c.id == bindparam("i")).values(name=bindparam("new"))
# Literal values ("x", True) are bound as SQLAlchemy binds them.
_FLAG_XS = update(_PROBE).where(_PROBE.c.name == "x").values(flag=True)
_OF = select(_PROBE.c.id, _PROBE.c.name, _PROBE.c.at, _PROBE.c.flag).where(
    values_in(_PROBE.c.name, "names")
)
_DROP = delete(_PROBE).where(_PROBE.c.id == bindparam("i"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    upgrade(db_url)
    database = Database(make_engine(db_url))
    _META.create_all(database.engine)
    yield database
    _META.drop_all(database.engine)
    database.dispose()


def _rows(db: Database) -> list[tuple[Any, ...]]:
    with db.read() as s:
        return [tuple(r) for r in s.execute(select(_PROBE).order_by(_PROBE.c.id))]


def test_rows_written_in_a_batch_read_back_as_the_orm_stores_them(db: Database) -> None:
    with db.write() as s:
        pipe = Pipeline(s)
        with pipe.batch():
            pipe.executemany(
                _INSERT,
                [
                    {"id": 1, "name": "x", "at": T0, "flag": False},
                    {"id": 2, "name": "y", "at": T0 + timedelta(hours=1), "flag": False},
                    {"id": 3, "name": "x", "at": T0.astimezone(), "flag": False},
                ],
            )
            flagged = pipe.execute(_FLAG_XS)
            renamed = pipe.executemany(_RENAME, [{"i": 2, "new": "z"}, {"i": 9, "new": "none"}])
            found = pipe.execute(_OF, {"names": ["x", "z"]})
        # Answers are read after the batch: rowcounts sum over the rows of an executemany.
        assert flagged.rowcount == 2 and renamed.rowcount == 1
        assert sorted(r[0] for r in found.fetchall()) == [1, 2, 3]
    assert _rows(db) == [
        (1, "x", T0, True),
        (2, "z", T0 + timedelta(hours=1), False),
        (3, "x", T0, True),  # a local-time datetime is stored as UTC
    ]


def test_a_batch_inside_a_batch_joins_it(db: Database) -> None:
    with db.write() as s:
        pipe = Pipeline(s)
        with pipe.batch():
            pipe.execute(_INSERT, {"id": 1, "name": "a", "at": T0, "flag": False})
            with pipe.batch():
                pipe.execute(_RENAME, {"i": 1, "new": "b"})
            pipe.execute(_RENAME, {"i": 1, "new": "c"})
        assert pipe._depth == 0
    assert [r[1] for r in _rows(db)] == ["c"]


def test_a_failure_in_a_batch_rolls_the_whole_transaction_back(db: Database) -> None:
    with db.write() as s:
        Pipeline(s).execute(_INSERT, {"id": 1, "name": "kept", "at": T0, "flag": False})
    with pytest.raises(Exception) as caught, db.write() as s:
        pipe = Pipeline(s)
        with pipe.batch():
            pipe.execute(_RENAME, {"i": 1, "new": "lost"})
            pipe.execute(_INSERT, {"id": 1, "name": "twice", "at": T0, "flag": False})
            pipe.execute(_DROP, {"i": 1})
    assert isinstance(caught.value, db.engine.dialect.loaded_dbapi.IntegrityError)
    assert _rows(db) == [(1, "kept", T0, False)]
    with db.write() as s:  # the connection went back to the pool usable
        Pipeline(s).execute(_RENAME, {"i": 1, "new": "after"})
    assert [r[1] for r in _rows(db)] == ["after"]


def test_pending_orm_changes_are_flushed_before_the_pipeline_runs(db: Database) -> None:
    from server.store.models import Organization

    orgs = Organization.__table__
    with db.write() as s:
        s.add(Organization(id="org_p", name="P", veu="national", hq_country="US", created_at=T0))
        pipe = Pipeline(s)
        with pipe.batch():
            # Read on the driver's connection: it sees only what was flushed to the database.
            found = pipe.execute(
                select(orgs.c.id).where(orgs.c.id == bindparam("o")),  # type: ignore[attr-defined]
                {"o": "org_p"},
            )
        assert [tuple(r) for r in found.fetchall()] == [("org_p",)]


def test_statements_it_cannot_run_faithfully_are_refused(db: Database) -> None:
    with db.write() as s:
        pipe = Pipeline(s)
        with pytest.raises(UnsupportedStatement, match="Python-side defaults"):
            pipe.executemany(insert(_DEFAULTED), [{"id": 1}])
        with pytest.raises(ValueError, match="at least one row"):
            pipe.executemany(_INSERT, [])


def test_the_compile_cache_is_bounded(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_CACHE_MAX", 3)
    monkeypatch.setattr(pipeline, "_cache", {})
    with db.write() as s:
        pipe = Pipeline(s)
        for i in range(10):  # statements built per call (a misuse) do not grow it unbounded
            pipe.execute(update(_PROBE).where(_PROBE.c.id == i).values(flag=True))
        assert len(pipeline._cache) <= 3


# --------------------------------------------------------------------------- lost races


@pytest.fixture
def accepted(api: Any) -> Any:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    item = _prepared(api, kit.next_envelope())
    with api.services.db.write() as s:
        pipe = Pipeline(s)
        with snapshot_races(pipe), pipe.batch():
            sent = send_accepted(pipe, [item.write])
        sent.check()
    return item


def _send(api: Any, write: Any) -> None:
    with api.services.db.write() as s:
        pipe = Pipeline(s)
        with snapshot_races(pipe), pipe.batch():
            sent = send_accepted(pipe, [write])
        sent.check()


def _with_row(write: Any, **changes: Any) -> Any:
    return dataclasses.replace(write, snapshot_row={**write.snapshot_row, **changes})


def test_a_stored_digest_is_already_stored(api: Any, accepted: Any) -> None:
    before = api.counts()
    with pytest.raises(AlreadyStored):
        _send(api, _with_row(accepted.write, seq=7))
    assert api.counts() == before


def test_another_child_of_the_head_is_a_moved_head(api: Any, accepted: Any) -> None:
    before = api.counts()
    with pytest.raises(HeadMoved):
        _send(api, _with_row(accepted.write, digest="e" * 64))
    assert api.counts() == before


def test_other_integrity_errors_are_not_taken_for_races(api: Any, accepted: Any) -> None:
    before = api.counts()
    unknown_host = _with_row(accepted.write, digest="f" * 64, key_id="k" * 64)
    with pytest.raises(Exception) as caught:
        _send(api, unknown_host)
    assert not isinstance(caught.value, AlreadyStored | HeadMoved)
    assert "foreign key" in str(caught.value).lower()
    assert api.counts() == before
