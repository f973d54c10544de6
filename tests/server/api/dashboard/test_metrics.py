"""Compliance metrics read from the database at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.api.dashboard.metrics import register_compliance_metrics
from tests.server.api.dashboard.conftest import Env


def _samples(env: Env) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    register_compliance_metrics(registry, env.svc.db)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_open_findings_by_severity_are_exported(env: Env) -> None:
    samples = _samples(env)
    assert samples[("veu_open_findings", (("severity", "violation"),))] == 2
    assert samples[("veu_open_findings", (("severity", "warning"),))] == 1
    assert samples[("veu_open_findings", (("severity", "cannot_attest"),))] == 0
    assert samples[("veu_compliance_metrics_up", ())] == 1


def test_installed_and_authorized_tpp_and_status_per_site(env: Env) -> None:
    samples = _samples(env)
    site = env.fleet.sites["over-ams"]
    labels = (("country", "NL"), ("name", "over-ams"), ("site", site))
    assert samples[("veu_site_installed_tpp", labels)] == 126_656
    assert samples[("veu_site_authorized_tpp", labels)] == 100_000
    assert samples[("veu_site_status", (("site", site), ("status", "contraindicated")))] == 1
    assert samples[("veu_site_status", (("site", site), ("status", "affirming")))] == 0


def test_stale_hosts_follow_the_clock_at_scrape_time(env: Env) -> None:
    from datetime import UTC, datetime, timedelta

    from server.store.compliance_models import HostState

    assert _samples(env)[("veu_stale_hosts_total", ())] == 0
    key = env.fleet.hosts["de-fra"][0]
    with env.svc.db.write() as s:
        s.get(HostState, key).collected_at = datetime.now(UTC) - timedelta(hours=3)  # type: ignore[union-attr]
    samples = _samples(env)
    assert samples[("veu_stale_hosts_total", ())] == 1
    assert samples[("veu_stale_hosts", (("site", env.fleet.sites["de-fra"]),))] == 1
