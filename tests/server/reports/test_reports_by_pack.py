"""Reports name each finding's pack, version and status, and count findings by pack (issue 22)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from server import reports
from server.compliance.findings import sync_findings
from server.policy import PolicySet, SiteAggregate, SiteFacts
from server.policy.aggregate import HostContribution, ModelTotal
from tests.server.api.dashboard.conftest import Env, make_env
from tests.server.reports.test_reports import NOW


@pytest.fixture
def env(tmp_path: Path, policy: PolicySet) -> Iterator[Env]:
    e = make_env(tmp_path, policy)
    yield e
    e.svc.db.dispose()


def _judge_a_site_in_china(env: Env) -> None:
    """Real findings of every shipped pack at one of the fleet's sites, stored as settling
    stores them: a site in China without a licence holding eight H100."""
    site_id = next(iter(env.fleet.sites.values()))
    agg = SiteAggregate()
    models = {"nvidia-h100-sxm": ModelTotal(count=8, tpp=8 * 15832, classification="3A090.a")}
    agg.apply(None, HostContribution(models, 8 * 15832, (), "CN"))
    facts = SiteFacts(site_id, "CN", 0, agg, host_count=1, org_id=env.fleet.org_id)
    found = env.policy.evaluate_site(facts, NOW.date())
    assert {f.pack_id for f in found} >= {"ai-diffusion-2025", "us-advanced-computing-2026"}
    with env.svc.db.write() as s:
        sync_findings(
            s,
            "site",
            site_id,
            site_id=site_id,
            org_id=env.fleet.org_id,
            findings=found,
            now=NOW - timedelta(days=1),
        )


def test_findings_carry_their_pack_and_are_counted_by_pack(env: Env) -> None:
    _judge_a_site_in_china(env)
    with env.svc.db.read() as s:
        data = reports.build_report(
            s, env.policy, env.fleet.org_id, reports.Period.parse("2026H2"), NOW
        )
    judged = [f for f in data["findings"] if f["pack_id"]]
    assert judged and all(f["condition_id"].startswith(f["pack_id"] + "/") for f in judged)
    assert all(f["pack_status"] and f["pack_version"] for f in judged)
    by_pack = {p["pack_id"]: p for p in data["findings_by_pack"]}
    for pack_id, entry in by_pack.items():
        mine = [f for f in data["findings"] if (f["pack_id"] or "-") == pack_id]
        assert entry["findings"] == len(mine)
        assert entry["violations"] == sum(f["severity"] == "violation" for f in mine)
    packs = {p["id"]: p for p in data["policy"]["packs"]}
    for pack in packs.values():
        assert pack["enforced"] is (pack["status"] in ("in-force", "licence-condition"))
        assert pack["counts_in_headline"] is (pack["status"] != "proposed")
    rows = list(csv.reader(io.StringIO(reports.render_csv(data).decode())))
    header = next(r for r in rows if "condition_id" in r and "pack_status" in r)
    assert header.index("pack_status") > header.index("condition_id")
    pdf = reports.render_pdf(data)
    assert pdf.startswith(b"%PDF")
