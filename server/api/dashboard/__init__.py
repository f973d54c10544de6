"""The compliance dashboard: server-rendered pages, sign-in with an API key, signed reports.

``mount(app)`` adds the pages under ``/dashboard`` and their assets under ``/static``; every
stylesheet and script is served from this package (no CDN, no web fonts).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from server.api.dashboard.views import router

STATIC = Path(__file__).parent / "static"

__all__ = ["STATIC", "mount", "router"]


def mount(app: FastAPI) -> None:
    """Add the dashboard to ``app`` (once; a second call does nothing)."""
    if getattr(app.state, "dashboard_mounted", False):
        return
    app.state.dashboard_mounted = True
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def _home() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=307)
