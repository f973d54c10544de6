"""No N+1: every page costs the same number of SQL statements with 7 hosts or with 1,200."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

from server.policy import PolicySet
from tests.server.api.dashboard.conftest import Env, make_env


@contextmanager
def counting(env: Env) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = env.svc.db.engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _pages(env: Env) -> dict[str, str]:
    site = env.fleet.sites["us-east"]
    host = env.fleet.hosts["us-east"][0]
    return {
        "overview": "/dashboard/",
        "org": f"/dashboard/orgs/{env.fleet.org_id}",
        "site": f"/dashboard/sites/{site}",
        "host": f"/dashboard/hosts/{host}",
        "findings": "/dashboard/findings?state=all",
    }


def _costs(env: Env) -> dict[str, int]:
    client = env.client("auditor")
    out = {}
    for name, url in _pages(env).items():
        client.get(url)  # warm caches (policy pack, compiled statements)
        with counting(env) as statements:
            assert client.get(url).status_code == 200
        out[name] = len(statements)
    return out


def test_pages_cost_a_fixed_number_of_queries_whatever_the_fleet_size(
    tmp_path: Path, policy: PolicySet
) -> None:
    small = make_env(tmp_path / "small", policy)
    large = make_env(tmp_path / "large", policy, bulk_hosts=1200)
    try:
        small_costs, large_costs = _costs(small), _costs(large)
    finally:
        small.svc.db.dispose()
        large.svc.db.dispose()
    assert small_costs == large_costs
    assert max(large_costs.values()) <= 15, large_costs


def test_site_page_paginates_1200_hosts(tmp_path: Path, policy: PolicySet) -> None:
    env = make_env(tmp_path, policy, bulk_hosts=1200)
    try:
        client = env.client("auditor")
        site = env.fleet.sites["us-east"]
        seen: set[str] = set()
        url: str | None = f"/dashboard/sites/{site}"
        pages = 0
        import re

        while url is not None:
            page = client.get(url).text
            pages += 1
            seen.update(re.findall(r'href="/dashboard/hosts/([0-9a-f]{64})"', page))
            nxt = re.search(r'rel="next" href="([^"]+)"', page)
            url = nxt.group(1).replace("&amp;", "&") if nxt else None
        assert len(seen) == 1203  # 1,200 bulk hosts and the 3 reporting ones
        assert pages == 25  # 50 per page
        overview = client.get("/dashboard/").text
        assert "120 stale" in overview  # every tenth bulk host is two hours old
    finally:
        env.svc.db.dispose()
