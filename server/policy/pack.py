"""One policy pack: a folder of YAML, loaded and validated in full before anything uses it.

Files: ``pack.yaml`` (identity, status, dates, source), ``catalog.yaml`` (chips),
``countries.yaml`` (dated country groups), ``conditions.yaml`` (parameters, dated national caps and
the conditions). Any mistake — unknown key, missing citation, expression that does not compile or
names an unknown variable, template field that does not exist, overlapping catalog entries — is a
:class:`PackError` naming file and line. Loading builds new objects only; a caller keeps its old
pack set until a new one loads completely.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

from contract.assurance import LADDER, is_level
from server.findings import PACK_STATUSES, SEVERITY_RANK, Finding, Severity
from server.policy._yaml import Reader, load_yaml
from server.policy.catalog import Catalog, load_catalog
from server.policy.cel import Expression, ExpressionError, compile_expression
from server.policy.countries import Countries, load_countries
from server.policy.errors import PackError
from server.policy.facts import ITEMS, SCOPES, sample_for
from server.policy.figures import Figure, read_figure, read_tag

_PACK_KEYS = {
    "id", "version", "title", "status", "status_note", "effective", "expires", "compliance_dates",
    "source", "verification", "description", "applies_to",
}  # fmt: skip
_APPLIES_KEYS = {"countries", "organizations", "sites", "org_types", "note"}
_SOURCE_KEYS = {"citation", "document", "rin", "url", "published", "announced", "note"}
_COND_KEYS = {
    "id", "title", "scope", "severity", "citation", "confidence", "expression", "for_each",
    "subject", "message", "expected", "seen", "compliance", "note",
}  # fmt: skip
_CAP_KEYS = {"from", "until", "tpp", "h100e", "confidence", "source", "note"}
#: Parameters the verifier's own code reads from every pack, beside its expressions: the ECCN
#: 4E091 thresholds (model classification), H100 equivalents (display), the universal VEU shares
#: (distribution tables of the dashboard and the reports), the License Exception LPP limit and
#: the Tier 2 allocation (shipment warnings).
ENGINE_PARAMETERS = (
    "model_training_ops",
    "model_derivative_floor_ops",
    "model_derivative_share",
    "h100e_tpp",
    "universal_tier1_min_share",
    "universal_non_tier1_max_share",
    "universal_us_min_share",
    "lpp_annual_tpp_per_consignee",
    "tier2_allocation_tpp",
)
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?::([^{}]*))?\}")
_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


def render(template: str, variables: Mapping[str, Any]) -> str:
    """Fill ``{var.field}`` or ``{var.field:,}`` from the variables; lists join with ", "."""

    def one(m: re.Match[str]) -> str:
        value: Any = variables
        for part in m.group(1).split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise KeyError(m.group(1))
            value = value[part]
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "none"
        spec = m.group(2) or ""
        return format(value, spec)

    return _FIELD.sub(one, template)


@dataclass(frozen=True)
class NationalCap:
    start: date
    until: date
    tpp: int
    confidence: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.start.isoformat()}..{self.until.isoformat()}"


@dataclass(frozen=True)
class Condition:
    pack_id: str
    id: str
    title: str
    scope: str
    severity: Severity
    citation: str
    confidence: tuple[str, ...]
    expression: Expression
    for_each: str | None
    item: str | None
    subject: str
    message: str
    expected: str | None
    seen: str | None
    compliance: str | None
    line: int
    #: Findings already rendered, by the facts they were rendered from (see
    #: server.policy.engine.judge_condition). Owned by this loaded condition, bounded.
    findings_memo: dict[tuple[date, str], Finding] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    @property
    def full_id(self) -> str:
        return f"{self.pack_id}/{self.id}"

    @cached_property
    def template_roots(self) -> frozenset[str]:
        """The variables the finding's texts refer to (``{file.path}`` -> ``file``)."""
        texts = (self.subject, self.message, self.expected or "", self.seen or "")
        return frozenset(m.group(1).split(".")[0] for t in texts for m in _FIELD.finditer(t))


@dataclass(frozen=True)
class AppliesTo:
    """Where a pack applies (pack.yaml ``applies_to``); an empty tuple does not restrict.

    ``countries``: the site's country (organization scope: any of its sites' countries, or its
    headquarters); ``organizations`` / ``sites``: ids (a licence attached to them);
    ``org_types``: the organization's VEU type (``universal``, ``national``).
    """

    countries: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    org_types: tuple[str, ...] = ()

    def site(
        self, *, countries: frozenset[str], site_id: str, org_id: str, org_type: str = ""
    ) -> bool:
        """``countries``: the site's country as recorded and as the pack treats it (Macau with
        China where ``treated_as`` says so)."""
        return (
            (not self.countries or bool(countries & set(self.countries)))
            and (not self.sites or site_id in self.sites)
            and (not self.organizations or org_id in self.organizations)
            and (not self.org_types or not org_type or org_type in self.org_types)
        )

    def org(self, *, org_id: str, org_type: str, countries: frozenset[str]) -> bool:
        return (
            (not self.countries or bool(countries & set(self.countries)))
            and (not self.organizations or org_id in self.organizations)
            and (not self.org_types or org_type in self.org_types)
        )


@dataclass
class Pack:
    id: str
    version: str
    title: str
    status: str
    status_note: str
    effective: date
    expires: date | None
    compliance_dates: dict[str, date]
    source: dict[str, str]
    verification: list[dict[str, str]]
    path: Path
    catalog: Catalog
    countries: Countries
    params: dict[str, Figure]
    national_caps: list[NationalCap]
    conditions: list[Condition] = field(default_factory=list)
    applies_to: AppliesTo = field(default_factory=AppliesTo)

    def active_on(self, on: date) -> bool:
        return self.effective <= on and (self.expires is None or on <= self.expires)

    def param_values(self) -> dict[str, Any]:
        return {k: f.value for k, f in self.params.items()}

    def number(self, name: str) -> float:
        """A numeric parameter the verifier reads itself (one of :data:`ENGINE_PARAMETERS`)."""
        return float(self.params[name].value)

    def param_tags(self, names: frozenset[str]) -> set[str]:
        return {self.params[n].confidence for n in names if n in self.params}

    def conditions_for(self, scope: str) -> list[Condition]:
        return [c for c in self.conditions if c.scope == scope]

    def national_cap(self, on: date) -> NationalCap | None:
        for cap in self.national_caps:
            if cap.start <= on <= cap.until:
                return cap
        return None


def _date(r: Reader, key: str, *, required: bool = True) -> date | None:
    value = r.req(key) if required else r.raw(key)
    if value is None:
        return None
    if not isinstance(value, date):
        raise r.error(key, "bad_date", f"{r.what}.{key} must be a date like 2025-01-13")
    return value


def _load_pack_yaml(path: Path) -> Reader:
    return Reader(path, load_yaml(path), "pack", _PACK_KEYS)


def _tags(path: Path, r: Reader, key: str) -> tuple[str, ...]:
    seq = r.seq(key)
    if not seq:
        raise r.error(
            key, "missing_confidence", f"{r.what} must list the confidence tags it rests on"
        )
    return tuple(sorted({read_tag(path, r.node, key, t) for t in seq}))


def load_pack(pack_dir: Path) -> Pack:
    """Load and validate every file of one pack; raise :class:`PackError` at the first fault."""
    pack_dir = Path(pack_dir)
    for name in ("pack.yaml", "catalog.yaml", "countries.yaml", "conditions.yaml"):
        if not (pack_dir / name).is_file():
            raise PackError(pack_dir / name, 0, "missing_file", f"a pack needs {name}")
    ppath = pack_dir / "pack.yaml"
    p = _load_pack_yaml(ppath)
    pack_id = p.rstr("id")
    if not _ID.match(pack_id):
        raise p.error("id", "bad_id", "pack ids are lowercase letters, digits, '.' and '-'")
    version = p.raw("version")
    if not isinstance(version, str | int | float):
        raise p.error("version", "bad_type", "version must be a string")
    compliance: dict[str, date] = {}
    if p.has("compliance_dates"):
        cnode = p.req("compliance_dates")
        cr = Reader(
            ppath, cnode, "compliance_dates", set(cnode) if isinstance(cnode, dict) else set()
        )
        for key in cr.node:
            d = _date(cr, key)
            assert d is not None
            compliance[key] = d
    sr = Reader(ppath, p.req("source"), "source", _SOURCE_KEYS)
    sr.rstr("citation")
    source = {k: str(v) for k, v in sr.node.items()}
    verification: list[dict[str, str]] = []
    for item in p.seq("verification", required=False):
        vr = Reader(ppath, item, "verification entry", {"figure", "status", "citation", "detail"})
        status = vr.rstr("status")
        if status not in ("confirmed", "unconfirmed", "contradicted"):
            raise vr.error(
                "status", "bad_status", "status is confirmed, unconfirmed or contradicted"
            )
        verification.append({k: str(v) for k, v in vr.node.items()})
    effective = _date(p, "effective")
    assert effective is not None
    status = p.rstr("status")
    if status not in PACK_STATUSES:
        raise p.error("status", "bad_status", f"status must be one of {', '.join(PACK_STATUSES)}")
    applies = AppliesTo()
    if p.has("applies_to"):
        ar = Reader(ppath, p.req("applies_to"), "applies_to", _APPLIES_KEYS)

        def codes(key: str, upper: bool) -> tuple[str, ...]:
            out = tuple(str(v).upper() if upper else str(v) for v in ar.seq(key, required=False))
            if any(not v.strip() for v in out):
                raise ar.error(key, "bad_value", f"applies_to.{key} lists an empty value")
            return out

        applies = AppliesTo(
            countries=codes("countries", True),
            organizations=codes("organizations", False),
            sites=codes("sites", False),
            org_types=codes("org_types", False),
        )
    if status == "licence-condition" and not (applies.organizations or applies.sites):
        raise p.error(
            "applies_to",
            "unattached_licence",
            "a licence-condition pack names the organizations or sites it is attached to "
            "(applies_to.organizations / applies_to.sites)",
        )
    catalog = load_catalog(pack_dir / "catalog.yaml")
    countries = load_countries(pack_dir / "countries.yaml")
    pack = Pack(
        id=pack_id,
        version=str(version),
        title=p.str_("title", required=False) or pack_id,
        status=status,
        status_note=p.str_("status_note", required=False) or "",
        effective=effective,
        expires=_date(p, "expires", required=False),
        compliance_dates=compliance,
        source=source,
        verification=verification,
        path=pack_dir,
        catalog=catalog,
        countries=countries,
        params={},
        national_caps=[],
        applies_to=applies,
    )
    _load_conditions(pack, pack_dir / "conditions.yaml")
    return pack


def _check_engine_parameters(pack: Pack, path: Path, top: Reader) -> None:
    """Every parameter of :data:`ENGINE_PARAMETERS` is defined, and is a number above zero."""
    line = top.line("parameters") if top.has("parameters") else 0
    for name in ENGINE_PARAMETERS:
        figure = pack.params.get(name)
        if figure is None:
            raise PackError(
                path,
                line,
                "missing_parameter",
                f"pack {pack.id!r}: parameter {name!r} is missing from {path.name}; the verifier "
                f"needs it (every pack defines {', '.join(ENGINE_PARAMETERS)})",
            )
        value = figure.value
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise PackError(
                path,
                line,
                "bad_parameter",
                f"pack {pack.id!r}: parameter {name!r} in {path.name} must be a number above 0",
            )
    demanded = pack.params.get("minimum_assurance")
    if demanded is not None and not is_level(demanded.value):
        raise PackError(
            path,
            line,
            "bad_parameter",
            f"pack {pack.id!r}: parameter 'minimum_assurance' in {path.name} must be one of "
            f"{', '.join(LADDER)}, got {str(demanded.value)[:40]!r}",
        )


def _load_conditions(pack: Pack, path: Path) -> None:
    top = Reader(
        path, load_yaml(path), "conditions file", {"parameters", "national_caps", "conditions"}
    )
    if top.has("parameters"):
        pnode = top.req("parameters")
        pr = Reader(path, pnode, "parameters", set(pnode) if isinstance(pnode, dict) else set())
        for name in pr.node:
            if not re.match(r"^[a-z][a-z0-9_]*$", name):
                raise pr.error(name, "bad_name", f"parameter names are snake_case, got {name!r}")
            pack.params[name] = read_figure(path, pr.node[name], f"parameter {name}", numeric=False)
    _check_engine_parameters(pack, path, top)
    for item in top.seq("national_caps", required=False):
        cr = Reader(path, item, "national cap", _CAP_KEYS)
        start, until = _date(cr, "from"), _date(cr, "until")
        assert start is not None and until is not None
        tpp = cr.req("tpp")
        if not isinstance(tpp, int) or isinstance(tpp, bool):
            raise cr.error("tpp", "bad_type", "cap tpp must be an integer")
        cap = NationalCap(
            start,
            until,
            tpp,
            read_tag(path, cr.node, "confidence", cr.req("confidence")),
            cr.rstr("source"),
        )
        for other in pack.national_caps:
            if cap.start <= other.until and other.start <= cap.until:
                raise cr.error(
                    "from", "overlapping_caps", f"cap {cap.label} overlaps {other.label}"
                )
        pack.national_caps.append(cap)
    params = pack.param_values()
    seen: dict[str, int] = {}
    for item in top.seq("conditions"):
        r = Reader(path, item, "condition", _COND_KEYS)
        cid = r.rstr("id")
        if not _ID.match(cid):
            raise r.error(
                "id", "bad_id", "condition ids are lowercase letters, digits, '.' and '-'"
            )
        if cid in seen:
            raise r.error(
                "id",
                "duplicate_condition",
                f"condition {cid!r} already defined at line {seen[cid]}",
            )
        seen[cid] = r.line("id")
        scope = r.rstr("scope")
        if scope not in SCOPES:
            raise r.error("scope", "bad_scope", f"scope must be one of {', '.join(SCOPES)}")
        severity = r.rstr("severity")
        if severity not in SEVERITY_RANK:
            raise r.error(
                "severity", "bad_severity", f"severity must be one of {', '.join(SEVERITY_RANK)}"
            )
        if not r.has("citation") or not str(r.raw("citation")).strip():
            raise r.error(None, "missing_citation", f"condition {cid!r} needs a citation")
        citation = r.rstr("citation")
        for_each = r.str_("for_each", required=False)
        item_name: str | None = None
        if for_each is not None:
            if for_each not in ITEMS[scope]:
                raise r.error(
                    "for_each",
                    "bad_for_each",
                    f"{scope} conditions iterate over {', '.join(ITEMS[scope])}, not {for_each!r}",
                )
            item_name = ITEMS[scope][for_each]
        sample = sample_for(scope, params)
        if item_name is None:
            for name in ITEMS[scope].values():
                sample.pop(name, None)
        try:
            expr = compile_expression(r.rstr("expression"), sample)
        except ExpressionError as exc:
            raise r.error("expression", "bad_expression", f"condition {cid!r}: {exc}") from exc
        missing_params = sorted(n for n in expr.params_used if n not in pack.params)
        if missing_params:
            raise r.error(
                "expression",
                "unknown_parameter",
                f"unknown parameter(s) {', '.join(missing_params)}",
            )
        compliance = r.str_("compliance", required=False)
        if compliance is not None and compliance not in pack.compliance_dates:
            raise r.error(
                "compliance",
                "unknown_compliance_date",
                f"pack.yaml has no compliance date {compliance!r}",
            )
        default_subject = {
            "host": "host:{host.id}",
            "site": "site:{site.id}",
            "organization": "org:{org.id}",
        }
        cond = Condition(
            pack_id=pack.id,
            id=cid,
            title=r.rstr("title"),
            scope=scope,
            severity=severity,  # type: ignore[arg-type]
            citation=citation,
            confidence=_tags(path, r, "confidence"),
            expression=expr,
            for_each=for_each,
            item=item_name,
            subject=r.str_("subject", required=False) or default_subject[scope],
            message=r.rstr("message"),
            expected=r.str_("expected", required=False),
            seen=r.str_("seen", required=False),
            compliance=compliance,
            line=r.line(),
        )
        for key in ("subject", "message", "expected", "seen"):
            template = getattr(cond, key)
            if template is None:
                continue
            try:
                render(template, sample)
            except (KeyError, ValueError, TypeError) as exc:
                raise r.error(
                    key, "bad_template", f"{key} template refers to {exc} which this scope lacks"
                ) from exc
        pack.conditions.append(cond)
    if not pack.conditions:
        raise PackError(
            path, top.line("conditions"), "no_conditions", "a pack needs at least one condition"
        )
