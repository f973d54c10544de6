"""Pack fixtures: every condition must be shown to hold somewhere and to fail somewhere.

A fixture file (``<pack>/tests/*.yaml``) lists cases. Each case gives a date, one scope's input
(a snapshot plus site context, site facts, or organization facts) and the condition ids that must
hold and must fail on it. :func:`run_pack_tests` runs them all and reports, per condition, the
cases where it held and failed; a condition with no holding or no failing case fails the run, as
does any case whose outcome differs from what it declares. ``veu-server policy test`` prints this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from contract import SnapshotV1
from contract.assurance import parse_level
from server.findings import Finding
from server.policy._yaml import Reader, load_yaml
from server.policy.aggregate import HostContribution, ModelTotal, OrgAggregate, SiteAggregate
from server.policy.engine import PolicySet, files_digest
from server.policy.errors import PackError
from server.policy.facts import HostContext, OrgFacts, ReportedChip, SiteFacts, UnseenShipment
from server.policy.models import ModelRecord, ModelRegistry
from server.policy.pack import Pack, load_pack

_CASE_KEYS = {
    "name",
    "date",
    "scope",
    "site",
    "models",
    "snapshot",
    "key_assurance",
    "site_facts",
    "org_facts",
    "holds",
    "fails",
}
_AGENT = {"key_id": "0" * 64, "version": "fixture"}


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    ok: bool
    problems: list[str]
    findings: list[Finding]


@dataclass
class ConditionCoverage:
    condition_id: str
    holds_in: list[str] = field(default_factory=list)
    fails_in: list[str] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        return bool(self.holds_in) and bool(self.fails_in)


@dataclass
class PackTestReport:
    pack_id: str
    cases: list[CaseResult]
    conditions: list[ConditionCoverage]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases) and all(c.covered for c in self.conditions)

    def lines(self) -> list[str]:
        out = [f"pack {self.pack_id}: {len(self.cases)} cases, {len(self.conditions)} conditions"]
        for case in self.cases:
            mark = "ok  " if case.ok else "FAIL"
            out.append(f"  {mark} {case.file}:{case.line} {case.name}")
            out.extend(f"         {p}" for p in case.problems)
        for cov in self.conditions:
            mark = "ok  " if cov.covered else "FAIL"
            out.append(
                f"  {mark} {cov.condition_id}: holds in {len(cov.holds_in)} case(s), "
                f"fails in {len(cov.fails_in)} case(s)"
            )
        out.append("PASS" if self.ok else "FAIL")
        return out


def _snapshot(case: Reader) -> SnapshotV1:
    raw = dict(case.raw("snapshot") or {})
    data: dict[str, Any] = {
        "agent": _AGENT,
        "site_id": None,
        "host": {"hostname": "fixture-host"},
        "seq": 1,
        "prev": None,
        "nonce": None,
        "collected_at": "2026-01-01T00:00:00Z",
        "accelerators": [],
        "storage": [],
        "posture": {},
        "errors": [],
    }
    data.update(raw)
    return SnapshotV1.model_validate(data)


def _registry(case: Reader) -> ModelRegistry:
    records = []
    for item in case.raw("models") or []:
        records.append(
            ModelRecord(
                name=str(item["name"]),
                training_ops=None
                if item.get("training_ops") is None
                else float(item["training_ops"]),
                published=bool(item.get("published", False)),
                derived_from=item.get("derived_from"),
                derived_from_published=bool(item.get("derived_from_published", False)),
                added_training_ops=None
                if item.get("added_training_ops") is None
                else float(item["added_training_ops"]),
                less_capable_than_published=bool(item.get("less_capable_than_published", False)),
                digests=tuple(item.get("digests", ())),
            )
        )
    return ModelRegistry.of(records)


def _site_facts(pack: Pack, raw: dict[str, Any]) -> SiteFacts:
    agg = SiteAggregate()
    chips = {c.id: c for c in pack.catalog.chips}
    models: dict[str, ModelTotal] = {}
    tpp = 0
    for chip_id, count in (raw.get("installed") or {}).items():
        chip = chips[chip_id]
        models[chip_id] = ModelTotal(int(count), int(count) * chip.tpp_value, chip.classification)
        if chip.classification != "none":
            tpp += int(count) * chip.tpp_value
    agg.apply(None, HostContribution(models, tpp, (), str(raw.get("country", ""))))
    return SiteFacts(
        site_id=str(raw.get("site_id", "site-1")),
        country=str(raw.get("country", "")),
        authorized_tpp=raw.get("authorized_tpp"),
        aggregate=agg,
        allowed_models=raw.get("allowed_models"),
        stale_hosts=list(raw.get("stale_hosts") or []),
        host_count=int(raw.get("host_count", 1)),
        duplicate_accelerators=[
            (d["identity"], list(d["hosts"])) for d in raw.get("duplicates") or []
        ],
        has_ledger=bool(raw.get("has_ledger", False)),
        org_id=str(raw.get("org_id", "org-1")),
        org_type=str(raw.get("org_type", "")),
        site_name=str(raw.get("site_name", raw.get("site_id", "site-1"))),
        org_hq_country=str(raw.get("org_hq_country", "")),
        org_parent_hq_country=str(raw.get("org_parent_hq_country", raw.get("org_hq_country", ""))),
        ledger_unseen=[
            UnseenShipment(
                str(u["identity"]),
                str(u.get("shipment_id", "shp_fixture")),
                str(u.get("shipped_on", "")),
                int(u["age_days"]),
            )
            for u in raw.get("ledger_unseen") or []
        ],
        ledger_reported=[
            ReportedChip(
                str(c["identity"]),
                str(c.get("host", "host-a")),
                bool(c["shipped"]),
                str(c.get("shipped_to", "")),
                str(c.get("lab_test", "")),
            )
            for c in raw.get("ledger_reported") or []
        ],
    )


def _org_facts(raw: dict[str, Any]) -> OrgFacts:
    return OrgFacts(
        org_id=str(raw.get("org_id", "org-1")),
        veu_type=str(raw.get("veu_type", "universal")),
        hq_country=str(raw.get("hq_country", "")),
        parent_hq_country=str(raw.get("parent_hq_country", raw.get("hq_country", ""))),
        aggregate=OrgAggregate(
            {str(k): int(v) for k, v in (raw.get("tpp_by_country") or {}).items()}
        ),
        national_country=str(raw.get("national_country", "")),
        site_countries=tuple(str(c) for c in raw.get("site_countries") or ()),
        cn_mo_shipped_units=int(raw.get("cn_mo_shipped_units", 0)),
        us_shipped_units=int(raw.get("us_shipped_units", 0)),
    )


def run_case(policy: PolicySet, pack: Pack, case: Reader) -> list[Finding]:
    on = case.raw("date")
    if not isinstance(on, date):
        raise case.error("date", "bad_date", "each case needs 'date: YYYY-MM-DD'")
    scope = case.rstr("scope")
    if scope == "host":
        site = dict(case.raw("site") or {})
        try:
            demanded = site.get("minimum_assurance")
            key_level = parse_level(case.raw("key_assurance") or "self-reported")
            site_minimum = None if demanded is None else parse_level(demanded)
        except ValueError as exc:
            raise case.error("site", "bad_assurance", str(exc)) from None
        ctx = HostContext(
            site_id=str(site.get("id", "site-1")),
            site_country=str(site.get("country", "")),
            site_is_test=bool(site.get("is_test", False)),
            site_may_store_controlled_weights=bool(site.get("may_store_controlled_weights", False)),
            models=_registry(case),
            org_id=str(site.get("org_id", "org-1")),
            key_assurance=key_level,
            site_minimum_assurance=site_minimum,
        )
        return policy.evaluate_host(_snapshot(case), ctx, on)
    if scope == "site":
        return policy.evaluate_site(_site_facts(pack, dict(case.req("site_facts"))), on)
    if scope == "organization":
        return policy.evaluate_org(_org_facts(dict(case.req("org_facts"))), on)
    raise case.error("scope", "bad_scope", "scope is host, site or organization")


def run_pack_tests(pack_dir: Path) -> PackTestReport:
    """Run every fixture of one pack. Loading errors in the pack raise :class:`PackError`."""
    pack_dir = Path(pack_dir)
    pack = load_pack(pack_dir)
    policy = PolicySet([pack], files_digest([pack_dir], pack_dir.parent))
    coverage = {c.id: ConditionCoverage(c.full_id) for c in pack.conditions}
    results: list[CaseResult] = []
    files = sorted((pack_dir / "tests").glob("*.yaml"))
    if not files:
        raise PackError(
            pack_dir / "tests", 0, "no_fixtures", "a pack needs fixtures in tests/*.yaml"
        )
    for path in files:
        top = Reader(path, load_yaml(path), "fixture file", {"cases"})
        for node in top.seq("cases"):
            case = Reader(path, node, "case", _CASE_KEYS)
            name = case.rstr("name")
            holds, fails = (
                list(case.seq("holds", required=False)),
                list(case.seq("fails", required=False)),
            )
            for cid in holds + fails:
                if cid not in coverage:
                    raise case.error(
                        None, "unknown_condition", f"case {name!r} names unknown condition {cid!r}"
                    )
            try:
                findings = run_case(policy, pack, case)
            except (ValueError, KeyError, TypeError) as exc:
                results.append(
                    CaseResult(path.name, case.line(), name, False, [f"could not run: {exc}"], [])
                )
                continue
            failing = {f.condition_id.split("/", 1)[1] for f in findings}
            problems = [f"expected {cid} to hold; it failed" for cid in holds if cid in failing]
            problems += [f"expected {cid} to fail; it held" for cid in fails if cid not in failing]
            label = f"{path.name}: {name}"
            for cid in holds:
                if cid not in failing:
                    coverage[cid].holds_in.append(label)
            for cid in fails:
                if cid in failing:
                    coverage[cid].fails_in.append(label)
            results.append(
                CaseResult(path.name, case.line(), name, not problems, problems, findings)
            )
    return PackTestReport(pack.id, results, list(coverage.values()))
