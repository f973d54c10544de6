"""Storage: migrations, records, hashed secrets, audit chain — SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, select, text

from server.errors import VeuError
from server.store import repo
from server.store.db import Database, make_engine
from server.store.migrate import current_revision, head_revision, upgrade
from server.store.models import ApiKey, EnrollToken, Host

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Database:
    upgrade(db_url)
    return Database(make_engine(db_url))


def test_migrations_create_every_table_and_are_idempotent(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    engine = make_engine(db_url)
    names = set(inspect(engine).get_table_names())
    assert {"hosts", "snapshots", "chain_heads", "audit_log", "nonces"} <= names
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/w.sqlite3"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_org_and_site_reject_unknown_country_codes(db: Database) -> None:
    with db.write() as s, pytest.raises(VeuError) as err:
        repo.add_org(s, "Acme", "universal", "XX", None, NOW)
    assert err.value.code == "bad_country"


def test_tokens_and_api_keys_are_stored_only_as_hashes(db: Database) -> None:
    with db.write() as s:
        repo.add_org(s, "Acme", "universal", "us", None, NOW)
        site = repo.add_site(s, "Acme", "Frankfurt", "DE", 1e6, "VEU-1", False, NOW)
        token, _ = repo.create_enroll_token(s, site.id, timedelta(hours=1), NOW)
        key, _ = repo.create_api_key(s, "auditor", None, NOW)
    with db.read() as s:
        stored = [r.token_hash for r in s.scalars(select(EnrollToken))]
        stored += [r.key_hash for r in s.scalars(select(ApiKey))]
        assert token not in stored and key not in stored
        assert repo.hash_secret(token) in stored
        found = repo.lookup_api_key(s, key)
        assert found is not None and found.role == "auditor"
        assert repo.lookup_api_key(s, key + "x") is None


def test_an_enrollment_token_enrolls_exactly_one_host(db: Database) -> None:
    with db.write() as s:
        repo.add_org(s, "Acme", "universal", "US", None, NOW)
        site = repo.add_site(s, "Acme", "Frankfurt", "DE", 1e6, None, False, NOW)
        token, _ = repo.create_enroll_token(s, site.id, timedelta(hours=1), NOW)
    with db.write() as s:
        repo.enroll(
            s,
            token=token,
            public_key_raw=b"\x01" * 32,
            key_id="a" * 64,
            facts={"machine_id": "m1"},
            head_seq=0,
            head_digest=None,
            now=NOW,
        )
    with db.write() as s, pytest.raises(VeuError) as err:
        repo.enroll(
            s,
            token=token,
            public_key_raw=b"\x02" * 32,
            key_id="b" * 64,
            facts={},
            head_seq=0,
            head_digest=None,
            now=NOW,
        )
    assert err.value.code == "token_used"
    with db.read() as s:
        hosts = s.scalars(select(Host)).all()
        assert [h.key_id for h in hosts] == ["a" * 64]


def test_an_expired_enrollment_token_is_refused(db: Database) -> None:
    with db.write() as s:
        repo.add_org(s, "Acme", "universal", "US", None, NOW)
        site = repo.add_site(s, "Acme", "Frankfurt", "DE", 1e6, None, False, NOW)
        token, _ = repo.create_enroll_token(s, site.id, timedelta(hours=1), NOW)
    with db.write() as s, pytest.raises(VeuError) as err:
        repo.enroll(
            s,
            token=token,
            public_key_raw=b"\x01" * 32,
            key_id="a" * 64,
            facts={},
            head_seq=0,
            head_digest=None,
            now=NOW + timedelta(hours=2),
        )
    assert err.value.code == "token_expired"


def test_timestamps_come_back_timezone_aware_utc(db: Database) -> None:
    with db.write() as s:
        org = repo.add_org(s, "Acme", "national", "US", "US", NOW)
        org_id = org.id
    with db.read() as s:
        assert repo.find_org(s, org_id).created_at == NOW


@pytest.mark.postgres
def test_evidence_columns_are_compressed_with_lz4_on_postgresql(
    pg_database_factory: Callable[[], str],
) -> None:
    """Migration 0006: new envelopes, results and findings are TOAST-compressed with lz4
    (cheaper than pglz for the database's CPU); a downgrade gives the columns the default."""
    from alembic import command

    from server.store.migrate import alembic_config

    lz4_migration = importlib.import_module("server.store.migrations.versions.0006_lz4_evidence")
    db_url = pg_database_factory()

    def methods() -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = "
                    "'snapshots'::regclass AND attname IN ('envelope', 'result', 'findings')"
                )
            )
            return {r[0]: r[1] for r in rows}

    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        assert methods() == {"envelope": "l", "result": "l", "findings": "l"}
        command.downgrade(alembic_config(db_url), "0005")
        assert set(methods().values()) == {""}  # the server's default_toast_compression
        upgrade(db_url)
        assert set(methods().values()) == {"l"}
        # Where the server cannot (no lz4, older than 14), nothing changes and it says why.
        with engine.begin() as conn:
            why = lz4_migration.compress(conn, "zstd")
            conn.execute(text("SELECT 1"))  # the transaction is still usable
        assert why is not None and "zstd" in why
        assert set(methods().values()) == {"l"}
    finally:
        engine.dispose()
