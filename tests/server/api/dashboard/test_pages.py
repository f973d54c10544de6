"""Dashboard pages against a real app on a real SQLite file with a seeded fleet."""

from __future__ import annotations

import re

from server.api.dashboard import session
from tests.server.api.dashboard.conftest import Env, sign_in


def test_pages_redirect_to_sign_in_without_a_session(env: Env) -> None:
    client = env.client(role=None)
    for path in [
        "/dashboard/",
        f"/dashboard/sites/{env.fleet.sites['de-fra']}",
        "/dashboard/findings",
    ]:
        resp = client.get(path, follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/dashboard/login?next=")


def test_sign_in_with_a_wrong_key_is_refused_and_sets_no_cookie(env: Env) -> None:
    client = env.client(role=None)
    resp = sign_in(client, "veu_wrong")
    assert resp.status_code == 401
    assert "not valid" in resp.text
    assert session.COOKIE not in resp.headers.get("set-cookie", "")


def test_session_cookie_is_httponly_strict_and_never_holds_the_key(env: Env) -> None:
    client = env.client(role=None)
    resp = sign_in(client, env.fleet.admin_key)
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith(session.COOKIE))
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert env.fleet.admin_key not in cookie
    import hashlib

    assert hashlib.sha256(env.fleet.admin_key.encode()).hexdigest() not in cookie


def test_tampered_session_cookie_is_not_a_session(env: Env) -> None:
    client = env.client("auditor")
    value = client.cookies.get("veu_session")
    assert value is not None
    tampered = value[:-1] + ("A" if value[-1] != "A" else "B")
    client.cookies.clear()
    client.cookies.set("veu_session", tampered, path="/dashboard")
    assert client.get("/dashboard/", follow_redirects=False).status_code == 303


def test_revoking_the_api_key_ends_its_session(env: Env) -> None:
    from datetime import UTC, datetime

    from server.store.models import ApiKey

    client = env.client("auditor")
    assert client.get("/dashboard/").status_code == 200
    with env.svc.db.write() as s:
        for row in s.query(ApiKey).filter_by(role="auditor"):
            row.revoked_at = datetime.now(UTC)
    assert client.get("/dashboard/", follow_redirects=False).status_code == 303


def test_overview_shows_sites_with_status_tpp_bars_hosts_and_findings(env: Env) -> None:
    page = env.client("auditor").get("/dashboard/").text
    assert "Fleet overview" in page
    over = page[page.index("over-ams") :]
    row = over[: over.index("</tr>")]
    assert "Violation" in row and "✗" in row  # status as symbol and word
    assert "126,656 / 100,000" in row  # installed vs authorized TPP with numbers
    assert 'role="img"' in row and "over the authorization" in row  # the bar says it too
    assert "OVER" in row.upper()
    assert "Acme AI" in page
    assert re.search(r"\d+ fresh", page)
    assert "Open findings" in page


def test_every_asset_is_served_by_the_server_itself(env: Env) -> None:
    client = env.client("auditor")
    page = client.get("/dashboard/").text
    assets = re.findall(r'(?:href|src)="([^"#]+\.(?:css|js|svg))"', page)
    assert assets
    for url in assets:
        assert url.startswith("/static/"), url
        assert client.get(url).status_code == 200
    assert "http://" not in page and "https://" not in page


def test_organization_page_shows_distribution_chart_table_and_denominator(env: Env) -> None:
    page = env.client("auditor").get(f"/dashboard/orgs/{env.fleet.org_id}").text
    assert "<svg" in page and "Share of installed TPP by country" in page
    assert "Denominator:" in page
    # 3 + 2 + 1 + 1 hosts of 8 H100 (15,832 TPP each): 886,592 TPP in the denominator
    assert "886,592" in page
    ae = page[page.index("<td>AE</td>") :]
    assert "Violation" in ae[: ae.index("</tr>")]  # 14.29% > 7%
    assert "≥ 75" in page or "75%" in page
    assert "50" in page  # U.S. HQ threshold
    assert "ai-diffusion-2025" in page


def test_site_page_shows_hosts_accelerators_weights_findings_and_shipments(env: Env) -> None:
    site = env.fleet.sites["us-east"]
    page = env.client("admin").get(f"/dashboard/sites/{site}").text
    assert "nvidia-h100-sxm" in page and "3A090" in page
    assert "unencrypted" in page and "encrypted" in page
    assert "frontier-x" in page  # files of a registered model
    assert "shp_1" in page  # shipment vs observed: 2 listed, 1 seen, 1 not seen
    assert re.search(
        r'<td class="n">2</td><td class="n">1</td><td class="n"><strong>1</strong>', page
    )
    assert "gpu-0001" in page
    assert 'id="attest-now"' in page  # admin sees the action


def test_site_findings_show_their_citation(env: Env) -> None:
    site = env.fleet.sites["over-ams"]
    page = env.client("auditor").get(f"/dashboard/sites/{site}").text
    assert "site.authorized-tpp" in page
    assert "15 CFR part 748, Supp. No. 10, para. 3" in page
    assert "rests on unconfirmed figures" in page  # confidence S


def test_host_page_shows_timeline_gap_rejections_and_envelope_download(env: Env) -> None:
    key = env.fleet.hosts["us-east"][0]
    client = env.client("auditor")
    page = client.get(f"/dashboard/hosts/{key}").text
    assert "Snapshot timeline" in page
    assert "gap: 1 snapshot(s) missing before seq 3" in page
    assert "chain.gap" in page
    digest = env.fleet.digests[key][-1]
    assert f"/dashboard/snapshots/{digest}/envelope" in page
    raw = client.get(f"/dashboard/snapshots/{digest}/envelope")
    assert raw.status_code == 200
    from tests.server.builders import digest_of

    assert digest_of(raw.content) == digest
    over = env.fleet.hosts["over-ams"][0]
    page = client.get(f"/dashboard/hosts/{over}").text
    assert "fork" in page and "rejected signed snapshot" in page


def _rows(page: str) -> str:
    return page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]


def test_findings_page_filters_by_site_severity_condition_and_state(env: Env) -> None:
    client = env.client("auditor")
    page = _rows(client.get("/dashboard/findings").text)
    assert "site.authorized-tpp" in page and "org.universal-country-share" in page
    assert "site.hosts-fresh" not in page  # closed
    closed = _rows(client.get("/dashboard/findings?state=closed").text)
    assert "site.hosts-fresh" in closed and "2025-10-03" in closed
    sev = _rows(client.get("/dashboard/findings?severity=warning").text)
    assert "chain.gap" in sev and "site.authorized-tpp" not in sev
    over = env.fleet.sites["over-ams"]
    by_site = _rows(client.get(f"/dashboard/findings?site={over}").text)
    assert "site.authorized-tpp" in by_site and "chain.gap" not in by_site
    cond = _rows(client.get("/dashboard/findings?condition=chain.gap&state=all").text)
    assert "chain.gap" in cond and "site.authorized-tpp" not in cond


def test_finding_history_lists_opened_and_closed_occurrences(env: Env) -> None:
    ae = env.fleet.sites["ae-dxb"]
    client = env.client("auditor")
    page = _rows(
        client.get(
            "/dashboard/findings",
            params={"subject": f"site:{ae}", "state": "all"},
        ).text
    )
    assert "2025-10-01" in page and "2025-10-03" in page and "(closed)" in page


def test_unknown_ids_answer_a_not_found_page(env: Env) -> None:
    client = env.client("auditor")
    assert client.get("/dashboard/sites/nope").status_code == 404
    assert client.get("/dashboard/hosts/" + "f" * 64).status_code == 404
    assert client.get("/dashboard/orgs/nope").status_code == 404
    assert client.get("/dashboard/hosts/../../etc").status_code == 404


def test_status_is_never_colour_alone(env: Env) -> None:
    page = env.client("auditor").get("/dashboard/").text
    for badge in re.findall(r'<span class="badge [a-z]+">(.*?)</span>\s*(\w[^<]*)', page):
        assert badge[1].strip(), badge
