"""Compliance metrics for ``/metrics``, read from the database at scrape time.

Nothing is counted in process memory, so every worker answers the same figures: open findings by
severity, stale hosts, installed vs authorized TPP (and status) per site, and hosts per assurance
level with each site's level (its weakest host's). A scrape costs five queries whatever the fleet
size (grouped; sites in one pass).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError

from contract.assurance import LADDER, is_level
from server.compliance.assurance import UNKNOWN, weakest_known
from server.store.compliance_models import FindingRow, HostState, SiteState
from server.store.db import Database
from server.store.models import Host, Site

log = logging.getLogger("veu.metrics")
SEVERITIES = ("violation", "cannot_attest", "warning")
STATUSES = ("affirming", "warning", "none", "contraindicated")


class ComplianceCollector(Collector):
    def __init__(self, db: Database, max_host_age: timedelta) -> None:
        self.db = db
        self.max_host_age = max_host_age

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # figures come from the database; nothing to describe before the first scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect(datetime.now(UTC))
            ok = 1.0
        except SQLAlchemyError as exc:
            log.warning("compliance metrics unavailable: %s", exc)
            ok = 0.0
        up = GaugeMetricFamily(
            "veu_compliance_metrics_up", "1 when the compliance figures could be read"
        )
        up.add_metric([], ok)
        yield up

    def _collect(self, now: datetime) -> Iterator[GaugeMetricFamily]:
        cutoff = now - self.max_host_age
        with self.db.read() as s:
            findings = dict(
                s.execute(
                    select(FindingRow.severity, func.count(FindingRow.id))
                    .where(FindingRow.is_open.is_(True))
                    .group_by(FindingRow.severity)
                ).all()
            )
            stale_by_site: dict[str, int] = {
                site: int(n or 0)
                for site, n in s.execute(
                    select(
                        HostState.site_id,
                        func.sum(case((HostState.collected_at < cutoff, 1), else_=0)),
                    )
                    .join(Host, Host.key_id == HostState.key_id)
                    .where(Host.status == "active")
                    .group_by(HostState.site_id)
                ).all()
            }
            levels: dict[str, dict[str, int]] = {}
            for site, level, n in s.execute(
                select(HostState.site_id, HostState.assurance, func.count())
                .join(Host, Host.key_id == HostState.key_id)
                .where(Host.status == "active")
                .group_by(HostState.site_id, HostState.assurance)
            ).all():
                label = str(level) if is_level(level) else UNKNOWN
                per_site = levels.setdefault(site, {})
                per_site[label] = per_site.get(label, 0) + int(n)
            sites = s.execute(
                select(
                    Site.id,
                    Site.name,
                    Site.country,
                    Site.authorized_tpp,
                    SiteState.status,
                    SiteState.aggregate,
                ).outerjoin(SiteState, SiteState.site_id == Site.id)
            ).all()
        g = GaugeMetricFamily(
            "veu_open_findings", "Open compliance findings by severity", labels=["severity"]
        )
        for sev in sorted(set(SEVERITIES) | set(findings)):
            g.add_metric([sev], float(findings.get(sev, 0)))
        yield g
        stale = GaugeMetricFamily(
            "veu_stale_hosts",
            f"Active hosts whose last accepted snapshot is older than {self.max_host_age}",
            labels=["site"],
        )
        total = GaugeMetricFamily("veu_stale_hosts_total", "Stale active hosts, all sites")
        total.add_metric([], float(sum(stale_by_site.values())))
        installed = GaugeMetricFamily(
            "veu_site_installed_tpp",
            "Installed TPP of 3A090 accelerators per site (latest snapshot of each active host)",
            labels=["site", "name", "country"],
        )
        authorized = GaugeMetricFamily(
            "veu_site_authorized_tpp", "Authorized TPP per site", labels=["site", "name", "country"]
        )
        status = GaugeMetricFamily(
            "veu_site_status", "1 for the site's current status", labels=["site", "status"]
        )
        for site_id, name, country, auth_tpp, st, agg in sites:
            tpp = int(json.loads(agg).get("tpp_3a090", 0)) if agg else 0
            installed.add_metric([site_id, name, country], float(tpp))
            authorized.add_metric([site_id, name, country], float(auth_tpp))
            stale.add_metric([site_id], float(stale_by_site.get(site_id) or 0))
            current = st or "none"
            for candidate in STATUSES:
                status.add_metric([site_id, candidate], 1.0 if candidate == current else 0.0)
        by_level = GaugeMetricFamily(
            "veu_hosts_by_assurance",
            "Active reporting hosts per assurance level of their latest snapshot",
            labels=["site", "level"],
        )
        site_level = GaugeMetricFamily(
            "veu_site_assurance",
            "1 for the site's assurance level (its weakest host's; unknown if any host's is)",
            labels=["site", "level"],
        )
        for site_id, *_ in sites:
            counts = levels.get(site_id, {})
            for label in (*LADDER, UNKNOWN):
                by_level.add_metric([site_id, label], float(counts.get(label, 0)))
            if counts:
                current = UNKNOWN if UNKNOWN in counts else (weakest_known(counts) or UNKNOWN)
                for label in (*LADDER, UNKNOWN):
                    site_level.add_metric([site_id, label], 1.0 if label == current else 0.0)
        yield from (stale, total, installed, authorized, status, by_level, site_level)


def register_compliance_metrics(
    registry: CollectorRegistry, db: Database, *, max_host_age: timedelta | None = None
) -> None:
    """Add the compliance collector to ``registry`` (the app's ``Metrics.registry``)."""
    if max_host_age is None:
        from server.compliance.settle import ComplianceConfig

        max_host_age = ComplianceConfig().max_host_age
    registry.register(ComplianceCollector(db, max_host_age))
