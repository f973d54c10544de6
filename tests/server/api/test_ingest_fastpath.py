"""The ingest fast path (``IngestFastPath``) answers exactly what the declared FastAPI route
answers, and the per-process ingest limit (``Settings.ingest_concurrency``) holds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import server.api.routes_snapshots as routes
from server.config import ENV_INGEST_CONCURRENCY, ConfigError, Settings
from server.ingest import Ingest, Outcome
from tests.server.builders import HostKit
from tests.server.conftest import Api, seed


def _app(tmp_path: Path, *, fast_path: bool = True, **settings: Any) -> Any:
    from server.api.app import create_app

    options: dict[str, Any] = {"refresh_interval_s": 0.0, "settle_interval_s": 0.0} | settings
    app = create_app(Settings(data_dir=tmp_path / "data", **options))
    if not fast_path:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not routes.IngestFastPath]
        app.middleware_stack = None  # rebuilt on the first request
    return app


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Api, Api]]:
    """The same verifier twice: with the fast path, and with only the declared route."""
    from fastapi.testclient import TestClient

    apis = []
    clients = []
    for name, fast in (("fast", True), ("route", False)):
        app = _app(tmp_path / name, fast_path=fast)
        svc = app.state.veu
        site_id, admin, auditor = seed(svc)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append((client, svc))
        apis.append(Api(client, svc, site_id, admin, auditor))
    yield apis[0], apis[1]
    for client, svc in clients:
        client.__exit__(None, None, None)
        svc.db.dispose()


def _enrolled(api: Api) -> HostKit:
    kit = HostKit(api.site_id, index=0)
    response = api.client.post(  # type: ignore[attr-defined]
        "/v1/enroll", json=kit.enroll_body(api.token())
    )
    assert response.status_code == 200, response.text
    return kit


def _post(api: Api, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    response = api.client.post(  # type: ignore[attr-defined]
        "/v1/snapshots", content=body, headers={"Content-Type": content_type}
    )
    return response.status_code, response.json()


def test_the_fast_path_is_installed_and_the_route_stays_declared(pair: tuple[Api, Api]) -> None:
    fast, _ = pair
    app = fast.client.app  # type: ignore[attr-defined]
    assert any(m.cls is routes.IngestFastPath for m in app.user_middleware)
    schema = fast.client.get("/openapi.json").json()  # type: ignore[attr-defined]
    assert "post" in schema["paths"]["/v1/snapshots"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{}", "text/plain"),  # 415
        (b"not json", "application/json"),  # malformed
        (b'{"payloadType": 1}', "application/json"),  # bad envelope
        (b"[" * 100 + b"]" * 100, "application/json"),  # too deep
        (b"\xff\xfe", "application/json"),  # not UTF-8
    ],
)
def test_refusals_are_identical_on_both_paths(
    pair: tuple[Api, Api], body: bytes, content_type: str
) -> None:
    fast, route = pair
    assert _post(fast, body, content_type) == _post(route, body, content_type)


def test_an_oversized_body_is_refused_alike(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    answers = []
    for name, fast in (("fast", True), ("route", False)):
        app = _app(tmp_path / name, fast_path=fast, max_body_bytes=1000)
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.post(
                "/v1/snapshots", content=b" " * 5000, headers={"Content-Type": "application/json"}
            )
            answers.append((response.status_code, response.json()))
        app.state.veu.db.dispose()
    assert answers[0] == answers[1]
    assert answers[0][0] == 413 and answers[0][1]["code"] == "too_large"


def test_accepted_snapshots_get_the_same_shape_on_both_paths(pair: tuple[Api, Api]) -> None:
    shapes = []
    for api in pair:
        kit = _enrolled(api)
        status, body = _post(api, kit.next_envelope())
        assert status == 200, body
        shapes.append((sorted(body), body["status"], body["duplicate"]))
    assert shapes[0] == shapes[1]


def test_an_unexpected_failure_is_the_generic_json_500(
    pair: tuple[Api, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ingest: object, data: bytes) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(Ingest, "appraise", broken)
    fast, route = pair
    for api in (fast, route):
        status, body = _post(api, b"{}")
        assert status == 500
        assert body["code"] == "internal_error"
        assert "boom" not in body["detail"]


def test_other_methods_and_paths_still_reach_the_app(pair: tuple[Api, Api]) -> None:
    fast, route = pair
    for path in ("/v1/snapshots", "/v1/snapshots/"):
        a = fast.client.get(path)  # type: ignore[attr-defined]
        b = route.client.get(path)  # type: ignore[attr-defined]
        assert (a.status_code, a.json()) == (b.status_code, b.json())
    assert fast.client.get("/healthz").status_code == 200  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the ingest limit


def test_default_ingest_concurrency_depends_on_the_database() -> None:
    assert Settings().effective_ingest_concurrency == 1
    assert Settings(database_url="postgresql://x/y").effective_ingest_concurrency == 4
    assert Settings(ingest_concurrency=3).effective_ingest_concurrency == 3
    assert Settings(ingest_concurrency=0).effective_ingest_concurrency == 1


def test_ingest_concurrency_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_INGEST_CONCURRENCY, "3")
    assert Settings.from_env().effective_ingest_concurrency == 3
    monkeypatch.setenv(ENV_INGEST_CONCURRENCY, "0")
    assert Settings.from_env().ingest_concurrency is None
    monkeypatch.setenv(ENV_INGEST_CONCURRENCY, "many")
    with pytest.raises(ConfigError, match=ENV_INGEST_CONCURRENCY):
        Settings.from_env()


@pytest.mark.parametrize("limit", [1, 3])
def test_no_more_ingests_run_at_once_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    app = _app(tmp_path, ingest_concurrency=limit)
    lock = threading.Lock()
    running = 0
    most = 0

    def slow(ingest: object, data: bytes) -> Outcome:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return Outcome("d" * 64, "affirming", "jwt", False)

    monkeypatch.setattr(Ingest, "appraise", slow)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://veu") as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/v1/snapshots", content=b"{}", headers={"Content-Type": "application/json"}
                    )
                    for _ in range(8)
                )
            )
        return [a.status_code for a in answers]

    # In a thread of its own: an earlier test (Playwright's sync API) may leave an event loop
    # running in this one, and asyncio.run refuses to nest.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, burst()).result() == [200] * 8
    assert most == limit
    app.state.veu.db.dispose()
