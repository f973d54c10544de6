"""The assurance ladder: how strong the evidence behind a claim is, as an ordered vocabulary both
sides share.

One total order (docs/decisions.md, 13), weakest first:

- ``declared``: typed in by a person (an inventory file); nothing probed it.
- ``self-reported``: probed by the host and signed with a key in a file; root on the host can
  sign anything.
- ``tpm-bound-key``: the snapshot key lives in the host's TPM, certified by an attestation key
  that credential activation tied to an endorsement key of a trusted TPM maker.
- ``tpm-quoted``: additionally the snapshot digest is bound into a TPM quote whose PCRs replay
  from the event log and match the site's reference values.
- ``tpm-measured-agent``: additionally the agent's own code and configuration are measured into
  the quote and match the approved ones.
- ``gpu-attested``: per accelerator, the GPU's own signed report (SPDM, maker's root) is bound
  to this snapshot; reached only by an accelerator claim of a host at ``tpm-measured-agent``.
- ``location-bounded``: per host, round-trip times to trusted landmarks bound where the host is,
  inside the authorized area; reached only by a host whose claims are all at ``gpu-attested``.

A level is reached *per claim* (each accelerator, the host's own facts) and is what the verifier
checked, never what the agent asserted. A host's level is its weakest claim's, a site's its
weakest host's (:func:`weakest`). Policy compares levels by rank (:func:`at_least`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, cast, get_args

Level = Literal[
    "declared",
    "self-reported",
    "tpm-bound-key",
    "tpm-quoted",
    "tpm-measured-agent",
    "gpu-attested",
    "location-bounded",
]

#: The ladder, weakest first; a level's index is its rank.
LADDER: tuple[Level, ...] = get_args(Level)
_RANK: dict[str, int] = {level: i for i, level in enumerate(LADDER)}

#: What a level is reached by: any claim, one accelerator, or the host as a whole.
SCOPE: dict[Level, Literal["claim", "accelerator", "host"]] = {
    "declared": "claim",
    "self-reported": "claim",
    "tpm-bound-key": "claim",
    "tpm-quoted": "claim",
    "tpm-measured-agent": "claim",
    "gpu-attested": "accelerator",
    "location-bounded": "host",
}

#: EAR submodule names of the evidence sources (one submodule per source in a signed result).
SOURCE_HOST_KEY = "veu-host-key"
SOURCE_INVENTORY_FILE = "veu-inventory-file"
SOURCE_TPM = "veu-tpm"
#: The claim in each submodule (and in ``veu-snapshot``) naming the level reached.
ASSURANCE_CLAIM = "veu.assurance"


def parse_level(text: object) -> Level:
    """``text`` as a level; ValueError naming the ladder otherwise."""
    if not isinstance(text, str) or text not in _RANK:
        shown = repr(text)[:40]
        raise ValueError(f"unknown assurance level {shown}; the ladder is {', '.join(LADDER)}")
    return cast(Level, text)


def is_level(text: object) -> bool:
    return isinstance(text, str) and text in _RANK


def rank(level: Level) -> int:
    """The level's place on the ladder (0 = ``declared``)."""
    return _RANK[level]


def at_least(level: Level, minimum: Level) -> bool:
    """Whether ``level`` is ``minimum`` or stronger."""
    return _RANK[level] >= _RANK[minimum]


def weakest(levels: Iterable[Level]) -> Level | None:
    """The weakest of ``levels``; None when there are none."""
    found: Level | None = None
    for level in levels:
        if found is None or _RANK[level] < _RANK[found]:
            found = level
    return found


def strongest(levels: Iterable[Level]) -> Level | None:
    """The strongest of ``levels``; None when there are none."""
    found: Level | None = None
    for level in levels:
        if found is None or _RANK[level] > _RANK[found]:
            found = level
    return found


def accelerator_level(source: str, stated: str, key_level: Level) -> Level:
    """The level an accelerator claim reaches: ``declared`` when a person typed it in (an
    inventory file) or the agent says so itself; otherwise the level of the host's own evidence
    (``key_level``). A stronger level the agent states is never taken from it."""
    if source == "inventory-file" or stated == "declared":
        return "declared"
    return key_level
