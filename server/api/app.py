"""The FastAPI application factory.

``create_app(settings)`` wires the database, the verifier key and the routes. Migrations run here
unless ``migrate=False`` (``veu-server serve`` migrates once before starting its workers).
``create_app_from_env`` is the factory uvicorn workers import.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import select

from server.api import errors
from server.api.deps import Metrics, Services
from server.api.routes_agents import router as agents_router
from server.api.routes_compliance import router as compliance_router
from server.api.routes_log import router as log_router
from server.api.routes_read import router as read_router
from server.api.routes_snapshots import IngestFastPath
from server.api.routes_snapshots import router as snapshots_router
from server.appraise import VerifyConfig
from server.compliance.settle import ComplianceConfig, refresh_site
from server.config import Settings
from server.policy import PolicySet, load_policy_set
from server.results import load_or_create_key
from server.store.db import Database, engine_for
from server.store.migrate import upgrade
from server.store.models import Site

ENV_NO_MIGRATE = "VEU_NO_MIGRATE"

log = logging.getLogger("veu.server")


def refresh_all_sites(svc: Services) -> int:
    """Re-judge every site without new evidence (hosts going stale, shipped chips not seen).

    Each site is its own short transaction, so the periodic task never holds locks for long;
    several workers running it at once only repeat idempotent work.
    """
    with svc.db.read() as session:
        site_ids = list(session.scalars(select(Site.id).order_by(Site.id)))
    for site_id in site_ids:
        with svc.db.write() as session:
            refresh_site(session, svc.policy, site_id, svc.now(), svc.compliance)
    return len(site_ids)


def _background(svc: Services, stop: threading.Event) -> None:
    """Settle sites with new evidence every ``settle_interval_s`` and re-judge every site every
    ``refresh_interval_s`` (either 0 = off)."""
    settle, refresh = svc.settings.settle_interval_s, svc.settings.refresh_interval_s
    tick = min(t for t in (settle, refresh) if t > 0)
    next_refresh = time.monotonic() + refresh
    while not stop.wait(tick):
        try:
            if refresh > 0 and time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + refresh
                refresh_all_sites(svc)
            elif settle > 0:
                svc.settle(skip_locked=True)
        except Exception:  # keep the task alive; the next round tries again
            log.exception("background site judgement failed")


def create_app(settings: Settings, *, migrate: bool = True) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if migrate:
        upgrade(settings.resolved_database_url())
    db = Database(engine_for(settings))
    policy: PolicySet = load_policy_set(settings.policies_dir)
    svc = Services(
        settings=settings,
        db=db,
        key=load_or_create_key(settings.verifier_key_path),
        verify=VerifyConfig(max_bytes=settings.max_body_bytes),
        metrics=Metrics(),
        policy=policy,
        compliance=ComplianceConfig(max_host_age=settings.max_host_age),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        svc.start_integrator()
        if settings.refresh_interval_s > 0 or settings.settle_interval_s > 0:
            thread = threading.Thread(
                target=_background, args=(svc, stop), name="veu-judge", daemon=True
            )
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            svc.close()

    app = FastAPI(
        lifespan=lifespan,
        title="VEU Attest verifier",
        version="1",
        description="Enrolls hosts, appraises signed inventory snapshots, answers signed results.",
    )
    app.state.veu = svc
    errors.install(app)
    app.add_middleware(IngestFastPath)
    app.include_router(agents_router)
    app.include_router(snapshots_router)
    app.include_router(read_router)
    app.include_router(compliance_router)
    app.include_router(log_router)
    from server.api import dashboard
    from server.api.dashboard.metrics import register_compliance_metrics

    dashboard.mount(app)
    register_compliance_metrics(svc.metrics.registry, db, max_host_age=settings.max_host_age)
    return app


def create_app_from_env() -> FastAPI:
    """Uvicorn factory (``--workers``): settings from VEU_DATA_DIR / VEU_DATABASE_URL."""
    return create_app(Settings.from_env(), migrate=os.environ.get(ENV_NO_MIGRATE) != "1")
