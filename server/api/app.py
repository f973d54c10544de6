"""The FastAPI application factory.

``create_app(settings)`` wires the database, the verifier key and the routes. Migrations run here
unless ``migrate=False`` (``veu-server serve`` migrates once before starting its workers).
``create_app_from_env`` is the factory uvicorn workers import.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from server.api import errors
from server.api.deps import Metrics, Services
from server.api.routes_agents import router as agents_router
from server.api.routes_read import router as read_router
from server.api.routes_snapshots import router as snapshots_router
from server.config import Settings
from server.db import Database, engine_for
from server.results import load_or_create_key
from server.store.migrate import upgrade
from server.verify import VerifyConfig

ENV_NO_MIGRATE = "VEU_NO_MIGRATE"


def create_app(settings: Settings, *, migrate: bool = True) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if migrate:
        upgrade(settings.resolved_database_url())
    db = Database(engine_for(settings))
    svc = Services(
        settings=settings,
        db=db,
        key=load_or_create_key(settings.verifier_key_path),
        verify=VerifyConfig(max_bytes=settings.max_body_bytes),
        metrics=Metrics(),
    )
    app = FastAPI(
        title="VEU Attest verifier",
        version="1",
        description="Enrolls hosts, appraises signed inventory snapshots, answers signed results.",
    )
    app.state.veu = svc
    errors.install(app)
    app.include_router(agents_router)
    app.include_router(snapshots_router)
    app.include_router(read_router)
    return app


def create_app_from_env() -> FastAPI:
    """Uvicorn factory (``--workers``): settings from VEU_DATA_DIR / VEU_DATABASE_URL."""
    return create_app(Settings.from_env(), migrate=os.environ.get(ENV_NO_MIGRATE) != "1")
