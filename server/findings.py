"""Findings and attestation status: the vocabulary every stage of appraisal speaks.

A finding always says which condition demanded what, what was expected and what was seen, on which
subject, under which citation, how firm the figures behind it are (RULES.md confidence tags), and
the assurance level of the claim it rests on (``level``, contract.assurance; ``assurance`` in
JSON).

Status follows the EAR tiers (EAT Attestation Results). Precedence, worst last:
affirming < warning < none (cannot attest) < contraindicated. "Unknown is not compliant": a failed
collector or a stale host yields ``none``, never ``affirming``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from contract.assurance import Level, is_level

Severity = Literal["info", "warning", "cannot_attest", "violation"]
Status = Literal["affirming", "warning", "none", "contraindicated"]

SEVERITY_STATUS: dict[str, Status] = {
    "info": "affirming",
    "warning": "warning",
    "cannot_attest": "none",
    "violation": "contraindicated",
}
STATUS_RANK: dict[str, int] = {"affirming": 0, "warning": 1, "none": 2, "contraindicated": 3}
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "cannot_attest": 2, "violation": 3}

#: The status a pack declares in pack.yaml.
PACK_STATUSES = ("in-force", "proposed", "rescinded-not-enforced", "licence-condition")
#: Pack statuses whose findings count in a site's or organization's headline status by default.
#: ``rescinded-not-enforced`` counts: its text is still codified, and GAO B-337935 (2026-05-12)
#: found that the announcement of non-enforcement is a rule that had to be submitted under the
#: Congressional Review Act. ``proposed`` counts only when a viewer asks for it.
HEADLINE_PACK_STATUSES = ("in-force", "licence-condition", "rescinded-not-enforced")


@dataclass(frozen=True)
class Finding:
    condition_id: str  # e.g. "chain.gap" or "ai-diffusion-2025/site.authorized-tpp"
    severity: Severity
    subject: str  # "host:<key id>", "accelerator:<uuid>", "file:<path>", "site:<id>", "country:DE"
    message: str
    expected: str | None = None
    seen: str | None = None
    citation: str | None = None
    confidence: tuple[str, ...] = field(default_factory=tuple)  # tags of figures used: P E S C U
    #: The pack that judged it (empty for appraisal findings such as ``chain.gap``): its id,
    #: version and status (one of :data:`PACK_STATUSES`).
    pack_id: str = ""
    pack_version: str = ""
    pack_status: str = ""
    #: The assurance level of the evidence the finding rests on (None: evidence of no level, as
    #: for a finding about evidence that is missing altogether).
    level: Level | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "condition_id": self.condition_id,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
            "expected": self.expected,
            "seen": self.seen,
            "citation": self.citation,
            "confidence": list(self.confidence),
            "assurance": self.level,
        }
        if self.pack_id:
            out["pack"] = {
                "id": self.pack_id,
                "version": self.pack_version,
                "status": self.pack_status,
            }
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        pack = data.get("pack") or {}
        return cls(
            condition_id=str(data["condition_id"]),
            severity=data["severity"],
            subject=str(data["subject"]),
            message=str(data["message"]),
            expected=data.get("expected"),
            seen=data.get("seen"),
            citation=data.get("citation"),
            confidence=tuple(data.get("confidence") or ()),
            pack_id=str(pack.get("id", "")),
            pack_version=str(pack.get("version", "")),
            pack_status=str(pack.get("status", "")),
            level=data["assurance"] if is_level(data.get("assurance")) else None,
        )


def counts_in_headline(pack_status: str, *, include_proposed: bool = False) -> bool:
    """Whether findings of a pack with this status count in a headline status.

    Appraisal findings (no pack) always count. Packs ``proposed`` count only in the "what if it
    passed" view. See docs/policy.md, "Several packs at once".
    """
    if pack_status in HEADLINE_PACK_STATUSES or not pack_status:
        return True
    return include_proposed and pack_status == "proposed"


def status_of(
    findings: list[Finding] | tuple[Finding, ...], *, include_proposed: bool = False
) -> Status:
    """The worst status any finding implies; no findings is affirming. Findings of packs that do
    not count in the headline (:func:`counts_in_headline`) are left out."""
    worst: Status = "affirming"
    for finding in findings:
        if finding.pack_status and not counts_in_headline(
            finding.pack_status, include_proposed=include_proposed
        ):
            continue
        candidate = SEVERITY_STATUS[finding.severity]
        if STATUS_RANK[candidate] > STATUS_RANK[worst]:
            worst = candidate
    return worst


def condensed(findings: Sequence[Finding], *, per_condition: int = 25) -> tuple[Finding, ...]:
    """At most ``per_condition`` findings of each condition, then one that counts the rest.

    A host with thousands of unregistered weight files would otherwise get a signed result of
    megabytes. The status is computed from every finding before condensing, and every finding is
    kept in the findings table; the summary says so and carries the worst severity it stands for.
    """
    kept: list[Finding] = []
    extra: dict[str, list[Finding]] = {}
    seen: dict[str, int] = {}
    for finding in findings:
        seen[finding.condition_id] = seen.get(finding.condition_id, 0) + 1
        if seen[finding.condition_id] <= per_condition:
            kept.append(finding)
        else:
            extra.setdefault(finding.condition_id, []).append(finding)
    for condition_id, rest in extra.items():
        worst = max(rest, key=lambda f: SEVERITY_RANK[f.severity])
        kept.append(
            Finding(
                condition_id=condition_id,
                severity=worst.severity,
                subject=f"{len(rest)} more subjects",
                message=(
                    f"{len(rest)} more findings of this condition are not repeated in this "
                    "result; all are listed by GET /v1/findings?condition=" + condition_id
                ),
                citation=worst.citation,
                confidence=worst.confidence,
                pack_id=worst.pack_id,
                pack_version=worst.pack_version,
                pack_status=worst.pack_status,
                level=worst.level,
            )
        )
    return tuple(kept)
