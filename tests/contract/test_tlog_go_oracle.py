"""An independent implementation as oracle: Go's ``golang.org/x/mod/sumdb/note`` and
``.../tlog`` (Debian: ``golang-go golang-golang-x-mod-dev``) recompute the roots of a log our
verifier built in a real database, check our inclusion and consistency proofs, open our signed
checkpoint with our note key, and hand back their own proofs for :mod:`contract.tlog` to check.
Skipped, saying why, where Go or the x/mod sources are absent."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.tlog import parse_verifier_key, verify_consistency, verify_inclusion
from server.log.entries import entry_row
from server.log.integrate import Log
from server.log.merkle import Tree
from server.log.note import LogKey
from server.store import log as store
from server.store.db import Database, make_engine
from server.store.migrate import upgrade

GOPATH = Path(os.environ.get("VEU_GO_X_MOD_PATH", "/usr/share/gocode"))
ORACLE = Path(__file__).with_name("go_oracle") / "oracle.go"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.skip(
            "Go is not installed (Debian: apt-get install golang-go golang-golang-x-mod-dev)"
        )
    if not (GOPATH / "src/golang.org/x/mod/sumdb/tlog/tlog.go").exists():
        pytest.skip(f"golang.org/x/mod is not under {GOPATH} (Debian: golang-golang-x-mod-dev)")
    return go


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def test_go_checks_our_log_and_we_check_gos_proofs(tmp_path: Path) -> None:
    go = _go()
    url = f"sqlite:///{tmp_path / 'veu.sqlite3'}"
    upgrade(url)
    db = Database(make_engine(url))
    key = LogKey(Ed25519PrivateKey.generate(), "oracle.example/log")
    log = Log(db, key)
    now = datetime.now(UTC)
    leaves = [f'{{"leaf":{i}}}'.encode() for i in range(300)]
    sizes = []
    for end in (1, 7, 64, 100, 257, 300):
        start = sizes[-1] if sizes else 0
        with db.write() as s:
            store.append_entries(
                s, [entry_row("test", None, data, now) for data in leaves[start:end]]
            )
        cp = log.integrate()
        assert cp is not None and cp.size == end
        sizes.append(end)
    tree = Tree()
    for data in leaves:
        from contract.tlog import leaf_hash

        tree.append(leaf_hash(data))
    rnd = random.Random(9162)
    inclusion = [(i, 300) for i in range(300)] + [
        (rnd.randrange(n), n) for n in sizes for _ in range(5)
    ]
    pairs = [(a, b) for a in sizes for b in sizes if a < b]
    pairs += [(m, n) for n in (2, 3, 5, 31, 200, 300) for m in range(1, n, max(1, n // 7))]
    request = {
        "vkey": key.verifier_key,
        "checkpoint": log.latest().note,  # type: ignore[union-attr]
        "leaves": [b64(d) for d in leaves],
        "roots": [b64(tree.root(n)) for n in range(301)],
        "inclusion": [
            {"index": i, "size": n, "proof": [b64(h) for h in log.inclusion(i, n)]}
            for i, n in inclusion
        ],
        "consistency": [
            {"size1": m, "size2": n, "proof": [b64(h) for h in log.consistency(m, n)]}
            for m, n in pairs
        ],
    }
    db.dispose()
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(tmp_path / "gocache"),
        "GOFLAGS": "",
    }
    proc = subprocess.run(
        [go, "run", str(ORACLE)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert len(answer["inclusion"]) == len(inclusion)
    for p in answer["inclusion"]:
        proof = [base64.b64decode(h) for h in p["proof"]]
        assert proof == log_proof(request, p["index"], p["size"])  # the same bytes as ours
        verify_inclusion(
            p["index"], p["size"], tree.levels[0][p["index"]], proof, tree.root(p["size"])
        )
    for p in answer["consistency"]:
        proof = [base64.b64decode(h) for h in p["proof"]]
        verify_consistency(
            p["size1"], p["size2"], proof, tree.root(p["size1"]), tree.root(p["size2"])
        )
    # Go's note package accepted our checkpoint; it also parses as our own key string.
    assert parse_verifier_key(key.verifier_key).name == "oracle.example/log"


def log_proof(request: dict[str, object], index: int, size: int) -> list[bytes]:
    for p in request["inclusion"]:  # type: ignore[attr-defined]
        if p["index"] == index and p["size"] == size:
            return [base64.b64decode(h) for h in p["proof"]]
    raise AssertionError("no such proof")
