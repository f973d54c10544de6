"""The FastAPI application factory.

``create_app(settings)`` wires the database, the verifier key and the routes. Migrations run here
unless ``migrate=False`` (``veu-server serve`` migrates once before starting its workers).
``create_app_from_env`` is the factory uvicorn workers import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api import errors
from server.api.deps import Metrics, Services
from server.api.limits import BodyLimits, StrictTransport
from server.api.routes_agents import router as agents_router
from server.api.routes_compliance import router as compliance_router
from server.api.routes_log import router as log_router
from server.api.routes_read import router as read_router
from server.api.routes_snapshots import IngestFastPath
from server.api.routes_snapshots import router as snapshots_router
from server.appraise import VerifyConfig
from server.compliance.jobs import judge_in_background
from server.compliance.policy_sync import PolicyWatch, reload_policy, watch_thread
from server.compliance.settle import ComplianceConfig
from server.config import Settings
from server.policy import PackError, PolicySet, load_policy_set
from server.results import load_or_create_key
from server.store.db import Database, engine_for
from server.store.migrate import upgrade

ENV_NO_MIGRATE = "VEU_NO_MIGRATE"

log = logging.getLogger("veu.server")


def _handle_sighup(svc: Services) -> bool:
    """In a process serving alone (``serve`` without ``--workers``), SIGHUP reloads the packs.
    Only the main thread's event loop may take signals (not a test client's thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            fresh = reload_policy(svc, "signal:SIGHUP")
            log.info("SIGHUP: policy packs reloaded, digest %s", fresh.digest)
        except (PackError, OSError) as exc:
            log.error("SIGHUP: policy packs not reloaded; keeping %s: %s", svc.policy.digest, exc)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload))
        return True
    return False


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
    svc.policy_watch = watch = PolicyWatch(svc)
    watch.check()  # a process started after a reload judges by the recorded packs at once

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        svc.start_integrator()
        if settings.refresh_interval_s > 0 or settings.settle_interval_s > 0:
            thread = threading.Thread(
                target=judge_in_background,
                args=(svc.db, lambda: svc.policy, svc.compliance, svc.now),
                kwargs={
                    "settle_interval_s": settings.settle_interval_s,
                    "refresh_interval_s": settings.refresh_interval_s,
                    "stop": stop,
                },
                name="veu-judge",
                daemon=True,
            )
            thread.start()
        watcher = watch_thread(watch, stop)
        hup = _handle_sighup(svc)
        try:
            yield
        finally:
            stop.set()
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if thread is not None:
                thread.join(timeout=5)
            if watcher is not None:
                watcher.join(timeout=5)
            svc.close()

    app = FastAPI(
        lifespan=lifespan,
        title="VEU Attest verifier",
        version="1",
        description="Enrolls hosts, appraises signed inventory snapshots, answers signed results.",
        # The interactive pages load scripts from a CDN into the dashboard's origin; the
        # document itself stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.veu = svc
    errors.install(app)
    app.add_middleware(IngestFastPath)
    app.add_middleware(BodyLimits)  # before any route reads a byte
    app.add_middleware(StrictTransport)
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
