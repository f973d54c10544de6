#!/usr/bin/env python3
"""Site scale (issue 7): a 100,000-GPU site (12,500 hosts x 8 H100) against a 1,000-GPU site.

For each database (a real SQLite file; PostgreSQL with ``--pg-url``) and each site size, a fresh
database is populated quickly with bulk inserts — hosts (freshly enrolled: chain head at seq 0),
their current inventory (8 accelerators and 4 weight files each), their ``host_state``
contributions (computed by the policy engine from each host's real snapshot) and the site and
organization aggregates (summed from those contributions) — instead of 12,500 HTTP enrollments.
Then, in-process (``create_app`` + Starlette's TestClient: server time, no network):

1. **site status update**: ``host_judgement.judge_host`` + ``host_judgement.record_hosts`` +
   ``settle.settle_site`` (the site and its organization judged) + commit, in one
   write transaction, for a new snapshot of a random host of the site (its inventory alternates
   between 8 and 7 GPUs so every update moves the aggregate) — the cost the design says must not
   grow with the site. Median and p95 over ``--updates`` runs; the ratio big/small is judged
   (target: within 2x).
2. **whole ingest**: ``POST /v1/snapshots`` of real signed envelopes (first link of each host's
   chain) — the update above plus appraisal, inventory, audit and the signed result.
3. **reads**: ``GET /v1/sites/{id}/status`` and the dashboard page ``/dashboard/sites/{id}``
   (signed-in session), ``--reads`` times each; target under 1 s of server time at 100,000 GPUs.
4. **bytes per snapshot**: database size before and after ``--growth`` ingested snapshots
   (PostgreSQL: ``pg_database_size`` plus ``pg_total_relation_size`` of the largest tables;
   SQLite: the file after a WAL checkpoint).

``--smoke``: 10 and 100 hosts, SQLite only, a few runs. ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, text, update  # noqa: E402

from bench.fleet import pg_create, pg_drop  # noqa: E402
from contract.keys import raw_public  # noqa: E402
from server.compliance import hosts as host_judgement  # noqa: E402
from server.compliance import settle  # noqa: E402
from server.policy.aggregate import OrgAggregate, SiteAggregate  # noqa: E402
from server.store.compliance_models import HostState, OrgState, SiteState  # noqa: E402
from server.store.models import (  # noqa: E402
    ChainHead,
    Host,
    InventoryAccelerator,
    InventoryWeight,
    Site,
)
from tests.server.builders import HostKit, h100_accelerators  # noqa: E402

CHUNK = 2000


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "n": len(ordered),
    }


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


def populate(svc: Any, site_id: str, org_id: str, hosts: int) -> tuple[list[HostKit], float]:
    """Bulk-insert ``hosts`` enrolled hosts with inventory and contributions; returns kits."""
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    on = now.date()
    site_agg, org_agg = SiteAggregate(), OrgAggregate()
    kits = []
    host_rows, head_rows, state_rows, acc_rows, weight_rows = [], [], [], [], []
    for i in range(hosts):
        kit = HostKit(site_id, index=i)
        kits.append(kit)
        snap = kit.snapshot(now=now - timedelta(minutes=5))
        contribution = svc.policy.contribution(snap, on, country="DE")
        site_agg.apply(None, contribution)
        org_agg.apply(None, contribution)
        digest = f"{i:064x}"
        host_rows.append(
            {
                "key_id": kit.key_id,
                "public_key": raw_public(kit.key.public_key()),
                "site_id": site_id,
                "status": "active",
                "machine_id": kit.machine_id,
                "hostname": f"gpu-{i:05d}",
                "facts": "{}",
                "enrolled_at": now,
                "revoked_at": None,
                "last_seen_at": now,
            }
        )
        head_rows.append(
            {"key_id": kit.key_id, "seq": 0, "digest": None, "inventory_digest": None}
            | {"updated_at": now}
        )
        state_rows.append(
            {
                "key_id": kit.key_id,
                "site_id": site_id,
                "org_id": org_id,
                "contribution": json.dumps(contribution.to_json()),
                "applied": json.dumps(contribution.to_json()),  # already in the site total
                "pending": False,
                "revoked": False,
                "collected_at": snap.collected_at_datetime(),
                "status": "affirming",
                "snapshot_digest": digest,
                "accelerators": len(snap.accelerators),
                "tpp": sum(m.tpp for m in contribution.models.values()),
            }
        )
        for acc in snap.accelerators:
            acc_rows.append(
                {
                    "key_id": kit.key_id,
                    "uuid": acc.uuid,
                    "serial": acc.serial,
                    "vendor": acc.vendor,
                    "model": acc.model,
                    "pci_device_id": acc.pci_device_id,
                    "pci_bus_id": acc.pci_bus_id,
                    "memory_mib": acc.memory_mib,
                    "source": acc.source,
                    "snapshot_digest": digest,
                }
            )
        for root in snap.storage:
            for f in root.files:
                weight_rows.append(
                    {
                        "key_id": kit.key_id,
                        "sha256": f.sha256,
                        "path": f.path,
                        "size": f.size,
                        "format": f.format,
                        "root": root.root,
                        "encryption": root.encryption.status,
                        "snapshot_digest": digest,
                    }
                )
    for table, rows in (
        (Host, host_rows),
        (ChainHead, head_rows),
        (HostState, state_rows),
        (InventoryAccelerator, acc_rows),
        (InventoryWeight, weight_rows),
    ):
        for chunk in _chunks(rows):
            with svc.db.write() as s:
                s.execute(insert(table), chunk)
    with svc.db.write() as s:
        s.execute(update(Site).where(Site.id == site_id).values(authorized_tpp=1e12))
        s.merge(
            SiteState(
                site_id=site_id,
                aggregate=json.dumps(site_agg.to_json()),
                status="affirming",
                policy_digest=svc.policy.digest,
                updated_at=now,
            )
        )
        s.merge(
            OrgState(
                org_id=org_id,
                aggregate=json.dumps(org_agg.to_json()),
                status="affirming",
                policy_digest=svc.policy.digest,
                updated_at=now,
            )
        )
    if svc.db.is_sqlite:
        with svc.db.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    else:
        with svc.db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    return kits, time.perf_counter() - t0


def time_updates(svc: Any, site_id: str, kits: list[HostKit], n: int) -> list[float]:
    """judge_host + record_hosts + settle_site + commit for a new snapshot of a random host
    (8 <-> 7 GPUs)."""
    rng = random.Random(11)
    out = []
    flip: dict[int, bool] = {}
    for j in range(n):
        i = rng.randrange(len(kits))
        kit = kits[i]
        flip[i] = not flip.get(i, False)
        count = 7 if flip[i] else 8
        snap = kit.snapshot(accelerators=h100_accelerators(kit.index)[:count])
        digest = f"{j + 10**9:064x}"
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        with svc.db.write() as s:
            judged = host_judgement.judge_host(s, svc.policy, snap, kit.key_id, site_id)
            update = host_judgement.host_update(
                key_id=kit.key_id,
                snapshot=snap,
                digest=digest,
                judgement=judged,
                findings=judged.findings,
                now=now,
            )
            host_judgement.record_hosts(s, [update])
            settle.settle_site(s, svc.policy, site_id, now, svc.compliance)
        out.append(time.perf_counter() - t0)
    return out


def db_bytes(svc: Any) -> dict[str, int]:
    if svc.db.is_sqlite:
        with svc.db.engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        path = Path(str(svc.db.engine.url.database))
        return {"total": sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))}
    out = {}
    with svc.db.engine.connect() as conn:
        out["total"] = int(
            conn.execute(text("SELECT pg_database_size(current_database())")).one()[0]
        )
        for table in ("snapshots", "audit_log", "findings", "inventory_accelerators", "host_state"):
            out[table] = int(
                conn.execute(text(f"SELECT pg_total_relation_size('{table}')")).one()[0]
            )
        out["envelope_bytes"] = int(
            conn.execute(
                text("SELECT coalesce(sum(octet_length(envelope)),0) FROM snapshots")
            ).one()[0]
        )
    return out


def measure(
    db_url: str | None, data_dir: Path, hosts: int, args: argparse.Namespace
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from server.api.app import create_app
    from server.config import Settings
    from tests.server.conftest import seed

    settings = (
        Settings(data_dir=data_dir, database_url=db_url) if db_url else Settings(data_dir=data_dir)
    )
    app = create_app(settings)
    svc = app.state.veu
    try:
        site_id, admin, auditor = seed(svc)
        with svc.db.read() as s:
            site = s.get(Site, site_id)
            assert site is not None
            org_id = site.org_id
        kits, populate_s = populate(svc, site_id, org_id, hosts)
        updates = time_updates(svc, site_id, kits, args.updates)
        out: dict[str, Any] = {
            "hosts": hosts,
            "gpus": hosts * 8,
            "populate_s": round(populate_s, 1),
            "site_status_update": _ms(updates),
        }
        with TestClient(app) as client:
            auth = {"Authorization": f"Bearer {auditor}"}
            growth = min(args.growth, len(kits))
            # Round 1: each host's first link (its inventory rows are rewritten); round 2: the
            # next link with an unchanged inventory (steady state: inventory not rewritten).
            for round_ in ("first_link", "steady"):
                before = db_bytes(svc)
                ingest = []
                for kit in kits[:growth]:
                    data = kit.next_envelope()
                    t0 = time.perf_counter()
                    r = client.post(
                        "/v1/snapshots", content=data, headers={"Content-Type": "application/json"}
                    )
                    ingest.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise RuntimeError(f"ingest failed: {r.status_code} {r.text[:300]}")
                after = db_bytes(svc)
                out[f"ingest_post_{round_}"] = _ms(ingest)
                out[f"bytes_per_snapshot_{round_}"] = {
                    k: round((after[k] - before.get(k, 0)) / growth) for k in after
                }
            out["snapshots_for_bytes"] = growth
            status = []
            for _ in range(args.reads):
                t0 = time.perf_counter()
                r = client.get(f"/v1/sites/{site_id}/status", headers=auth)
                status.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            body = r.json()
            out["status_api"] = _ms(status)
            out["status_api_bytes"] = len(r.content)
            out["status_accelerators"] = body["accelerators"]
            form = client.get("/dashboard/login").text
            csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            login = client.post(
                "/dashboard/login",
                data={"api_key": admin, "next": "/dashboard/", "csrf": csrf},
                follow_redirects=False,
            )
            assert login.status_code == 303, login.text[:300]
            page = []
            for _ in range(args.reads):
                t0 = time.perf_counter()
                r = client.get(f"/dashboard/sites/{site_id}")
                page.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text[:300]
            out["dashboard_page"] = _ms(page)
            out["dashboard_page_bytes"] = len(r.content)
        return out
    finally:
        svc.db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=os.environ.get("VEU_TEST_PG_URL"))
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--small", type=int, default=125, help="hosts at the small site")
    parser.add_argument("--big", type=int, default=12_500, help="hosts at the big site")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--reads", type=int, default=5)
    parser.add_argument("--growth", type=int, default=100, help="snapshots for bytes/snapshot")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.small, args.big, args.updates, args.reads, args.growth = 10, 100, 6, 2, 5
        args.pg_url = None
    backends: list[str] = [] if args.no_sqlite else ["sqlite"]
    if args.pg_url:
        backends.append("postgresql")
    results: dict[str, Any] = {"load_before": [round(x, 2) for x in os.getloadavg()]}
    ok = True
    for backend in backends:
        for label, hosts in (("small", args.small), ("big", args.big)):
            with tempfile.TemporaryDirectory(prefix="veu-scale-") as tmp:
                data = Path(tmp) / "data"
                name = None
                url = None
                if backend == "postgresql":
                    url, name = pg_create(args.pg_url)
                try:
                    figures = measure(url, data, hosts, args)
                finally:
                    if name:
                        pg_drop(args.pg_url, name)
            figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
            results[f"{backend}_{label}"] = figures
            print(f"{backend} {label}: {json.dumps(figures)}", flush=True)
        small = results[f"{backend}_small"]["site_status_update"]["median_ms"]
        big = results[f"{backend}_big"]["site_status_update"]["median_ms"]
        ratio = big / small if small else float("inf")
        reads = max(
            results[f"{backend}_big"]["status_api"]["max_ms"],
            results[f"{backend}_big"]["dashboard_page"]["max_ms"],
        )
        results[f"{backend}_ratio_big_small"] = round(ratio, 2)
        within = ratio <= 2.0 and reads < 1000
        ok = ok and (within or args.smoke)
        print(
            f"{backend}: site status update median {small} ms ({args.small * 8} GPUs) vs {big} ms "
            f"({args.big * 8} GPUs): ratio {ratio:.2f} (target <= 2); slowest read at the big "
            f"site {reads} ms (target < 1000); {'PASS' if within else 'FAIL'}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
