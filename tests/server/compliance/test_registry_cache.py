"""The model registry as ingest sees it: one list parameter, and a per-process cache that the
registry's generation empties — SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, select

from server.compliance.registry import RegistryCache, bump_registry, model_registry
from server.store.compliance_models import ModelFile, RegisteredModel, RegistryState
from server.store.db import Database, make_engine
from server.store.migrate import upgrade
from server.store.sqllist import TextList, values_in

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def db(db_url: str) -> Database:
    upgrade(db_url)
    return Database(make_engine(db_url))


def register(db: Database, name: str, *digests: str, bump: bool = True) -> None:
    with db.write() as s:
        s.add(
            RegisteredModel(
                id=f"mdl_{name}", name=name, training_ops=3e26, published=False, created_at=NOW
            )
        )
        s.flush()
        for digest in digests:
            s.add(ModelFile(digest=digest, model_id=f"mdl_{name}"))
        if bump:
            bump_registry(s)


def generation(db: Database) -> int:
    with db.read() as s:
        value = s.scalar(select(RegistryState.generation).where(RegistryState.id == 1))
        assert value is not None
        return int(value)


class Queries:
    """Counts statements that read the registry."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "model_files" in statement:
            self.count += 1


def test_values_in_matches_exactly_the_listed_values(db: Database) -> None:
    register(db, "one", A, B, C)
    table = ModelFile.__table__
    query = select(table.c.digest).where(values_in(table.c.digest, "digests"))
    with db.read() as s:
        assert sorted(s.execute(query, {"digests": [A, C, "x' OR '1'='1"]}).scalars()) == [A, C]
        assert list(s.execute(query, {"digests": []}).scalars()) == []


def test_text_list_refuses_one_string_for_a_list() -> None:
    with pytest.raises(TypeError, match="list of strings"):
        TextList().process_bind_param("abc", make_engine("sqlite://").dialect)


def test_the_registry_generation_starts_at_zero_and_grows_with_each_registration(
    db: Database,
) -> None:
    assert generation(db) == 0
    register(db, "one", A)
    register(db, "two", B)
    assert generation(db) == 2


def test_the_cache_answers_repeats_from_memory_until_the_generation_changes(
    db: Database,
) -> None:
    register(db, "one", A)
    cache, queries = RegistryCache(), Queries(db)
    gen = generation(db)
    with db.read() as s:
        first = cache.registry(s, [A, B], gen)
        again = cache.registry(s, [B, A.upper()], gen)
    assert set(first.by_digest) == set(again.by_digest) == {A}
    assert queries.count == 1  # the second asked nothing of the database
    # B (not registered, remembered as such) is registered now: the generation moves on.
    register(db, "two", B)
    with db.read() as s:
        after = cache.registry(s, [A, B], generation(db))
    assert set(after.by_digest) == {A, B} and queries.count == 2


def test_answers_read_under_an_older_generation_are_not_kept(db: Database) -> None:
    cache, queries = RegistryCache(), Queries(db)
    with db.read() as s:
        cache.registry(s, [A], 5)  # current: 5
        cache.registry(s, [B], 4)  # a slower thread still on 4: answered, not remembered
        cache.registry(s, [B], 5)
    assert queries.count == 3


def test_without_a_generation_the_database_is_asked_every_time(db: Database) -> None:
    register(db, "one", A)
    cache, queries = RegistryCache(), Queries(db)
    with db.read() as s:
        for _ in range(3):
            assert set(cache.registry(s, [A], None).by_digest) == {A}
    assert queries.count == 3


def test_the_cache_never_grows_past_its_bound(db: Database) -> None:
    cache = RegistryCache(max_entries=10)
    with db.read() as s:
        for i in range(25):
            cache.registry(s, [f"{i:064x}", f"{i + 100:064x}"], 0)
    assert len(cache._known) <= 10


def test_an_unbumped_change_is_seen_by_a_plain_registry_read(db: Database) -> None:
    """What the generation is for: a registration without a bump is invisible to the cache
    (hence every writer of the registry bumps it), though the database has it."""
    cache = RegistryCache()
    with db.read() as s:
        assert cache.registry(s, [C], generation(db)).by_digest == {}
    register(db, "three", C, bump=False)
    with db.read() as s:
        assert cache.registry(s, [C], generation(db)).by_digest == {}
        assert set(model_registry(s, [C]).by_digest) == {C}
