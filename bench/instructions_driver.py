"""The process bench_instructions.py runs under callgrind, once per tree: the in-process ingest
loop of bench_ingest (:func:`bench_ingest.in_process`), with instrumentation on only around it.

It imports nothing from the checkout that started it: ``server``, ``agent`` and
``tests.server.builders`` come from the tree first on ``PYTHONPATH``, and both ingest APIs are
driven — ``svc.ingest.appraise`` / ``svc.ingest.commit`` with ``server.ingest.Pending`` /
``Outcome`` (the tree after the restructuring, issue 17), or
``server.api.routes_snapshots.appraise_body`` / ``write_batch`` / ``Pending`` /
``IngestOutcome`` (before it). The envelopes, their keys and the site id they name are built by
the caller and read from ``load.json``; the loop is the same in both cases: appraise each
envelope, group-commit ``batch`` at a time, settle every ``settle_every`` snapshots and once at
the end.

Usage: ``instructions_driver.py LOAD.json SHIM.so RESULT.json`` (the shim: see
bench_instructions.py; without valgrind its calls do nothing, so the driver also runs bare).
"""

from __future__ import annotations

import base64
import ctypes
import gc
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# This script's folder (the calling checkout's bench/) is sys.path[0]; nothing may come from it.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]


def ingest_api(
    svc: Any,
) -> tuple[str, Callable[[bytes], Any], Callable[[Sequence[Any]], Any], type, type]:
    """(name, appraise, commit, Pending, Outcome) of the tree being measured."""
    if hasattr(svc, "ingest") and hasattr(svc.ingest, "commit"):
        ingest = importlib.import_module("server.ingest")
        return (
            "svc.ingest.appraise/commit",
            svc.ingest.appraise,
            svc.ingest.commit,
            ingest.Pending,
            ingest.Outcome,
        )
    routes = importlib.import_module("server.api.routes_snapshots")
    return (
        "routes_snapshots.appraise_body/write_batch",
        lambda body: routes.appraise_body(svc, body),
        lambda items: routes.write_batch(svc, items),
        routes.Pending,
        routes.IngestOutcome,
    )


def enroll(svc: Any, app: Any, site_id: str, keys: list[bytes]) -> None:
    """An org, the site the envelopes name (its id fixed to theirs) and one enrolled host per
    key, the way bench_ingest's in-process run sets them up."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from fastapi.testclient import TestClient

    from server.store import repo
    from tests.server.builders import HostKit

    now = datetime.now(UTC)
    new_id = repo.new_id
    repo.new_id = lambda prefix: site_id if prefix == "site" else new_id(prefix)
    try:
        with svc.db.write() as session:
            repo.add_org(session, "Acme Compute", "universal", "US", None, now)
            site = repo.add_site(
                session, "Acme Compute", "Frankfurt-1", "DE", 5e6, None, False, now
            )
            assert site.id == site_id, site.id
            tokens = [
                repo.create_enroll_token(session, site_id, timedelta(hours=1), now)[0] for _ in keys
            ]
    finally:
        repo.new_id = new_id
    with TestClient(app) as client:
        for index, (raw, token) in enumerate(zip(keys, tokens, strict=True)):
            kit = HostKit(site_id, index=index, key=Ed25519PrivateKey.from_private_bytes(raw))
            answer = client.post("/v1/enroll", json=kit.enroll_body(token))
            if answer.status_code != 200:
                raise SystemExit(f"enroll failed: {answer.status_code} {answer.text[:200]}")


def main(argv: list[str]) -> int:
    load_path, shim_path, result_path = argv
    load = json.loads(Path(load_path).read_text())
    shim = ctypes.CDLL(shim_path)
    order = [base64.b64decode(body) for body in load["order"]]
    keys = [bytes.fromhex(key) for key in load["keys"]]
    batch, settle_every = int(load["batch"]), int(load["settle_every"])

    import server
    from server.api.app import create_app
    from server.config import Settings

    with tempfile.TemporaryDirectory(prefix="veu-callgrind-") as tmp:
        app = create_app(Settings(data_dir=Path(tmp), database_url=None))
        svc = app.state.veu
        enroll(svc, app, load["site_id"], keys)
        api, appraise, commit, pending_type, outcome_type = ingest_api(svc)
        # Envelopes older than late_after are judged late (a finding more): a tree set up too
        # slowly would do different work, not the same work slower.
        age = time.time() - float(load["built_at"])
        if age >= svc.verify.late_after.total_seconds():
            raise SystemExit(
                f"the envelopes were {age:.0f} s old when the loop started (late after "
                f"{svc.verify.late_after}); rerun on a less loaded machine"
            )
        errors = 0
        unsettled = 0
        gc.collect()
        shim.veu_callgrind_start()
        for start in range(0, len(order), batch):
            items = [appraise(body) for body in order[start : start + batch]]
            pending = [item for item in items if isinstance(item, pending_type)]
            errors += len(items) - len(pending)
            outcomes = commit(pending)
            errors += sum(not isinstance(o, outcome_type) for o in outcomes)
            unsettled += len(items)
            if unsettled >= settle_every:
                svc.settle()
                unsettled = 0
        svc.settle()
        shim.veu_callgrind_stop()
        svc.db.dispose()
    result = {
        "api": api,
        "server": str(Path(server.__file__).resolve().parent),
        "snapshots": len(order),
        "errors": errors,
        "under_valgrind": bool(shim.veu_running_on_valgrind()),
        "age_s": age,
    }
    Path(result_path).write_text(json.dumps(result))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
