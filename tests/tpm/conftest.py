"""Fixtures for tests with a real software TPM (tests/tpm/swtpm.py): one certificate authority
and one manufactured TPM per session, and per test a running swtpm over a fresh copy of that
TPM's state (or, with ``make_swtpm(fresh=True)``, a TPM of its own with another endorsement
key). Every swtpm a test starts is stopped after it."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tpm.swtpm import LocalCA, Swtpm, make_ca, manufacture, require_swtpm


@pytest.fixture(scope="session")
def swtpm_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    require_swtpm()
    return make_ca(tmp_path_factory.mktemp("swtpm-ca"))


@pytest.fixture(scope="session")
def swtpm_template(swtpm_ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return manufacture(swtpm_ca, tmp_path_factory.mktemp("swtpm-template"))


@pytest.fixture
def make_swtpm(
    swtpm_ca: LocalCA, swtpm_template: Path, tmp_path: Path
) -> Iterator[Callable[..., Swtpm]]:
    started: list[Swtpm] = []

    def make(*, fresh: bool = False) -> Swtpm:
        state = tmp_path / f"tpm-{len(started)}"
        if fresh:
            manufacture(swtpm_ca, state)
        else:
            shutil.copytree(swtpm_template, state)
        tpm = Swtpm(state).start()
        started.append(tpm)
        return tpm

    yield make
    for tpm in started:
        tpm.stop()


@pytest.fixture
def swtpm(make_swtpm: Callable[..., Swtpm]) -> Swtpm:
    return make_swtpm()


# The verifier in process (real app, SQLite and PostgreSQL) for tests that enroll a TPM host.
from tests.server.conftest import api, db_url, pg_database_factory  # noqa: E402, F401
