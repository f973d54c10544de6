"""PolicySet: the loaded packs, and the pure judgement of hosts, sites and organizations.

No SQL, no HTTP, no clock: the store hands in facts and the date, the engine hands back findings.

1. A condition's expression returns true when the condition HOLDS; false yields a finding.
2. ``for_each`` conditions are evaluated once per item and yield one finding per offending item
   (each accelerator, each weight file...), with the item as subject.
3. An expression that fails at run time yields "cannot attest" for that condition, never a pass.
4. A condition tied to a compliance date (``compliance: security``) that has not arrived yet
   reports its findings as "info", prefixed with the date, so nothing is hidden and nothing is
   judged early.
5. Every finding carries the condition's citation and the union of the confidence tags of the
   figures it rests on (the condition's own, its parameters', and the item's: a chip's TPP tag,
   a country's membership tag).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from contract import Accelerator, SnapshotV1
from contract.assurance import Level, accelerator_level, is_level, parse_level, rank, weakest
from server.findings import Finding
from server.policy.aggregate import HostContribution, ModelTotal
from server.policy.catalog import ChipMatch, norm_hex
from server.policy.cel import MEMO_LIMIT
from server.policy.errors import PackError, PolicyEvaluationError
from server.policy.facts import NVML_VENDOR_IDS, HostContext, OrgFacts, SiteFacts
from server.policy.models import (
    ModelClassification,
    ModelRecord,
    ModelThresholds,
    classify_model,
)
from server.policy.pack import Condition, Pack, load_pack, render


def identity_of(acc: Accelerator) -> str | None:
    """The fleet-wide identity of a device: its UUID, else its serial; None when it has neither."""
    if acc.uuid:
        return f"uuid:{acc.uuid}"
    if acc.serial:
        return f"serial:{acc.serial}"
    return None


class PolicySet:
    """Every loaded pack, and a digest that pins exactly which files judged a result."""

    def __init__(self, packs: list[Pack], digest: str) -> None:
        self.packs = packs
        self.digest = digest
        self._reference: dict[date, list[Pack]] = {}  # by day: identify() runs per device

    # ------------------------------------------------------------------ lookup

    def active_packs(self, on: date) -> list[Pack]:
        return [p for p in self.packs if p.active_on(on)]

    def _reference_packs(self, on: date) -> list[Pack]:
        packs = self._reference.get(on)
        if packs is None:
            # Proposed packs and licences follow the rules in force (stable: name order kept).
            packs = sorted(
                self.active_packs(on) or self.packs,
                key=lambda p: p.status in ("proposed", "licence-condition"),
            )
            if len(self._reference) > 64:
                self._reference.clear()
            self._reference[on] = packs
        return packs

    def reference_pack(self, on: date) -> Pack:
        """The pack whose figures a display or warning uses: the first active on ``on`` (in
        name order, packs that are proposed or licences last), else the first loaded."""
        packs = self._reference_packs(on)
        if not packs:
            raise PackError("", 0, "no_packs", "no policy pack is loaded")
        return packs[0]

    def h100e(self, tpp: int, on: date) -> float:
        """``tpp`` in H100 equivalents, by the reference pack's ``h100e_tpp``."""
        return tpp / self.reference_pack(on).number("h100e_tpp")

    def identify(self, acc: Accelerator, on: date) -> ChipMatch | None:
        for pack in self._reference_packs(on):
            match = pack.catalog.identify(acc)
            if match is not None:
                return match
        return None

    def model_thresholds(self, on: date) -> ModelThresholds:
        """The ECCN 4E091 thresholds of the reference pack (every pack defines them)."""
        pack = self.reference_pack(on)
        names = ("model_training_ops", "model_derivative_floor_ops", "model_derivative_share")
        figs = [pack.params[n] for n in names]
        return ModelThresholds(
            float(figs[0].value),
            float(figs[1].value),
            float(figs[2].value),
            tuple(sorted({f.confidence for f in figs})),
        )

    def classify_model(self, record: ModelRecord, on: date) -> ModelClassification:
        return classify_model(record, self, on)

    # ------------------------------------------------------------------ contributions

    def contribution(
        self, snapshot: SnapshotV1, on: date, *, country: str = ""
    ) -> HostContribution:
        """What one snapshot adds to its site's and organization's aggregates."""
        models: dict[str, ModelTotal] = {}
        tpp_3a090 = 0
        unidentified = 0
        identities: list[str] = []
        for acc in snapshot.accelerators:
            ident = identity_of(acc)
            if ident is not None:
                identities.append(ident)
            match = self.identify(acc, on)
            if match is None:
                unidentified += 1
                continue
            tot = models.setdefault(match.chip_id, ModelTotal(classification=match.classification))
            tot.count += 1
            tot.tpp += match.tpp
            if match.classification != "none":
                tpp_3a090 += match.tpp
        return HostContribution(models, tpp_3a090, tuple(identities), country, unidentified)

    # ------------------------------------------------------------------ evaluation

    def packs_for_site(
        self, on: date, *, country: str, site_id: str, org_id: str, org_type: str = ""
    ) -> list[Pack]:
        """The packs that judge a site (and its hosts) on ``on``: active by their dates, and
        applying to its country, id and organization where a pack restricts them."""
        return [
            p
            for p in self.active_packs(on)
            if p.applies_to.site(
                countries=_countries_as(p, (country,) if country else ()),
                site_id=site_id,
                org_id=org_id,
                org_type=org_type,
            )
        ]

    def evaluate_host(self, snapshot: SnapshotV1, ctx: HostContext, on: date) -> list[Finding]:
        findings: list[Finding] = []
        packs = self.packs_for_site(
            on, country=ctx.site_country, site_id=ctx.site_id, org_id=ctx.org_id
        )
        # The files and errors do not depend on the pack (classification is the reference
        # pack's): built once, and their memo fingerprints are shared by every pack.
        # Fingerprints are keyed by id(): every pack's variables stay alive until the end, so
        # no id is reused for another item meanwhile.
        shared: dict[str, Any] = {}
        fingerprints: dict[int, str] = {}
        alive: list[dict[str, Any]] = []
        for pack in packs:
            variables = host_variables(pack, self, snapshot, ctx, on, shared=shared)
            alive.append(variables)
            findings.extend(_judge(pack, "host", variables, on, fingerprints))
        return findings

    def evaluate_site(self, facts: SiteFacts, on: date) -> list[Finding]:
        findings: list[Finding] = []
        packs = self.packs_for_site(
            on,
            country=facts.country,
            site_id=facts.site_id,
            org_id=facts.org_id,
            org_type=facts.org_type,
        )
        for pack in packs:
            findings.extend(_judge(pack, "site", site_variables(pack, facts, on), on))
        return findings

    def evaluate_org(self, facts: OrgFacts, on: date) -> list[Finding]:
        findings: list[Finding] = []
        for pack in self.active_packs(on):
            codes = (*facts.site_countries, facts.hq_country)
            if not pack.applies_to.org(
                org_id=facts.org_id, org_type=facts.veu_type, countries=_countries_as(pack, codes)
            ):
                continue
            findings.extend(_judge(pack, "organization", org_variables(pack, facts, on), on))
        return findings


def _countries_as(pack: Pack, codes: Iterable[str]) -> frozenset[str]:
    """Each code as recorded and as ``pack`` treats it (Macau with China where it says so)."""
    out: set[str] = set()
    for code in codes:
        if code:
            out.add(code.upper())
            out.add(pack.countries.canonical(code))
    return frozenset(out)


# ---------------------------------------------------------------------- judging


def _finding(
    pack: Pack, cond: Condition, variables: dict[str, Any], on: date, item: dict[str, Any] | None
) -> Finding:
    tags = set(cond.confidence) | pack.param_tags(cond.expression.params_used)
    if item is not None:
        tags.update(item.get("confidence", ()))

    def fill(template: str | None) -> str | None:
        if template is None:
            return None
        try:
            return render(template, variables)
        except (KeyError, ValueError, TypeError):
            return template

    message = fill(cond.message) or cond.title
    severity = cond.severity
    if cond.compliance is not None and on < pack.compliance_dates[cond.compliance]:
        severity = "info"
        message = (
            f"[compliance from {pack.compliance_dates[cond.compliance].isoformat()}] {message}"
        )
    return Finding(
        condition_id=cond.full_id,
        severity=severity,
        subject=fill(cond.subject) or "",
        message=message,
        expected=fill(cond.expected),
        seen=fill(cond.seen),
        citation=cond.citation,
        confidence=tuple(sorted(tags)),
        pack_id=pack.id,
        pack_version=pack.version,
        pack_status=pack.status,
        level=_level_of(cond, variables, item),
    )


_SCOPE_ENTITY = {"host": "host", "site": "site", "organization": "org"}


def _level_of(
    cond: Condition, variables: dict[str, Any], item: dict[str, Any] | None
) -> Level | None:
    """The level of the claim a finding rests on: the item's own (an accelerator, a file), else
    its scope's as a whole (a host's weakest claim, a site's weakest host)."""
    for source in (item, variables.get(_SCOPE_ENTITY.get(cond.scope, ""))):
        if isinstance(source, dict) and is_level(source.get("assurance")):
            return parse_level(source["assurance"])
    return None


def _error_finding(
    pack: Pack, cond: Condition, variables: dict[str, Any], exc: Exception
) -> Finding:
    try:
        subject = render(cond.subject, variables)
    except (KeyError, ValueError, TypeError):
        subject = cond.subject
    return Finding(
        condition_id=cond.full_id,
        severity="cannot_attest",
        subject=subject,
        message=f"condition could not be evaluated: {exc}",
        expected="the condition evaluates to true or false",
        seen=str(exc),
        citation=cond.citation,
        confidence=cond.confidence,
        pack_id=pack.id,
        pack_version=pack.version,
        pack_status=pack.status,
        level=_level_of(cond, variables, None),
    )


def judge_condition(
    pack: Pack,
    cond: Condition,
    variables: dict[str, Any],
    on: date,
    fingerprints: dict[int, str] | None = None,
) -> list[Finding]:
    """Findings of one condition on one set of variables (empty when it holds).

    ``fingerprints``: memo keys of items already computed by an earlier condition over the same
    variables (keyed by ``id``: valid only while ``variables`` is alive and unchanged).
    """
    known = {} if fingerprints is None else fingerprints
    expr = cond.expression
    if cond.for_each is None or cond.item is None:
        try:
            holds = expr.holds_memo(variables, _roots_fingerprint(variables, expr.roots, known))
        except PolicyEvaluationError as exc:
            return [_error_finding(pack, cond, variables, exc)]
        return [] if holds else [_finding(pack, cond, variables, on, None)]
    out: list[Finding] = []
    scoped = dict(variables)
    context = _roots_fingerprint(variables, expr.roots - {cond.item}, known)
    text_context: str | None = None  # built at the first finding: most items hold
    for item in variables[cond.for_each]:
        scoped[cond.item] = item
        fp = known.get(id(item))
        if fp is None:
            fp = known[id(item)] = _fingerprint(item)
        try:
            holds = expr.holds_memo(scoped, context + fp)
        except PolicyEvaluationError as exc:
            out.append(_error_finding(pack, cond, scoped, exc))
            continue
        if not holds:
            if text_context is None:
                # A finding's texts may name variables its expression does not read: its memo
                # key covers them too (and the date: whether a compliance date has passed).
                extra = sorted(cond.template_roots - expr.roots - {cond.item})
                text_context = context + (
                    _fingerprint({r: variables[r] for r in extra}) if extra else ""
                )
            out.append(_remembered_finding(pack, cond, scoped, on, item, text_context + fp))
    return out


def _remembered_finding(
    pack: Pack,
    cond: Condition,
    scoped: dict[str, Any],
    on: date,
    item: dict[str, Any],
    fingerprint: str,
) -> Finding:
    """:func:`_finding`, remembered per condition by the facts it is rendered from: a host that
    reports the same unregistered files every snapshot gets the same findings, rendered once."""
    key = (on, fingerprint)
    finding = cond.findings_memo.get(key)
    if finding is None:
        finding = _finding(pack, cond, scoped, on, item)
        if len(cond.findings_memo) >= MEMO_LIMIT:
            cond.findings_memo.clear()
        cond.findings_memo[key] = finding
    return finding


def _roots_fingerprint(
    variables: dict[str, Any], roots: frozenset[str], known: dict[int, str]
) -> str:
    """The memo key of the variables ``roots`` name, each root's text computed once per set of
    variables (``known``, keyed by ``id`` like the items' fingerprints)."""
    parts = []
    for root in sorted(roots):
        value = variables[root]
        fp = known.get(id(value))
        if fp is None:
            fp = known[id(value)] = _fingerprint(value)
        parts.append(f"{root}={fp};")
    return "".join(parts)


def _fingerprint(value: Any) -> str:
    """An exact text of ``value`` for the verdict memo: ``repr`` of the facts (dicts, lists,
    strings, numbers, booleans; built by this module in a fixed key order), which tells apart
    everything JSON would (``True`` from ``1``, ``1.0`` from ``1``) at a third of the cost of a
    sorted JSON encoding. Equal facts built in another key order only miss the memo."""
    return repr(value)


def _judge(
    pack: Pack,
    scope: str,
    variables: dict[str, Any],
    on: date,
    fingerprints: dict[int, str] | None = None,
) -> list[Finding]:
    out: list[Finding] = []
    fingerprints = {} if fingerprints is None else fingerprints
    for cond in pack.conditions_for(scope):
        out.extend(judge_condition(pack, cond, variables, on, fingerprints))
    return out


# ---------------------------------------------------------------------- facts -> variables


def _site_country_facts(pack: Pack, country: str, on: date) -> dict[str, Any]:
    c = pack.countries
    return {
        "country": country.upper(),
        "embargoed": c.in_group(country, "d5", on),
        "tier1": c.in_group(country, "tier1", on),
        "groups": c.groups_of(country, on),
    }


def host_variables(
    pack: Pack,
    policy: PolicySet,
    snapshot: SnapshotV1,
    ctx: HostContext,
    on: date,
    *,
    shared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The host-scope variables of ``pack``. ``shared``: the pack-independent parts (files,
    errors) of an earlier call on the same snapshot, filled in by the first call."""
    host_id = ctx.host_id or snapshot.agent.key_id
    failed = sorted({e.collector for e in snapshot.errors})
    nvml_bus = {
        a.pci_bus_id.lower()[-12:]
        for a in snapshot.accelerators
        if a.source == "nvml" and a.pci_bus_id
    }
    key_level = ctx.key_assurance
    accs: list[dict[str, Any]] = []
    for i, acc in enumerate(snapshot.accelerators):
        match = pack.catalog.identify(acc)
        level = accelerator_level(acc.source, acc.assurance, key_level)
        bus = (acc.pci_bus_id or "").lower()
        vendor_id = norm_hex(acc.pci_vendor_id) or ""
        accs.append(
            {
                "id": identity_of(acc) or f"pci:{acc.pci_bus_id or i}",
                "uuid": acc.uuid or "",
                "serial": acc.serial or "",
                "model": acc.model or "",
                "vendor": acc.vendor or "",
                "pci_vendor_id": vendor_id,
                "pci_device_id": norm_hex(acc.pci_device_id) or "",
                "pci_bus_id": acc.pci_bus_id or "",
                "source": acc.source,
                "assurance": level,
                "assurance_rank": rank(level),
                "identified": match is not None,
                "chip": match.chip_id if match else "",
                "matched_by": match.matched_by if match else "",
                "classification": match.classification if match else "",
                "tpp": match.tpp if match else 0,
                "nvml_vendor": vendor_id in NVML_VENDOR_IDS,
                "seen_by_nvml": acc.source == "nvml" or (bool(bus) and bus[-12:] in nvml_bus),
                "origin": match.origin if match else "",
                "dram_bandwidth_gbs": (
                    match.dram_bandwidth_gbs if match and match.dram_bandwidth_gbs else 0.0
                ),
                "bandwidth_known": bool(match and match.dram_bandwidth_gbs),
                "confidence": list(match.confidence) if match else [],
            }
        )
    if shared is not None and "files" in shared:
        files, errors, unidentified = shared["files"], shared["errors"], shared["unidentified"]
    else:
        files, errors, unidentified = _host_files(policy, snapshot, ctx, on)
        if shared is not None:
            shared["files"], shared["errors"] = files, errors
            shared["unidentified"] = unidentified
    host_level = weakest([key_level, *(a["assurance"] for a in accs)]) or key_level
    site = _site_country_facts(pack, ctx.site_country, on)
    site.update(
        {
            "id": ctx.site_id,
            "is_test": ctx.site_is_test,
            "may_store_controlled_weights": ctx.site_may_store_controlled_weights,
        }
    )
    return {
        "host": {
            "id": host_id,
            "key_id": snapshot.agent.key_id,
            "hostname": snapshot.host.hostname or "",
            "site_id": snapshot.site_id or "",
            "failed_collectors": failed,
            "nvml_ok": "nvml" not in failed,
            "accelerator_count": len(accs),
            "file_count": len(files),
            "unidentified_count": sum(1 for a in accs if not a["identified"]),
            "unidentified_file_count": sum(r.unidentified_count or 0 for r in snapshot.storage),
            "unidentified_file_bytes": sum(r.unidentified_bytes or 0 for r in snapshot.storage),
            **_assurance_facts(pack, ctx, host_level),
        },
        "site": site,
        "accelerators": accs,
        "files": files,
        "unidentified_files": unidentified,
        "errors": errors,
        "params": pack.param_values(),
    }


def _host_files(
    policy: PolicySet, snapshot: SnapshotV1, ctx: HostContext, on: date
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The weight files (classified by the reference pack's 4E091 thresholds), the collector
    errors and the listed unidentified files of a snapshot: the same for every pack."""
    key_level = ctx.key_assurance
    classified: dict[int, ModelClassification] = {}
    files: list[dict[str, Any]] = []
    for root in snapshot.storage:
        encryption = root.encryption.status
        for f in root.files:
            record = ctx.models.lookup(f.sha256)
            if record is not None:
                key = id(record)
                if key not in classified:
                    classified[key] = classify_model(record, policy, on)
                cls = classified[key]
            try:
                world_readable = bool(int(f.mode, 8) & 0o004)
            except ValueError:
                world_readable = True  # unknown permissions are not "not world-readable"
            files.append(
                {
                    "path": f.path,
                    "root": root.root,
                    "size": f.size,
                    "sha256": f.sha256 or "",
                    "format": f.format,
                    "mode": f.mode,
                    "world_readable": world_readable,
                    "encryption": encryption,
                    "encrypted": encryption == "encrypted",
                    "encryption_method": root.encryption.method or "",
                    "registered": record is not None,
                    "model": record.name if record else "",
                    "classification": cls.classification if record else "unregistered",
                    "controlled": cls.controlled if record else False,
                    "reason": cls.reason if record else "not in the model registry",
                    "error": f.error.code if f.error else "",
                    "confidence": list(cls.confidence) if record else [],
                    "assurance": key_level,
                }
            )
    unidentified: list[dict[str, Any]] = []
    for root in snapshot.storage:
        for u in root.unidentified:
            record = ctx.models.lookup(u.sha256)
            unidentified.append(
                {
                    "path": u.path,
                    "root": root.root,
                    "size": u.size,
                    "sha256": u.sha256 or "",
                    "registered": record is not None,
                    "model": record.name if record else "",
                    "error": u.error.code if u.error else "",
                }
            )
    errors = [
        {"collector": e.collector, "code": e.code, "detail": e.detail} for e in snapshot.errors
    ]
    return files, errors, unidentified


def minimum_assurance(pack: Pack, site_term: Level | None) -> tuple[Level, str]:
    """The level demanded of a host, and by whom: the stronger of the pack's parameter
    ``minimum_assurance`` (absent: ``declared``, which every host meets) and the site's
    authorization term."""
    fig = pack.params.get("minimum_assurance")
    demanded: Level = parse_level(fig.value) if fig is not None else "declared"
    if site_term is not None and rank(site_term) > rank(demanded):
        return site_term, "site authorization"
    return demanded, f"pack {pack.id}"


def _assurance_facts(pack: Pack, ctx: HostContext, host_level: Level) -> dict[str, Any]:
    demanded, by = minimum_assurance(pack, ctx.site_minimum_assurance)
    return {
        "assurance": host_level,
        "assurance_rank": rank(host_level),
        "key_assurance": ctx.key_assurance,
        "minimum_assurance": demanded,
        "minimum_assurance_rank": rank(demanded),
        "minimum_assurance_by": by,
    }


def site_variables(pack: Pack, facts: SiteFacts, on: date) -> dict[str, Any]:
    agg = facts.aggregate
    chips = {c.id: c for c in pack.catalog.chips}
    # The aggregate counts chips by catalog id; each pack prices and classifies them by its own
    # catalog (a chip id it does not define keeps the figures of the pack that identified it).
    models: list[dict[str, Any]] = []
    installed = 0
    for name, tot in sorted(agg.models.items()):
        chip = chips.get(name)
        tpp = tot.count * chip.tpp_value if chip is not None else tot.tpp
        cls = chip.classification if chip is not None else tot.classification
        if cls != "none":
            installed += tpp
        bandwidth = chip.dram_bandwidth_gbs if chip is not None else None
        models.append(
            {
                "name": name,
                "count": tot.count,
                "tpp": tpp,
                "classification": cls,
                "origin": chip.origin if chip is not None else "",
                "dram_bandwidth_gbs": float(bandwidth.value) if bandwidth is not None else 0.0,
                "bandwidth_known": bandwidth is not None,
                "confidence": list(chip.confidence) if chip is not None else [],
            }
        )
    site = _site_country_facts(pack, facts.country, on)
    site.update(
        {
            "id": facts.site_id,
            "has_authorization": facts.authorized_tpp is not None,
            "authorized_tpp": facts.authorized_tpp or 0,
            "installed_tpp": installed,
            "installed_h100e": installed / pack.number("h100e_tpp"),
            "accelerator_count": agg.accelerators,
            "unidentified_count": agg.unidentified,
            "host_count": facts.host_count,
            "stale_hosts": list(facts.stale_hosts),
            "any_model_allowed": facts.allowed_models is None,
            "allowed_models": list(facts.allowed_models or ()),
            "has_ledger": facts.has_ledger,
            "name": facts.site_name,
            "judged_on": on.isoformat(),
            "licensed": (facts.authorized_tpp or 0) > 0,
            "org_id": facts.org_id,
            "org_hq_country": facts.org_hq_country.upper(),
            "org_parent_hq_country": facts.org_parent_hq_country.upper(),
            "org_hq_embargoed": pack.countries.in_group(facts.org_hq_country, "d5", on)
            or pack.countries.in_group(facts.org_parent_hq_country, "d5", on),
            "assurance": facts.assurance or "",
        }
    )
    return {
        "site": site,
        "models": models,
        "duplicates": [{"identity": i, "hosts": list(h)} for i, h in facts.duplicate_accelerators],
        "ledger_unseen": [
            {
                "identity": u.identity,
                "shipment_id": u.shipment_id,
                "shipped_on": u.shipped_on,
                "age_days": u.age_days,
            }
            for u in facts.ledger_unseen
        ],
        "ledger_reported": [
            {
                "identity": c.identity,
                "host": c.host,
                "shipped": c.shipped,
                "shipped_to": c.shipped_to,
                "lab_test": c.lab_test,
            }
            for c in facts.ledger_reported
        ],
        "params": pack.param_values(),
    }


def org_variables(pack: Pack, facts: OrgFacts, on: date) -> dict[str, Any]:
    c = pack.countries
    by_country: dict[str, int] = {}
    for code, tpp in facts.aggregate.tpp_by_country.items():
        canon = c.canonical(code)  # Macau's TPP counts with China's
        by_country[canon] = by_country.get(canon, 0) + tpp
    total = sum(by_country.values())
    countries: list[dict[str, Any]] = [
        {
            "code": code,
            "tpp": tpp,
            "share": tpp / total if total else 0.0,
            "tier1": c.in_group(code, "tier1", on),
            "embargoed": c.in_group(code, "d5", on),
            "confidence": list(c.confidence_of(code, "tier1", on) or ("S",)),
        }
        for code, tpp in sorted(by_country.items())
    ]
    tier1 = sum(x["tpp"] for x in countries if x["tier1"])
    us = by_country.get("US", 0)
    nat = c.canonical(facts.national_country) if facts.national_country else ""
    cap_tpp, cap_known, cap_label = 0, False, ""
    if facts.national_caps is not None:
        for start, until, tpp in facts.national_caps:
            if start <= on <= until:
                cap_tpp, cap_known, cap_label = int(tpp), True, f"{start}..{until}"
    else:
        cap = pack.national_cap(on)
        if cap is not None:
            cap_tpp, cap_known, cap_label = cap.tpp, True, cap.label
    return {
        "org": {
            "id": facts.org_id,
            "veu_type": facts.veu_type,
            "hq_country": facts.hq_country.upper(),
            "parent_hq_country": facts.parent_hq_country.upper(),
            "hq_embargoed": c.in_group(facts.hq_country, "d5", on),
            "parent_hq_embargoed": c.in_group(facts.parent_hq_country, "d5", on),
            "hq_tier1": c.in_group(facts.hq_country, "tier1", on),
            "parent_hq_tier1": c.in_group(facts.parent_hq_country, "tier1", on),
            "total_tpp": total,
            "tier1_tpp": tier1,
            "tier1_share": tier1 / total if total else 0.0,
            "us_tpp": us,
            "us_share": us / total if total else 0.0,
            "national_country": nat,
            "national_tpp": by_country.get(nat, 0) if nat else 0,
            "national_cap_tpp": cap_tpp,
            "national_cap_known": cap_known,
            "national_cap_period": cap_label,
            "denominator": facts.denominator,
            "cn_mo_shipped_units": facts.cn_mo_shipped_units,
            "us_shipped_units": facts.us_shipped_units,
        },
        "countries": countries,
        "params": pack.param_values(),
    }


# ---------------------------------------------------------------------- loading


def _pack_dirs(policies_dir: Path) -> list[Path]:
    return sorted(p for p in policies_dir.iterdir() if p.is_dir() and (p / "pack.yaml").is_file())


def _pack_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def read_pack_files(policies_dir: Path) -> dict[str, bytes]:
    """Every file the digest of :func:`load_policy_set` covers, by path under ``policies_dir``."""
    policies_dir = Path(policies_dir)
    if not policies_dir.is_dir():
        raise PackError(policies_dir, 0, "missing_dir", "policies directory does not exist")
    return {
        f.relative_to(policies_dir).as_posix(): f.read_bytes()
        for d in _pack_dirs(policies_dir)
        for f in _pack_files(d)
    }


def pack_set_digest(policies_dir: Path) -> str:
    """The digest :func:`load_policy_set` gives the packs under ``policies_dir`` (not loaded)."""
    policies_dir = Path(policies_dir)
    return files_digest(_pack_dirs(policies_dir), policies_dir)


def files_digest(dirs: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for f in _pack_files(d):
            rel = f.relative_to(root).as_posix()
            h.update(
                rel.encode("utf-8")
                + b"\0"
                + hashlib.sha256(f.read_bytes()).hexdigest().encode()
                + b"\n"
            )
    return h.hexdigest()


def load_policy_set(policies_dir: Path, *, only: list[str] | None = None) -> PolicySet:
    """Load every pack under ``policies_dir`` (or only the named ones) into a new PolicySet.

    Nothing is shared with a previously loaded set: a caller swaps its reference only when this
    returns, so a bad edit never replaces a good pack set in a running server.
    """
    policies_dir = Path(policies_dir)
    if not policies_dir.is_dir():
        raise PackError(policies_dir, 0, "missing_dir", "policies directory does not exist")
    dirs = _pack_dirs(policies_dir)
    if only is not None:
        wanted = set(only)
        unknown = wanted - {d.name for d in dirs}
        if unknown:
            raise PackError(
                policies_dir, 0, "unknown_pack", f"no pack named {', '.join(sorted(unknown))}"
            )
        dirs = [d for d in dirs if d.name in wanted]
    if not dirs:
        raise PackError(policies_dir, 0, "no_packs", "no pack (a folder with pack.yaml) found")
    packs: list[Pack] = []
    for d in dirs:
        pack = load_pack(d)
        for other in packs:
            if other.id == pack.id:
                raise PackError(
                    d / "pack.yaml",
                    1,
                    "duplicate_pack",
                    f"pack id {pack.id!r} is also used by {other.path}",
                )
        packs.append(pack)
    return PolicySet(packs, files_digest(dirs, policies_dir))
