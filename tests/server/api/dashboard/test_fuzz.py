"""Fuzzing the dashboard's routes, which schemathesis (it reads the OpenAPI document) never sees.

Every GET route under /dashboard is called signed in, with arbitrary path segments and arbitrary
values (huge integers, dates out of range, odd text) for each query parameter it declares: the
answer is never a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.api.dashboard.views import router
from server.policy import PolicySet
from tests.server.api.dashboard.conftest import Env, make_env


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, TestClient]]:
    from server.reports import load_default_policy

    policy: PolicySet = load_default_policy()
    env = make_env(Path(tmp_path_factory.mktemp("fuzz")), policy)
    client = env.client("admin")
    client.__enter__()
    yield env, client
    client.__exit__(None, None, None)
    env.svc.db.dispose()


def _routes() -> list[tuple[str, list[str], list[str]]]:
    out = []
    for route in router.routes:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            params = [p.name for p in route.dependant.path_params]
            query = [p.alias for p in route.dependant.query_params]
            out.append((route.path, params, query))
    return out


ROUTES = _routes()
VALUES = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+23:59",
            "0001-01-01T00:00:00-23:59",
            "9223372036854775808",
            "99999999999999999999999",
            "-1",
            "NaN",
            "",
            "\x00",
            "%00",
            "../../etc/passwd",
            "\u202egnp.exe",
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_dashboard_route_answers_5xx_to_any_query(
    fuzz_env: tuple[Env, TestClient], data: st.DataObject
) -> None:
    _, client = fuzz_env
    path, params, query = data.draw(st.sampled_from(ROUTES))
    url = path
    for name in params:
        segment = data.draw(st.text(min_size=1, max_size=30))
        url = url.replace("{" + name + "}", quote(segment, safe=""))
    values: dict[str, Any] = {
        name: data.draw(VALUES) for name in query if data.draw(st.booleans(), label=name)
    }
    response = client.get(url, params=values, follow_redirects=False)
    assert response.status_code < 500, (url, values, response.text[:300])


@pytest.mark.parametrize(
    "url",
    [
        "/dashboard/sites/{site}/attest-status?since=0001-01-01T00:00:00Z",
        "/dashboard/hosts/{host}?before=99999999999999999999999",
        "/dashboard/findings?after=9223372036854775808",
    ],
)
def test_out_of_range_query_values_are_4xx(fuzz_env: tuple[Env, TestClient], url: str) -> None:
    env, client = fuzz_env
    site = next(iter(env.fleet.sites.values()))
    host = sorted(next(iter(env.fleet.hosts.values())))[0]
    response = client.get(url.format(site=site, host=host), follow_redirects=False)
    assert 400 <= response.status_code < 500, response.text[:300]
