"""The geographic distribution of an organization's installed TPP, against its pack's shares.

One computation for the dashboard and the reports: shares and group memberships come from
:func:`server.policy.engine.org_variables` (what the organization conditions judge), the
thresholds from the reference pack's ``universal_*_share`` parameters. Pure: the caller hands in
the TPP per country.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from server.policy.aggregate import OrgAggregate
from server.policy.engine import PolicySet, org_variables
from server.policy.facts import OrgFacts


@dataclass(frozen=True)
class CountryShare:
    code: str
    tpp: int
    share: float
    tier1: bool
    limit: str  # what applies to this country, in words
    ok: bool


@dataclass(frozen=True)
class Distribution:
    total_tpp: int
    denominator: str
    countries: tuple[CountryShare, ...]
    tier1_tpp: int
    tier1_share: float
    tier1_min: float
    us_tpp: int
    us_share: float
    us_min: float | None  # None unless the organization is headquartered in the U.S.
    non_tier1_max: float
    pack: str  # "id version" of the pack whose thresholds apply
    applies: bool  # universal VEU: the shares are conditions; national: shown for information

    @property
    def tier1_ok(self) -> bool:
        return self.total_tpp == 0 or self.tier1_share >= self.tier1_min

    @property
    def us_ok(self) -> bool:
        return self.us_min is None or self.total_tpp == 0 or self.us_share >= self.us_min


def distribution(
    policy: PolicySet,
    tpp_by_country: dict[str, int],
    *,
    veu: str,
    hq_country: str,
    on: date,
    org_id: str = "",
) -> Distribution:
    pack = policy.reference_pack(on)
    agg = OrgAggregate({k: int(v) for k, v in tpp_by_country.items() if v})
    v = org_variables(pack, OrgFacts(org_id, veu, hq_country, hq_country, agg), on)
    tier1_min = pack.number("universal_tier1_min_share")
    us_min = pack.number("universal_us_min_share")
    nt_max = pack.number("universal_non_tier1_max_share")
    org = v["org"]
    rows = []
    for c in v["countries"]:
        if c["tier1"]:
            limit, ok = f"Tier 1 (counts toward ≥ {tier1_min:.0%})", True
        else:
            limit, ok = f"non-Tier-1: ≤ {nt_max:.0%}", c["share"] <= nt_max
        if c["code"] == "US" and hq_country == "US":
            limit += f"; U.S. HQ: ≥ {us_min:.0%}"
        rows.append(
            CountryShare(c["code"], int(c["tpp"]), float(c["share"]), bool(c["tier1"]), limit, ok)
        )
    total = int(org["total_tpp"])
    return Distribution(
        total_tpp=total,
        denominator=_denominator(total),
        countries=tuple(rows),
        tier1_tpp=int(org["tier1_tpp"]),
        tier1_share=float(org["tier1_share"]),
        tier1_min=tier1_min,
        us_tpp=int(org["us_tpp"]),
        us_share=float(org["us_share"]),
        us_min=us_min if hq_country.upper() == "US" else None,
        non_tier1_max=nt_max,
        pack=f"{pack.id} {pack.version}",
        applies=veu == "universal",
    )


def _denominator(total: int) -> str:
    return (
        f"{total:,} TPP: the installed TPP of 3A090 accelerators at every site of the "
        "organization, from the latest accepted snapshot of each active host"
    )
