"""The compliance officer's path through the dashboard in a real browser.

Sign in, see the site above its authorization in violation, follow it to the finding and its
citation, request "attest now", download a signed report and verify it; no console errors on any
page; a screenshot of each page under test-artifacts/screenshots/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from server.reports import verify_report
from tests.browser.conftest import Served


def _watch(page: Any, errors: list[str]) -> None:
    page.on(
        "console",
        lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))


def _sign_in(page: Any, served: Served, shots: Path, prefix: str) -> None:
    page.goto(f"{served.url}/dashboard/")
    assert "/dashboard/login" in page.url
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.fill("#api_key", served.admin_key)
    page.screenshot(path=str(shots / f"{prefix}-01-sign-in.png"), full_page=True)
    page.click("button[type=submit]")
    page.wait_for_url(f"{served.url}/dashboard/")


def _over_site_row(page: Any, served: Served, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        row = page.locator("table.sites tr", has_text=served.over_site)
        if row.count() and "Violation" in row.first.inner_text():
            return row.first
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{served.over_site} never shown in violation:\n{page.inner_text('main')}"
            )
        time.sleep(2)
        page.reload()


def _journey(
    page: Any, served: Served, shots: Path, prefix: str, *, wait: float, answers: bool, tmp: Path
) -> None:
    errors: list[str] = []
    _watch(page, errors)
    _sign_in(page, served, shots, prefix)

    row = _over_site_row(page, served, wait)
    text = row.inner_text()
    assert "✗" in text and "OVER" in text.upper()
    page.screenshot(path=str(shots / f"{prefix}-02-overview.png"), full_page=True)

    row.get_by_role("link", name=served.over_site).click()
    finding = page.locator("li.finding", has_text="site.authorized-tpp")
    finding.wait_for()
    citation = finding.locator("dd.citation").inner_text()
    assert "CFR" in citation or "S10" in citation or "Supp" in citation, citation
    page.screenshot(path=str(shots / f"{prefix}-03-site-over-authorization.png"), full_page=True)

    if served.attest_site != served.over_site:
        page.goto(f"{served.url}/dashboard/")
        page.get_by_role("link", name=served.attest_site).first.click()
    page.get_by_role("button", name="Attest now").click()
    status = page.locator("#attest-status")
    status.filter(has_text="hosts answered").wait_for(timeout=30_000)
    if answers:
        deadline = time.monotonic() + 60
        while "0 of" in status.inner_text() and time.monotonic() < deadline:
            time.sleep(1)
        assert "0 of" not in status.inner_text(), status.inner_text()
    page.screenshot(path=str(shots / f"{prefix}-04-attest-now.png"), full_page=True)

    host_link = page.locator("table tbody a[href^='/dashboard/hosts/']").first
    host_link.click()
    page.get_by_role("heading", name="Snapshot timeline").wait_for()
    page.screenshot(path=str(shots / f"{prefix}-05-host.png"), full_page=True)

    page.goto(f"{served.url}/dashboard/findings")
    page.screenshot(path=str(shots / f"{prefix}-06-findings.png"), full_page=True)

    page.goto(f"{served.url}/dashboard/")
    page.locator("a[href^='/dashboard/orgs/']").first.click()
    page.get_by_role("heading", name="Geographic distribution of installed TPP").wait_for()
    assert "Denominator:" in page.inner_text("main")
    page.select_option("#format", "pdf")
    page.get_by_role("button", name="Create signed report").click()
    page.locator("#report-link").wait_for()
    page.screenshot(path=str(shots / f"{prefix}-07-organization-report.png"), full_page=True)
    with page.expect_download() as got:
        page.click("#report-link")
    report = tmp / "report.pdf"
    got.value.save_as(report)
    with page.expect_download() as got:
        page.click("#report-sig-link")
    sig = tmp / "report.pdf.sig"
    got.value.save_as(sig)
    assert report.read_bytes().startswith(b"%PDF-")
    assert verify_report(report.read_bytes(), sig.read_bytes(), served.public_key)
    assert errors == [], errors


def test_officer_journey_on_a_seeded_fleet(
    browser: Any, seeded_server: Served, shots: Path, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    try:
        _journey(page, seeded_server, shots, "seeded", wait=0, answers=False, tmp=tmp_path)
    finally:
        page.close()


@pytest.mark.timeout(600)
def test_officer_journey_on_the_demo_fleet(
    browser: Any, demo_server: Served, shots: Path, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    try:
        _journey(page, demo_server, shots, "demo", wait=120, answers=True, tmp=tmp_path)
    finally:
        page.close()
