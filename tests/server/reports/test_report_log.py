"""A JSON report carries the log's checkpoint and an inclusion proof for every snapshot it
counts; ``report verify --log-key`` checks them with the pinned log key alone."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.errors import EvidenceError
from contract.tlog import parse_verifier_key
from server import reports
from server.cli import main
from server.log.entries import accepted_entry, entry_row
from server.policy import PolicySet
from server.store import log as store
from server.store.models import Snapshot
from tests.server.api.dashboard.conftest import Env, make_env


@pytest.fixture
def env(tmp_path: Path, policy: PolicySet) -> Env:
    e = make_env(tmp_path, policy)
    yield e  # type: ignore[misc]
    e.svc.db.dispose()


def _log_the_seeded_snapshots(env: Env) -> int:
    """The seed writes snapshot rows directly: give each its leaf, as ingest would."""
    with env.svc.db.write() as s:
        rows = []
        for snap in s.query(Snapshot).order_by(Snapshot.received_at, Snapshot.digest):
            data = accepted_entry(
                digest=snap.digest, key_id=snap.key_id, site_id=snap.site_id, seq=snap.seq,
                result=snap.result, at=snap.received_at,
            )  # fmt: skip
            rows.append(entry_row("accepted", snap.digest, data, snap.received_at))
        store.append_entries(s, rows)
    cp = env.svc.log.integrate_all()
    assert cp is not None
    return cp.size


def test_a_json_report_proves_its_evidence_in_the_log(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = _log_the_seeded_snapshots(env)
    out = tmp_path / "acme.json"
    data_dir = str(env.data_dir)
    args = ["--data-dir", data_dir]
    code = main(["report", *args, "--org", "Acme AI", "--period", "2026H1", "--format", "json",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    body = json.loads(out.read_bytes())
    section = body["transparency_log"]
    assert section["not_yet_logged"] == [] and len(section["evidence"]) == body["hosts_counted"]
    key = section["log_key"]
    capsys.readouterr()
    sig = f"{out}.sig"
    assert main(["report", "verify", str(out), sig, *args, "--log-key", key]) == 0
    said = capsys.readouterr().out
    assert f"{body['hosts_counted']} cited snapshots are in the log's signed checkpoint" in said
    assert f"of size {size}" in said
    # A forged proof fails the log check with the pinned key (the file's signature aside).
    forged = json.loads(out.read_bytes())
    proof = forged["transparency_log"]["evidence"][0]["proof"]
    proof[0] = base64.b64encode(b"\x00" * 32).decode()
    with pytest.raises(EvidenceError):
        reports.verify_report_log(json.dumps(forged).encode(), parse_verifier_key(key))
    # Another log's key does not verify the checkpoint.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from server.log.note import LogKey

    other = LogKey(Ed25519PrivateKey.generate(), env.svc.log.key.origin).note_key
    with pytest.raises(EvidenceError):
        reports.verify_report_log(out.read_bytes(), other)


def test_snapshots_not_yet_logged_are_named(env: Env) -> None:
    with env.svc.db.read() as s:
        data = reports.build_report(
            s, env.policy, env.fleet.org_id, reports.Period.parse("2026H1"),
            datetime(2026, 11, 27, 12, 0, tzinfo=UTC), log=env.svc.log,
        )  # fmt: skip
    section = data["transparency_log"]
    assert section["checkpoint"] is None and section["evidence"] == []
    assert len(section["not_yet_logged"]) == data["hosts_counted"] > 0


def test_a_pdf_has_no_log_section_and_verify_says_so(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log_the_seeded_snapshots(env)
    out = tmp_path / "acme.pdf"
    args = ["--data-dir", str(env.data_dir)]
    assert main(["report", *args, "--org", "Acme AI", "--period", "2026H1", "--format", "pdf",
                 "--out", str(out)]) == 0  # fmt: skip
    key = env.svc.log.key.verifier_key
    code = main(["report", "verify", str(out), f"{out}.sig", *args, "--log-key", key])
    assert code == 4 and "error[no_log_section]" in capsys.readouterr().err
