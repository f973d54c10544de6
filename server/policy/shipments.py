"""The shipment limits of the packs in force: License Exception LPP and the Tier 2 allocation.

Pure: the ledger sums what was shipped (per consignee and year, per country) and hands the totals
in; these functions compare them with the reference pack's parameters
(``lpp_annual_tpp_per_consignee``, ``tier2_allocation_tpp``; every pack defines them, so with
several packs only the reference pack's figures warn, once) and return the warnings, each citing
the parameter's source.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from server.policy.engine import PolicySet
from server.policy.pack import Pack


def lpp_warnings(
    policy: PolicySet, consignee: str, used_tpp: int, on: date
) -> list[dict[str, Any]]:
    """Warnings when ``used_tpp`` (this consignee's LPP shipments of ``on``'s calendar year)
    exceeds the annual limit of a pack."""
    out: list[dict[str, Any]] = []
    for pack in _packs(policy, on):
        figure = pack.params["lpp_annual_tpp_per_consignee"]
        limit = int(pack.number("lpp_annual_tpp_per_consignee"))
        if used_tpp > limit:
            out.append(
                {
                    "code": "lpp_limit_exceeded",
                    "detail": (
                        f"consignee {consignee!r} received {used_tpp:,} TPP under LPP in "
                        f"{on.year}; the limit is {limit:,} (pack {pack.id})"
                    ),
                    "citation": figure.source,
                }
            )
    return out


def allocation_warnings(
    policy: PolicySet, country: str, used_tpp: int, on: date
) -> list[dict[str, Any]]:
    """Warnings when ``used_tpp`` (licensed exports to non-VEU end users in ``country``) exceeds
    the Tier 2 country allocation of a pack."""
    out: list[dict[str, Any]] = []
    for pack in _packs(policy, on):
        figure = pack.params["tier2_allocation_tpp"]
        limit = int(pack.number("tier2_allocation_tpp"))
        if used_tpp > limit:
            out.append(
                {
                    "code": "country_allocation_exceeded",
                    "detail": (
                        f"licensed non-VEU exports to {country} total {used_tpp:,} TPP; the "
                        f"allocation is {limit:,} (pack {pack.id})"
                    ),
                    "citation": figure.source,
                }
            )
    return out


def _packs(policy: PolicySet, on: date) -> list[Pack]:
    return [policy.reference_pack(on)]
