"""The assurance level of sites and of the fleet, from the level each host's latest accepted
snapshot reached (``host_state.assurance``).

A site's level is its weakest host's. A host whose level is not recorded (its latest snapshot was
accepted before migration 0011) makes the site's level unknown (None) until it reports again:
unknown is never taken for strong.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.assurance import LADDER, Level, is_level, parse_level, weakest
from server.store.compliance_models import HostState
from server.store.models import Host

#: The label of hosts without a recorded level, in counts.
UNKNOWN = "unknown"


def weakest_known(levels: Iterable[str | None]) -> Level | None:
    """The weakest of ``levels``; None if any is not a level, or there are none."""
    parsed: list[Level] = []
    for level in levels:
        if not is_level(level):
            return None
        parsed.append(parse_level(level))
    return weakest(parsed)


def host_levels(session: Session, site_id: str | None = None) -> dict[str, int]:
    """How many active reporting hosts (of one site, or of the whole fleet) are at each level,
    weakest first, then ``unknown``; levels no host is at are left out."""
    query = (
        select(HostState.assurance, func.count())
        .join(Host, Host.key_id == HostState.key_id)
        .where(Host.status == "active", HostState.revoked.is_(False))
    )
    if site_id is not None:
        query = query.where(HostState.site_id == site_id)
    counts: dict[str, int] = {}
    for level, n in session.execute(query.group_by(HostState.assurance)):
        label = str(level) if is_level(level) else UNKNOWN
        counts[label] = counts.get(label, 0) + int(n)
    order = {name: i for i, name in enumerate((*LADDER, UNKNOWN))}
    return dict(sorted(counts.items(), key=lambda kv: order[kv[0]]))


def level_of(counts: dict[str, int]) -> Level | None:
    """The weakest level of :func:`host_levels`' counts (None: no host, or one of unknown level)."""
    if UNKNOWN in counts:
        return None
    return weakest_known(counts)


def site_level(session: Session, site_id: str) -> Level | None:
    """The site's level: its weakest reporting host's (None: no host, or one of unknown level)."""
    return level_of(host_levels(session, site_id))
