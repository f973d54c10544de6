"""The assurance a snapshot's evidence reached: one result per evidence source, and the level of
each claim (contract.assurance). Pure: an accepted snapshot and its host's record go in.

Sources, each an EAR submodule of the signed result:

- ``veu-host-key``: the signature by the enrolled host key. A key in a file (or a TPM key whose
  residency enrollment did not prove) reaches ``self-reported``; a key enrolled by credential
  activation ``tpm-bound-key``.
- ``veu-inventory-file``: present when accelerators come from an inventory file; they reach
  ``declared``.
- ``veu-tpm``: present when a v2 snapshot carries a TPM evidence section. A quote verified
  against the enrolled attestation key (and its event log replayed to it: rule 10 of
  server/appraise) is ``affirming``; without reference values to compare the PCRs with, it
  keeps the host at ``tpm-bound-key`` (``tpm-quoted`` needs them). TPM evidence of a host not
  enrolled by credential activation earns nothing (status ``none``): evidence is credited
  only for what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract import SnapshotV1, SnapshotV2
from contract.assurance import (
    ASSURANCE_CLAIM,
    SOURCE_HOST_KEY,
    SOURCE_INVENTORY_FILE,
    SOURCE_TPM,
    Level,
    accelerator_level,
    weakest,
)
from server.findings import Status


@dataclass(frozen=True)
class SourceResult:
    """One evidence source's appraisal: its status and the level it lets claims reach."""

    name: str
    status: Status
    level: Level | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"ear.status": self.status, ASSURANCE_CLAIM: self.level, "detail": self.detail}


@dataclass(frozen=True)
class Assessment:
    #: The level of the host's own claims (the key that signed them, or ``tpm-quoted``).
    key_level: Level
    #: Per accelerator, in snapshot order.
    accelerators: tuple[Level, ...]
    sources: tuple[SourceResult, ...]

    @property
    def level(self) -> Level:
        """The host's level: its weakest claim's."""
        return weakest((self.key_level, *self.accelerators)) or self.key_level


def assess(
    snapshot: SnapshotV1,
    key_level: Level,
    *,
    quote_verified: bool = False,
    reference_match: bool = False,
) -> Assessment:
    """The levels an accepted snapshot's claims reach, signed by a key of ``key_level``;
    ``quote_verified``: rule 10 verified its quote; ``reference_match``: and its PCRs 0-7 are
    the site's known-good values (the claims reach ``tpm-quoted``)."""
    claims: Level = "tpm-quoted" if quote_verified and reference_match else key_level
    accelerators = tuple(
        accelerator_level(a.source, a.assurance, claims) for a in snapshot.accelerators
    )
    sources = [
        SourceResult(
            SOURCE_HOST_KEY,
            "affirming",
            key_level,
            "signature by the enrolled host key (a key in a file: root on the host can sign)"
            if key_level == "self-reported"
            else f"signature by the enrolled host key ({key_level})",
        )
    ]
    declared = sum(1 for level in accelerators if level == "declared")
    if declared:
        sources.append(
            SourceResult(
                SOURCE_INVENTORY_FILE,
                "warning",
                "declared",
                f"{declared} accelerator(s) typed into an inventory file, not probed",
            )
        )
    if quote_verified:
        sources.append(
            SourceResult(
                SOURCE_TPM,
                "affirming" if reference_match else "warning",
                claims,
                "quote verified with the enrolled attestation key over this snapshot and nonce; "
                + (
                    "PCRs 0-7 are the site's reference values"
                    if reference_match
                    else "its PCRs are not all the site's reference values (or it has none), "
                    "so tpm-quoted is not reached"
                ),
            )
        )
    elif isinstance(snapshot, SnapshotV2) and snapshot.evidence and snapshot.evidence.tpm:
        sources.append(
            SourceResult(
                SOURCE_TPM,
                "none",
                None,
                "TPM evidence from a host whose attestation key was not enrolled by credential "
                "activation is not appraised; it earns no level",
            )
        )
    return Assessment(claims, accelerators, tuple(sources))
