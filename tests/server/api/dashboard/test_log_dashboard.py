"""The dashboard shows the latest signed checkpoint and hands out a snapshot's log proof, which
verifies with the log's key alone."""

from __future__ import annotations

import base64

from contract.tlog import parse_verifier_key, verify_bundle
from server.log.entries import accepted_entry, entry_row
from server.store import log as store
from server.store import repo
from tests.server.api.dashboard.conftest import Env


def test_overview_shows_the_checkpoint_and_a_snapshot_proof_downloads(env: Env) -> None:
    client = env.client("auditor")
    assert "No checkpoint signed yet." in client.get("/dashboard/").text
    key = env.fleet.hosts["us-east"][0]
    digests = env.fleet.digests[key]
    with env.svc.db.write() as s:  # the seed wrote snapshot rows directly: give them leaves
        rows = []
        for digest in digests:
            snap = repo.snapshot_by_digest(s, digest)
            assert snap is not None
            data = accepted_entry(
                digest=digest, key_id=snap.key_id, site_id=snap.site_id, seq=snap.seq,
                result=snap.result, at=snap.received_at,
            )  # fmt: skip
            rows.append(entry_row("accepted", digest, data, snap.received_at))
        store.append_entries(s, rows)
    cp = env.svc.log.integrate_all()
    assert cp is not None and cp.size == len(digests)
    page = client.get("/dashboard/").text
    assert "Transparency log" in page and cp.root.hex()[:16] in page
    host = client.get(f"/dashboard/hosts/{key}").text
    assert f"/dashboard/snapshots/{digests[-1]}/log-proof" in host
    r = client.get(f"/dashboard/snapshots/{digests[-1]}/log-proof")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    body = r.json()
    b = body["log"]
    got = verify_bundle(
        base64.b64decode(b["entry"]), b["index"], [base64.b64decode(h) for h in b["proof"]],
        b["checkpoint"], parse_verifier_key(body["log_key"]),
    )  # fmt: skip
    assert got.size == cp.size
    missing = client.get(f"/dashboard/snapshots/{'0' * 64}/log-proof")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert client.get("/dashboard/snapshots/..%2f/log-proof").status_code == 404
    anonymous = env.client(role=None).get(f"/dashboard/snapshots/{digests[-1]}/log-proof")
    assert anonymous.status_code == 401
