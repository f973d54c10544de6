"""Semi-annual inventory reports (PDF, CSV, JSON), signed by the verifier, and their check.

A report for an organization and a half year (``2026H1``) states: installed chips per site and
country (model, count, TPP) from each host's latest accepted snapshot up to the end of the period;
the changes since the previous period; the geographic distribution against the pack's universal VEU
thresholds with its denominator; every finding open at some point of the period; the policy packs
and versions used and their status (a rescinded pack says so); and which findings rest on
unconfirmed figures (confidence S or U).

The distribution is one computation for the dashboard and the reports
(:func:`server.policy.distribution.distribution`), delegating every share, threshold and group
membership to the policy pack, so a page or a report shows exactly what the conditions judged.

Signature: a detached Ed25519 signature by the verifier's key over the file's SHA-256 digest,
written next to the file as ``<file>.sig`` (a small JSON document); :func:`verify_report` checks it
against a public key the relying party already trusts.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from contract import SnapshotV1, parse_statement
from contract.display import visible, visible_json
from contract.fsutil import atomic_write
from contract.tlog import (
    CheckpointError,
    LogProofError,
    NoteKey,
    verify_bundle,
    verify_checkpoint,
)
from server.compliance.assurance import host_levels, level_of
from server.errors import Invalid, NotFound
from server.findings import counts_in_headline
from server.log.integrate import Log
from server.policy import PolicySet, load_policy_set
from server.policy.distribution import distribution
from server.results import VerifierKey
from server.store.compliance_models import FindingRow
from server.store.db import Database
from server.store.models import Host, Organization, Site, Snapshot


def load_default_policy() -> PolicySet:
    """The packs the verifier itself judges by (``VEU_POLICIES_DIR``, else the shipped ones)."""
    from server.config import Settings

    return load_policy_set(Settings.from_env().policies_dir)


# =========================================================================== the report


@dataclass(frozen=True)
class Period:
    """A half year: ``2026H1`` is 1 January to 30 June 2026, ``2026H2`` 1 July to 31 December."""

    label: str
    start: date
    end: date  # inclusive

    @classmethod
    def parse(cls, text: str) -> Period:
        m = _PERIOD.match(text.strip().upper())
        if not m:
            raise Invalid("bad_period", f"{text!r} is not a period like 2026H1 or 2026H2")
        year, half = int(m.group(1)), int(m.group(2))
        if half == 1:
            return cls(f"{year}H1", date(year, 1, 1), date(year, 6, 30))
        return cls(f"{year}H2", date(year, 7, 1), date(year, 12, 31))

    def previous(self) -> Period:
        year, half = int(self.label[:4]), int(self.label[5])
        return Period.parse(f"{year - 1}H2" if half == 1 else f"{year}H1")

    def end_moment(self) -> datetime:
        return datetime.combine(self.end, time(23, 59, 59, 999999), tzinfo=UTC)

    def start_moment(self) -> datetime:
        return datetime.combine(self.start, time(0, 0), tzinfo=UTC)


_PERIOD = re.compile(r"^(\d{4})H([12])$")
UNCONFIRMED_TAGS = frozenset({"S", "U"})


@dataclass(frozen=True)
class ChipLine:
    site_id: str
    site_name: str
    country: str
    chip: str
    classification: str
    count: int
    tpp: int


def installed_as_of(
    session: Session, policy: PolicySet, org_id: str, as_of: datetime
) -> tuple[list[ChipLine], dict[str, int], int, list[str]]:
    """Chips per site and model from each host's latest accepted snapshot up to ``as_of``.

    Hosts revoked before ``as_of`` do not count. Returns the lines, the 3A090 TPP per country
    (the distribution's input), how many hosts contributed, and the digests of the snapshots
    counted (the evidence the report cites).
    """
    latest = (
        select(Snapshot.key_id, func.max(Snapshot.seq).label("seq"))
        .join(Site, Site.id == Snapshot.site_id)
        .where(Site.org_id == org_id, Snapshot.collected_at <= as_of)
        .group_by(Snapshot.key_id)
        .subquery()
    )
    rows = session.execute(
        select(Snapshot.envelope, Site.id, Site.name, Site.country, Snapshot.digest)
        .join(latest, (latest.c.key_id == Snapshot.key_id) & (latest.c.seq == Snapshot.seq))
        .join(Host, Host.key_id == Snapshot.key_id)
        .join(Site, Site.id == Snapshot.site_id)
        .where(or_(Host.revoked_at.is_(None), Host.revoked_at > as_of))
        .order_by(Site.id, Snapshot.key_id)
    ).all()
    totals: dict[tuple[str, str], list[Any]] = {}
    by_country: dict[str, int] = {}
    for envelope, site_id, site_name, country, _digest in rows:
        snapshot = _snapshot_of(bytes(envelope))
        contrib = policy.contribution(snapshot, as_of.date(), country=country)
        by_country[country] = by_country.get(country, 0) + contrib.tpp_3a090
        for chip, tot in contrib.models.items():
            line = totals.setdefault(
                (site_id, chip), [site_name, country, tot.classification, 0, 0]
            )
            line[3] += tot.count
            line[4] += tot.tpp
        if contrib.unidentified:
            line = totals.setdefault(
                (site_id, "unidentified"), [site_name, country, "unknown", 0, 0]
            )
            line[3] += contrib.unidentified
    lines = [
        ChipLine(site_id, v[0], v[1], chip, v[2], int(v[3]), int(v[4]))
        for (site_id, chip), v in sorted(totals.items())
    ]
    cited = [row[4] for row in rows]
    return lines, {k: v for k, v in by_country.items() if v}, len(rows), cited


def _snapshot_of(envelope: bytes) -> SnapshotV1:
    value = json.loads(envelope)
    return parse_statement(base64.b64decode(value["payload"]))[1]


def _changes(now: list[ChipLine], before: list[ChipLine]) -> list[dict[str, Any]]:
    old = {(x.site_id, x.chip): x for x in before}
    new = {(x.site_id, x.chip): x for x in now}
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        ref = b or a
        assert ref is not None
        ca, cb = (a.count if a else 0), (b.count if b else 0)
        ta, tb = (a.tpp if a else 0), (b.tpp if b else 0)
        if (ca, ta) == (cb, tb):
            continue
        out.append(
            {
                "site_id": ref.site_id,
                "site_name": ref.site_name,
                "country": ref.country,
                "chip": ref.chip,
                "previous_count": ca,
                "count": cb,
                "delta_count": cb - ca,
                "previous_tpp": ta,
                "tpp": tb,
                "delta_tpp": tb - ta,
            }
        )
    return out


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


#: Findings a report lists one by one; beyond it, they are counted per condition and severity
#: (``findings_by_condition``), which every report carries.
MAX_REPORT_FINDINGS = 5000


def build_report(
    session: Session,
    policy: PolicySet,
    org_id: str,
    period: Period,
    now: datetime,
    *,
    max_findings: int = MAX_REPORT_FINDINGS,
    log: Log | None = None,
) -> dict[str, Any]:
    """Everything the report says, as plain JSON-ready data (the JSON format is this dict)."""
    org = session.get(Organization, org_id)
    if org is None:
        org = session.scalar(select(Organization).where(Organization.name == org_id))
    if org is None:
        raise NotFound("not_found", f"no organization {org_id!r}")
    if period.start_moment() > now:
        raise Invalid("future_period", f"period {period.label} has not started yet")
    as_of = min(period.end_moment(), now)
    prev = period.previous()
    lines, by_country, hosts, cited = installed_as_of(session, policy, org.id, as_of)
    prev_lines, _, _, _ = installed_as_of(session, policy, org.id, prev.end_moment())
    dist = distribution(
        policy, by_country, veu=org.veu, hq_country=org.hq_country, on=as_of.date(), org_id=org.id
    )
    country_totals: dict[str, list[int]] = {}
    for line in lines:
        cur = country_totals.setdefault(line.country, [0, 0])
        cur[0] += line.count
        cur[1] += line.tpp
    during = (
        FindingRow.org_id == org.id,
        FindingRow.opened_at <= as_of,
        or_(FindingRow.closed_at.is_(None), FindingRow.closed_at >= period.start_moment()),
    )
    finding_rows = session.scalars(
        select(FindingRow)
        .where(*during)
        .order_by(FindingRow.opened_at, FindingRow.id)
        .limit(max_findings)
    ).all()
    by_condition: list[dict[str, Any]] = [
        {"condition_id": condition, "severity": severity, "count": int(count)}
        for condition, severity, count in session.execute(
            select(FindingRow.condition_id, FindingRow.severity, func.count())
            .where(*during)
            .group_by(FindingRow.condition_id, FindingRow.severity)
            .order_by(FindingRow.condition_id, FindingRow.severity)
        ).all()
    ]
    findings_total = sum(c["count"] for c in by_condition)
    findings = []
    for f in finding_rows:
        tags = [t for t in f.confidence.split(",") if t]
        findings.append(
            {
                "id": f.id,
                "scope": f.scope,
                "scope_id": f.scope_id,
                "site_id": f.site_id,
                "condition_id": f.condition_id,
                "pack_id": f.condition_id.split("/", 1)[0] if f.pack_status else "",
                "pack_version": f.pack_version,
                "pack_status": f.pack_status,
                "severity": f.severity,
                "subject": f.subject,
                "message": f.message,
                "expected": f.expected,
                "seen": f.seen,
                "citation": f.citation,
                "confidence": tags,
                "unconfirmed_figures": bool(UNCONFIRMED_TAGS & set(tags)),
                "opened_at": _iso(f.opened_at),
                "closed_at": _iso(f.closed_at) if f.closed_at and f.closed_at <= as_of else None,
                "assurance": f.assurance,
            }
        )
    assurance = []
    for site in session.scalars(
        select(Site).where(Site.org_id == org.id).order_by(Site.name, Site.id)
    ):
        counts = host_levels(session, site.id)
        assurance.append(
            {
                "site_id": site.id,
                "site_name": site.name,
                "assurance": level_of(counts),
                "hosts_by_assurance": counts,
            }
        )
    packs = [
        {
            "id": p.id,
            "version": p.version,
            "title": p.title,
            "status": p.status,
            "status_note": " ".join(p.status_note.split()),
            "effective": p.effective.isoformat(),
            "citation": p.source.get("citation", ""),
            "enforced": p.status in ("in-force", "licence-condition"),
            "counts_in_headline": counts_in_headline(p.status),
        }
        for p in policy.packs
    ]
    return {
        "report": "VEU Attest semi-annual inventory report",
        "format_version": 1,
        "organization": {
            "id": org.id,
            "name": org.name,
            "veu": org.veu,
            "hq_country": org.hq_country,
            "parent_hq_country": org.parent_hq_country,
        },
        "period": {
            "label": period.label,
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
            "as_of": _iso(as_of),
            "complete": as_of == period.end_moment(),
        },
        "previous_period": {"label": prev.label, "as_of": _iso(prev.end_moment())},
        "generated_at": _iso(now),
        "policy": {"digest": policy.digest, "packs": packs},
        "hosts_counted": hosts,
        "installed": [line.__dict__ for line in lines],
        "installed_by_country": [
            {"country": c, "count": v[0], "tpp": v[1]} for c, v in sorted(country_totals.items())
        ],
        "changes_since_previous_period": _changes(lines, prev_lines),
        "distribution": {
            "denominator": dist.denominator,
            "total_tpp": dist.total_tpp,
            "thresholds_from": dist.pack,
            "applies": dist.applies,
            "tier1_tpp": dist.tier1_tpp,
            "tier1_share": round(dist.tier1_share, 6),
            "tier1_min": dist.tier1_min,
            "tier1_ok": dist.tier1_ok,
            "us_tpp": dist.us_tpp,
            "us_share": round(dist.us_share, 6),
            "us_min": dist.us_min,
            "us_ok": dist.us_ok,
            "non_tier1_max": dist.non_tier1_max,
            "countries": [
                {
                    "country": c.code,
                    "tier1": c.tier1,
                    "tpp": c.tpp,
                    "share": round(c.share, 6),
                    "limit": c.limit,
                    "within": c.ok,
                }
                for c in dist.countries
            ],
        },
        "assurance": assurance,
        "findings": findings,
        "findings_total": findings_total,
        "findings_by_condition": by_condition,
        **({"transparency_log": transparency_section(log, cited)} if log is not None else {}),
        "findings_on_unconfirmed_figures": sum(1 for f in findings if f["unconfirmed_figures"]),
        "findings_by_pack": _by_pack(findings),
        "notes": [
            "Installed chips come from each active host's latest accepted snapshot up to the "
            "as-of moment; TPP figures come from the policy pack's chip catalog.",
            "Confidence tags: P primary text, E eCFR extract, S secondary sources, C computed, "
            "U unverified. Findings tagged S or U rest on figures not confirmed in the primary "
            "text.",
            "Assurance: the level each site's evidence reaches (its weakest host's latest "
            "snapshot, at generation time; docs/assurance.md); each finding names the level of "
            "the claim it rests on.",
        ],
    }


def transparency_section(log: Log, digests: list[str]) -> dict[str, Any]:
    """The log checkpoint the report was built at, and an inclusion proof in it for every
    snapshot the report counts: a relying party checks them with the log's key alone
    (:func:`verify_report_log`, ``veu-server report verify --log-key``)."""
    note, bundles, missing = log.bundles(sorted(digests))
    return {
        "log_key": log.key.verifier_key,
        "checkpoint": note,
        "evidence": [
            {
                "index": b.index,
                "entry": base64.b64encode(b.entry).decode(),
                "proof": [base64.b64encode(h).decode() for h in b.proof],
            }
            for b in bundles
        ],
        "not_yet_logged": missing,
    }


def verify_report_log(file_bytes: bytes, key: NoteKey) -> tuple[int, int]:
    """Check a JSON report's transparency-log section with the pinned log ``key``: the
    checkpoint's signature, and each cited snapshot's inclusion in it. Answers (snapshots proven,
    checkpoint size); raises :class:`~contract.errors.EvidenceError` (a stable ``code``) when a
    check fails, :class:`~server.errors.Invalid` when the file has no such section."""
    try:
        section = json.loads(file_bytes)["transparency_log"]
        evidence = section["evidence"]
        note = section["checkpoint"]
    except (ValueError, KeyError, TypeError):
        raise Invalid(
            "no_log_section", "the file is not a JSON report with a transparency_log section"
        ) from None
    if note is None:
        raise CheckpointError("the report was built before the log signed a checkpoint")
    size = verify_checkpoint(note, key).size
    for item in evidence:
        try:
            entry = base64.b64decode(item["entry"], validate=True)
            proof = [base64.b64decode(h, validate=True) for h in item["proof"]]
            index = int(item["index"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise LogProofError("a cited snapshot's log evidence is malformed") from None
        verify_bundle(entry, index, proof, note, key)
    return len(evidence), size


# --------------------------------------------------------------------------- formats


def render_json(data: dict[str, Any]) -> bytes:
    """Control and bidi characters in values are written as JSON ``\\u`` escapes (the same
    data, shown visibly)."""
    text = json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False)
    return (visible_json(text) + "\n").encode()


#: A spreadsheet reads a cell starting with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell a person can open safely: agent-controlled text with its control
    and bidi characters as visible escapes, and a leading ``'`` before what a spreadsheet would
    take for a formula (``=``, ``+``, ``-``, ``@``)."""
    if not isinstance(value, str):
        return value
    value = visible(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


class _SafeCsv:
    def __init__(self, buf: io.StringIO) -> None:
        self._w = csv.writer(buf, lineterminator="\n")

    def writerow(self, row: list[Any]) -> None:
        self._w.writerow([csv_cell(v) for v in row])


def render_csv(data: dict[str, Any]) -> bytes:
    """One file, several sections; each starts with a ``# section`` row and its header row."""
    buf = io.StringIO()
    w = _SafeCsv(buf)
    org, period = data["organization"], data["period"]
    w.writerow(["# report", data["report"]])
    w.writerow(
        ["organization", org["name"], org["id"], f"{org['veu']} VEU", f"HQ {org['hq_country']}"]
    )
    w.writerow(
        ["period", period["label"], period["start"], period["end"], f"as of {period['as_of']}"]
    )
    w.writerow(["generated_at", data["generated_at"]])
    w.writerow(["policy_digest", data["policy"]["digest"]])
    for p in data["policy"]["packs"]:
        w.writerow(
            [
                "policy_pack",
                p["id"],
                p["version"],
                p["status"],
                "enforced" if p["enforced"] else "NOT ENFORCED",
                p["status_note"],
            ]
        )
    sections: list[tuple[str, list[str], list[dict[str, Any]]]] = [
        (
            "installed",
            ["site_id", "site_name", "country", "chip", "classification", "count", "tpp"],
            data["installed"],
        ),
        ("installed_by_country", ["country", "count", "tpp"], data["installed_by_country"]),
        (
            "changes_since_previous_period",
            [
                "site_id",
                "site_name",
                "country",
                "chip",
                "previous_count",
                "count",
                "delta_count",
                "previous_tpp",
                "tpp",
                "delta_tpp",
            ],
            data["changes_since_previous_period"],
        ),
        (
            "distribution",
            ["country", "tier1", "tpp", "share", "limit", "within"],
            data["distribution"]["countries"],
        ),
        (
            "findings_by_condition",
            ["condition_id", "severity", "count"],
            data.get("findings_by_condition", []),
        ),
        (
            "findings",
            [
                "id",
                "severity",
                "condition_id",
                "pack_id",
                "pack_version",
                "pack_status",
                "scope",
                "scope_id",
                "site_id",
                "subject",
                "message",
                "expected",
                "seen",
                "citation",
                "confidence",
                "unconfirmed_figures",
                "opened_at",
                "closed_at",
                "assurance",
            ],
            data["findings"],
        ),
        (
            "assurance",
            ["site_id", "site_name", "assurance", "hosts_by_assurance"],
            [
                {
                    **a,
                    "assurance": a["assurance"] or "unknown",
                    "hosts_by_assurance": "; ".join(
                        f"{level} {n}" for level, n in a["hosts_by_assurance"].items()
                    ),
                }
                for a in data["assurance"]
            ],
        ),
    ]
    for name, header, rows in sections:
        w.writerow([])
        w.writerow([f"# {name}"])
        if name == "distribution":
            d = data["distribution"]
            w.writerow(["denominator", d["denominator"]])
            w.writerow(["tier1_share", d["tier1_share"], "min", d["tier1_min"], d["tier1_ok"]])
            if d["us_min"] is not None:
                w.writerow(["us_share", d["us_share"], "min", d["us_min"], d["us_ok"]])
            w.writerow(["non_tier1_max", d["non_tier1_max"]])
        w.writerow(header)
        for row in rows:
            w.writerow(
                [
                    "+".join(v) if isinstance(v := row.get(h), list) else ("" if v is None else v)
                    for h in header
                ]
            )
    return buf.getvalue().encode("utf-8")


def _latin1(text: Any) -> str:
    s = str(text)
    for a, b in (
        ("≥", ">="),
        ("≤", "<="),
        ("…", "..."),
        ("—", "-"),
        ("–", "-"),
        ("’", "'"),
        ("“", '"'),
        ("”", '"'),
        ("✓", "OK"),
        ("✗", "X"),
        ("×", "x"),
    ):
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


def render_pdf(data: dict[str, Any]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(orientation="L", unit="mm", format="A4")
    generated = datetime.fromisoformat(data["generated_at"].replace("Z", "+00:00"))
    pdf.set_creation_date(generated)
    pdf.set_title(
        _latin1(f"{data['report']} {data['organization']['name']} {data['period']['label']}")
    )
    pdf.set_author("VEU Attest verifier")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def heading(text: str, size: int = 13) -> None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", size)
        pdf.multi_cell(width, 7, _latin1(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def para(text: str) -> None:
        pdf.multi_cell(width, 5, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def table(header: list[str], rows: list[list[Any]], widths: list[float]) -> None:
        scale = width / sum(widths)
        ws = [w * scale for w in widths]
        pdf.set_font("Helvetica", "B", 8)
        for title, w in zip(header, ws, strict=True):
            pdf.cell(w, 6, _latin1(title), border=1)
        pdf.ln()
        pdf.set_font("Helvetica", "", 8)
        for row in rows:
            texts = [_latin1("" if v is None else v) for v in row]
            counts = []
            for t, w in zip(texts, ws, strict=True):
                found: Any = pdf.multi_cell(w, 4.5, t, dry_run=True, output="LINES")
                counts.append(len(found) if isinstance(found, list) else 1)
            row_h = 4.5 * max(1, *counts)
            if pdf.get_y() + row_h > pdf.h - pdf.b_margin:
                pdf.add_page()
            y, x = pdf.get_y(), pdf.l_margin
            for t, w in zip(texts, ws, strict=True):
                pdf.set_xy(x, y)
                pdf.multi_cell(w, 4.5, t, border=0)
                pdf.rect(x, y, w, row_h)
                x += w
            pdf.set_xy(pdf.l_margin, y + row_h)
        if not rows:
            pdf.cell(sum(ws), 6, "(none)", border=1)
            pdf.ln()

    org, period = data["organization"], data["period"]
    heading(f"{data['report']}", 16)
    para(
        f"Organization: {org['name']} ({org['id']}), {org['veu']} VEU, headquarters "
        f"{org['hq_country']}. Period {period['label']}: {period['start']} to {period['end']}"
        f"{'' if period['complete'] else ' (in progress)'}; inventory as of {period['as_of']}. "
        f"Generated {data['generated_at']}; hosts counted: {data['hosts_counted']}."
    )
    heading("Policy packs used")
    for p in data["policy"]["packs"]:
        para(
            f"{p['id']} {p['version']} - {p['title']}. Status: {p['status']}"
            f"{'' if p['enforced'] else ' (NOT ENFORCED)'}. {p['status_note']}"
        )
    para(f"Policy set digest: {data['policy']['digest']}")
    heading("Installed chips per site")
    table(
        ["Site", "Country", "Chip", "Class", "Count", "TPP"],
        [
            [
                f"{x['site_name']} ({x['site_id']})",
                x["country"],
                x["chip"],
                x["classification"],
                x["count"],
                f"{x['tpp']:,}",
            ]
            for x in data["installed"]
        ],
        [60, 18, 40, 22, 16, 24],
    )
    heading("Installed chips per country")
    table(
        ["Country", "Count", "TPP"],
        [[x["country"], x["count"], f"{x['tpp']:,}"] for x in data["installed_by_country"]],
        [30, 20, 30],
    )
    heading(f"Changes since the previous period ({data['previous_period']['label']})")
    table(
        ["Site", "Chip", "Count before", "Count now", "Change", "TPP before", "TPP now"],
        [
            [
                x["site_name"],
                x["chip"],
                x["previous_count"],
                x["count"],
                f"{x['delta_count']:+}",
                f"{x['previous_tpp']:,}",
                f"{x['tpp']:,}",
            ]
            for x in data["changes_since_previous_period"]
        ],
        [50, 40, 20, 20, 18, 25, 25],
    )
    d = data["distribution"]
    heading("Geographic distribution of installed TPP")
    para(f"Denominator: {d['denominator']}.")
    para(
        f"Tier 1 share {d['tier1_share']:.2%} (at least {d['tier1_min']:.0%}): "
        f"{'within' if d['tier1_ok'] else 'BELOW THRESHOLD'}."
        + (
            f" U.S. share {d['us_share']:.2%} (at least {d['us_min']:.0%}): "
            f"{'within' if d['us_ok'] else 'BELOW THRESHOLD'}."
            if d["us_min"] is not None
            else ""
        )
        + f" Each non-Tier-1 country at most {d['non_tier1_max']:.0%}."
        + ("" if d["applies"] else " National VEU: shown for information.")
    )
    table(
        ["Country", "Tier 1", "TPP", "Share", "Limit", "Within"],
        [
            [
                c["country"],
                "yes" if c["tier1"] else "no",
                f"{c['tpp']:,}",
                f"{c['share']:.2%}",
                c["limit"],
                "yes" if c["within"] else "NO",
            ]
            for c in d["countries"]
        ],
        [20, 15, 25, 20, 70, 15],
    )
    heading("Assurance of the evidence per site")
    para(
        "The weakest level any reporting host's latest snapshot reached (declared < "
        "self-reported < tpm-bound-key < tpm-quoted < tpm-measured-agent), at generation time."
    )
    table(
        ["Site", "Assurance", "Hosts per level"],
        [
            [
                f"{a['site_name']} ({a['site_id']})",
                a["assurance"] or "unknown",
                ", ".join(f"{n} {level}" for level, n in a["hosts_by_assurance"].items()),
            ]
            for a in data["assurance"]
        ],
        [70, 35, 85],
    )
    heading("Findings open during the period")
    total = data.get("findings_total", len(data["findings"]))
    shown = len(data["findings"])
    listed = "" if total == shown else f" (the first {shown} listed)"
    para(
        f"{total} findings{listed}; {data['findings_on_unconfirmed_figures']} of those listed rest "
        "on unconfirmed figures (confidence S or U, marked *)."
    )
    if listed:
        table(
            ["Condition", "Severity", "Findings"],
            [[c["condition_id"], c["severity"], c["count"]] for c in data["findings_by_condition"]],
            [110, 40, 30],
        )
    table(
        ["Pack", "Version", "Status", "Findings", "Violations", "Cannot attest"],
        [
            [
                p["pack_id"],
                p["version"],
                p["pack_status"],
                str(p["findings"]),
                str(p["violations"]),
                str(p["cannot_attest"]),
            ]
            for p in data["findings_by_pack"]
        ],
        [50, 20, 40, 25, 25, 25],
    )
    table(
        ["Severity", "Condition", "Subject", "Message", "Citation", "Fig.", "Opened", "Closed"],
        [
            [
                f["severity"],
                f["condition_id"] + (f" ({f['pack_status']})" if f["pack_status"] else ""),
                f["subject"],
                f["message"],
                f["citation"] or "",
                ",".join(f["confidence"]) + (" *" if f["unconfirmed_figures"] else ""),
                (f["opened_at"] or "")[:16],
                (f["closed_at"] or "open")[:16],
            ]
            for f in data["findings"]
        ],
        [18, 40, 35, 70, 45, 10, 22, 22],
    )
    heading("Notes")
    for note in data["notes"]:
        para(note)
    para(
        "This file is signed by the verifier: a detached Ed25519 signature over its SHA-256 "
        "digest (the .sig file). Check it with: veu-server report verify FILE FILE.sig"
    )
    return bytes(pdf.output())


def _by_pack(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings counted per pack (appraisal findings under pack "-"), with each pack's status."""
    out: dict[str, dict[str, Any]] = {}
    for f in findings:
        key = f["pack_id"] or "-"
        entry = out.setdefault(
            key,
            {
                "pack_id": key,
                "version": f["pack_version"],
                "pack_status": f["pack_status"] or "appraisal",
                "counts_in_headline": counts_in_headline(f["pack_status"]),
                "findings": 0,
                "violations": 0,
                "cannot_attest": 0,
            },
        )
        entry["findings"] += 1
        entry["violations"] += f["severity"] == "violation"
        entry["cannot_attest"] += f["severity"] == "cannot_attest"
    return [out[k] for k in sorted(out)]


RENDERERS = {"json": render_json, "csv": render_csv, "pdf": render_pdf}


# --------------------------------------------------------------------------- signatures


def sign_report(data: bytes, key: VerifierKey, *, name: str = "") -> bytes:
    """A detached signature document: Ed25519 over the raw SHA-256 digest of the file."""
    digest = hashlib.sha256(data).digest()
    return render_json(
        {
            "type": "veu-attest-report-signature",
            "alg": "Ed25519",
            "signed": "sha256 digest of the file (32 raw bytes)",
            "file": name,
            "sha256": digest.hex(),
            "key_id": key.key_id,
            "public_key": key.public_pem(),
            "signature": base64.b64encode(key.private.sign(digest)).decode("ascii"),
        }
    )


def verify_report(file_bytes: bytes, sig_bytes: bytes, public_key: Ed25519PublicKey) -> bool:
    """True when ``sig_bytes`` is a valid signature by ``public_key`` over this file's digest.

    The public key must come from the relying party's trust (the verifier's published key), not
    from the signature document, which merely carries a copy for convenience.
    """
    digest = hashlib.sha256(file_bytes).digest()
    try:
        doc = json.loads(sig_bytes)
        signature = base64.b64decode(doc["signature"], validate=True)
        if doc.get("sha256") not in (None, digest.hex()):
            return False
    except (ValueError, KeyError, TypeError, binascii.Error):
        if len(sig_bytes) != 64:
            return False
        signature = sig_bytes  # a bare 64-byte signature
    try:
        public_key.verify(signature, digest)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Written:
    path: Path
    signature: Path

    @property
    def name(self) -> str:
        return self.path.name


def generate(
    db: Database,
    policy: PolicySet,
    org_id: str,
    period: str,
    fmt: str,
    now: datetime,
    *,
    log: Log | None = None,
) -> tuple[dict[str, Any], bytes]:
    if fmt not in RENDERERS:
        raise Invalid("bad_format", f"format must be one of {', '.join(RENDERERS)}")
    with db.read() as session:
        data = build_report(session, policy, org_id, Period.parse(period), now, log=log)
    return data, RENDERERS[fmt](data)


def write_signed(
    db: Database,
    policy: PolicySet,
    key: VerifierKey,
    org_id: str,
    period: str,
    fmt: str,
    out_dir: Path,
    now: datetime,
    *,
    out: Path | None = None,
    log: Log | None = None,
) -> Written:
    """Build, render, sign; write the file and ``<file>.sig`` (atomically, 0600). ``log``: the
    JSON format carries the log's checkpoint and a proof for each snapshot it counts."""
    data, body = generate(db, policy, org_id, period, fmt, now, log=log)
    if out is None:
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = out_dir / f"{data['organization']['id']}-{data['period']['label']}-{stamp}.{fmt}"
    sig = out.with_name(out.name + ".sig")
    atomic_write(out, body, mode=0o600)
    atomic_write(sig, sign_report(body, key, name=out.name), mode=0o600)
    return Written(out, sig)
