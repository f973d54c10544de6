"""The transparency log in the verifier: a leaf per accepted snapshot in the ingest transaction,
the integrator's checkpoints (never inconsistent, never smaller), proofs, tiles and bundles over
HTTP, hostile parameters, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import itertools
import json
import threading
from typing import Any

import pytest
from sqlalchemy import select, update

from contract.tlog import (
    leaf_hash,
    parse_verifier_key,
    verify_bundle,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from server.log.integrate import Log, LogInconsistent
from server.log.merkle import Tree
from server.log.tiles import tile_path, unbundle
from server.store.log_models import LogCheckpoint, LogEntry, LogNode
from tests.server.builders import HostKit, digest_of


@pytest.fixture(autouse=True)
def _no_background_integrator(api: Any) -> None:
    """These tests integrate by hand (the background integrator has its own test)."""
    api.services.integrator.stop()
    api.services.integrator = None


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def _entries(api: Any) -> list[LogEntry]:
    with api.services.db.read() as s:
        return list(s.scalars(select(LogEntry).order_by(LogEntry.id)))


def _submit(api: Any, n: int, kit: HostKit | None = None) -> list[str]:
    if kit is None:
        kit = HostKit(api.site_id)
        api.enroll(kit)
    digests = []
    for _ in range(n):
        data = kit.next_envelope()
        _ok(api.submit(data))
        digests.append(digest_of(data))
    return digests


def _key(api: Any) -> Any:
    return parse_verifier_key(_ok(api.client.get("/v1/log/key"))["verifier_key"])


def test_each_accepted_snapshot_is_one_leaf_that_names_it(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    data = kit.next_envelope()
    body = _ok(api.submit(data))
    _ok(api.submit(data))  # a duplicate delivery is no new leaf
    (entry,) = _entries(api)
    record = json.loads(entry.data)
    assert entry.idx is None and entry.kind == "accepted"
    assert record["envelope"] == body["digest"] == entry.envelope_digest
    assert record["host"] == kit.key_id and record["site"] == api.site_id and record["seq"] == 1
    import hashlib

    assert record["result"] == hashlib.sha256(body["result"].encode()).hexdigest()
    # JCS: keys sorted, no spaces; the bytes are what is hashed.
    assert entry.data == json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def test_a_fork_is_logged_as_signed_rejected_evidence(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    _submit(api, 2, kit)
    bad = kit.next_envelope(advance=False, prev="f" * 64)
    assert api.submit(bad).status_code == 409
    entries = _entries(api)
    assert [e.kind for e in entries] == ["accepted", "accepted", "rejected"]
    record = json.loads(entries[-1].data)
    assert record["code"] == "fork" and record["envelope"] == digest_of(bad)
    assert record["host"] == kit.key_id


def test_integration_signs_checkpoints_that_prove_every_leaf(api: Any) -> None:
    log: Log = api.services.log
    key = _key(api)
    first = _submit(api, 3)
    cp3 = log.integrate_all()
    assert cp3 is not None and cp3.size == 3
    assert verify_checkpoint(cp3.note, key).root == cp3.root
    more = _submit(api, 4)
    cp7 = log.integrate_all()
    assert cp7 is not None and cp7.size == 7
    # Nothing pending: the same checkpoint, no new row.
    assert log.integrate() == cp7
    with api.services.db.read() as s:
        sizes = list(s.scalars(select(LogCheckpoint.size).order_by(LogCheckpoint.size)))
    assert sizes[-2:] == [3, 7] and sizes == sorted(set(sizes))
    # The proofs over HTTP check against the signed roots.
    c = _ok(api.client.get("/v1/log/proof/consistency", params={"size1": 3, "size2": 7}))
    verify_consistency(3, 7, [base64.b64decode(x) for x in c["proof"]], cp3.root, cp7.root)
    entries = _entries(api)
    assert [e.idx for e in entries] == list(range(7))
    tree = Tree()
    for e in entries:
        tree.append(leaf_hash(e.data))
    assert tree.root() == cp7.root
    for i, e in enumerate(entries):
        p = _ok(api.client.get("/v1/log/proof/inclusion", params={"index": i, "size": 7}))
        proof = [base64.b64decode(x) for x in p["proof"]]
        verify_inclusion(i, 7, leaf_hash(e.data), proof, cp7.root)
    # GET /v1/results/{digest} carries the bundle: verifiable with the log's key alone.
    for digest in first + more:
        body = _ok(api.client.get(f"/v1/results/{digest}", headers=api.as_auditor()))
        b = body["log"]
        cp = verify_bundle(
            base64.b64decode(b["entry"]),
            b["index"],
            [base64.b64decode(x) for x in b["proof"]],
            b["checkpoint"],
            key,
        )
        assert cp.size == 7 and json.loads(base64.b64decode(b["entry"]))["envelope"] == digest
    # The checkpoint route answers the latest note, uncached.
    r = api.client.get("/log/checkpoint")
    assert r.status_code == 200 and r.text == cp7.note
    assert r.headers["cache-control"] == "no-cache"


def test_a_result_before_integration_has_no_bundle_yet(api: Any) -> None:
    (digest,) = _submit(api, 1)
    body = _ok(api.client.get(f"/v1/results/{digest}", headers=api.as_auditor()))
    assert body["log"] is None


def test_tiles_and_entry_bundles(api: Any) -> None:
    log: Log = api.services.log
    _submit(api, 5)
    cp = log.integrate_all()
    assert cp is not None
    r = api.client.get("/log/tile/0/000.p/5")
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    hashes = [r.content[i : i + 32] for i in range(0, len(r.content), 32)]
    entries = _entries(api)
    assert hashes == [leaf_hash(e.data) for e in entries]
    e = api.client.get("/log/tile/entries/000.p/5")
    assert e.status_code == 200 and unbundle(e.content) == [x.data for x in entries]
    assert api.client.get("/log/tile/0/000.p/3").content == r.content[: 3 * 32]
    # A tile past the tree, a full tile of a small tree, non-canonical paths: 4xx.
    for path in [
        "/log/tile/0/000.p/6",
        "/log/tile/0/000",
        "/log/tile/1/000.p/1",
        "/log/tile/0/001.p/1",
        "/log/tile/entries/000.p/6",
        "/log/tile/0/0",
        "/log/tile/0/x000/000.p/1",
        "/log/tile/0/000.p/0",
        "/log/tile/0/000.p/256",
        "/log/tile/0/000.p/05",
        "/log/tile/9/000",
        "/log/tile/-1/000",
        "/log/tile/0/" + "x999/" * 10 + "999",
    ]:
        got = api.client.get(path)
        assert 400 <= got.status_code < 500, (path, got.status_code)
        assert "code" in got.json()


def test_tile_paths() -> None:
    assert tile_path(0) == "000"
    assert tile_path(1234067) == "x001/x234/067"
    assert tile_path(999) == "999" and tile_path(1000) == "x001/000"


@pytest.mark.parametrize(
    "params",
    [
        {"index": 5, "size": 3},
        {"index": 0, "size": 0},
        {"index": 3, "size": 3},
        {"index": 0, "size": 4},  # past the signed tree
        {"index": -1, "size": 3},
        {"index": 0, "size": 2**64},
        {"index": 2**70, "size": 2**71},
        {"index": "x", "size": 3},
        {"size": 3},
    ],
)
def test_hostile_inclusion_parameters(api: Any, params: dict[str, Any]) -> None:
    _submit(api, 3)
    api.services.log.integrate_all()
    r = api.client.get("/v1/log/proof/inclusion", params=params)
    assert 400 <= r.status_code < 500 and "code" in r.json()


@pytest.mark.parametrize(
    "params",
    [
        {"size1": 3, "size2": 2},
        {"size1": 1, "size2": 4},
        {"size1": -1, "size2": 3},
        {"size1": 0, "size2": 2**63},
        {"size1": 2**80, "size2": 2**81},
        {"size1": 1},
    ],
)
def test_hostile_consistency_parameters(api: Any, params: dict[str, Any]) -> None:
    _submit(api, 3)
    api.services.log.integrate_all()
    r = api.client.get("/v1/log/proof/consistency", params=params)
    assert 400 <= r.status_code < 500 and "code" in r.json()


def test_an_empty_log_signs_the_empty_tree(api: Any) -> None:
    assert api.client.get("/log/checkpoint").status_code in (200, 404)
    cp = api.services.log.integrate()
    assert cp is not None and cp.size == 0
    assert verify_checkpoint(api.client.get("/log/checkpoint").text, _key(api)).size == 0
    r = api.client.get("/v1/log/proof/consistency", params={"size1": 0, "size2": 0})
    assert _ok(r)["proof"] == []


def test_a_tampered_tree_is_never_signed(api: Any) -> None:
    log: Log = api.services.log
    _submit(api, 4)
    cp = log.integrate_all()
    assert cp is not None and cp.size == 4
    with api.services.db.write() as s:
        s.execute(
            update(LogNode).where(LogNode.level == 2, LogNode.idx == 0).values(hash=b"\x00" * 32)
        )
    _submit(api, 1)
    with pytest.raises(LogInconsistent):
        log.integrate()
    assert log.latest() == cp  # nothing signed
    pending = [e for e in _entries(api) if e.idx is None]
    assert len(pending) == 1  # and nothing lost


def test_a_rewritten_checkpoint_is_not_extended(api: Any) -> None:
    """A checkpoint row whose root is not the stored tree's: the integrator refuses to sign a
    successor (it would not be consistent with what was published)."""
    log: Log = api.services.log
    _submit(api, 2)
    log.integrate_all()
    with api.services.db.write() as s:
        s.execute(update(LogCheckpoint).values(root=b"\x01" * 32))
    _submit(api, 1)
    with pytest.raises(LogInconsistent):
        log.integrate()


def test_concurrent_integrators_publish_one_consistent_history(api: Any) -> None:
    """Several integrators at once (on PostgreSQL: the advisory lock; on SQLite: the single
    writer) never sign two checkpoints of one size or inconsistent ones."""
    svc = api.services
    kit = HostKit(api.site_id)
    api.enroll(kit)
    logs = [Log(svc.db, svc.log.key, batch_max=3) for _ in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(log: Log) -> None:
        while not stop.is_set():
            try:
                log.integrate()
            except Exception as exc:  # a lost race on the checkpoint's key is allowed
                if "checkpoint" not in str(exc).lower() and "unique" not in str(exc).lower():
                    errors.append(exc)

    threads = [threading.Thread(target=run, args=(lg,)) for lg in logs]
    for t in threads:
        t.start()
    try:
        _submit(api, 12, kit)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    final = svc.log.integrate_all()
    assert final is not None and final.size == 12
    with svc.db.read() as s:
        cps = list(s.scalars(select(LogCheckpoint).order_by(LogCheckpoint.size)))
    key = _key(api)
    for a, b in itertools.pairwise(cps):
        proof = svc.log.consistency(a.size, b.size)
        verify_consistency(a.size, b.size, proof, bytes(a.root), bytes(b.root))
        assert verify_checkpoint(b.note, key).root == bytes(b.root)
    assert sorted(e.idx for e in _entries(api)) == list(range(12))
