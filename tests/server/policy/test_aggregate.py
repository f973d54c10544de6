"""Site and organization aggregates are incremental: apply(old, new) equals a full recount."""

from __future__ import annotations

import random
from datetime import date

from server.policy import HostContribution, ModelTotal, OrgAggregate, SiteAggregate


def contrib(h100: int, h20: int = 0, country: str = "DE") -> HostContribution:
    models = {}
    if h100:
        models["nvidia-h100-sxm"] = ModelTotal(h100, h100 * 15832, "3A090.a")
    if h20:
        models["nvidia-h20"] = ModelTotal(h20, h20 * 2368, "none")
    return HostContribution(models, h100 * 15832, (), country)


def test_replacing_adding_and_removing_hosts_matches_a_recount() -> None:
    rng = random.Random(4)
    hosts: dict[int, HostContribution] = {}
    site, org = SiteAggregate(), OrgAggregate()
    for _ in range(500):
        h = rng.randrange(20)
        new = (
            None
            if rng.random() < 0.2
            else contrib(rng.randrange(9), rng.randrange(3), rng.choice(["DE", "US"]))
        )
        old = hosts.pop(h, None)
        site.apply(old, new)
        org.apply(old, new)
        if new is not None:
            hosts[h] = new
    recount, org_recount = SiteAggregate(), OrgAggregate()
    for c in hosts.values():
        recount.apply(None, c)
        org_recount.apply(None, c)
    assert site == recount
    assert org == org_recount
    assert site.hosts == len(hosts)


def test_aggregates_round_trip_through_json() -> None:
    site, org = SiteAggregate(), OrgAggregate()
    for c in (contrib(8, 2), contrib(4, country="US")):
        site.apply(None, c)
        org.apply(None, c)
    assert SiteAggregate.from_json(site.to_json()) == site
    assert OrgAggregate.from_json(org.to_json()) == org
    c = contrib(3, 1)
    assert HostContribution.from_json(c.to_json()) == c
    assert org.total_tpp == 12 * 15832


def test_a_removed_model_disappears_from_the_site() -> None:
    site = SiteAggregate()
    site.apply(None, contrib(8))
    site.apply(contrib(8), contrib(0, 4))
    assert set(site.models) == {"nvidia-h20"}
    assert site.tpp_3a090 == 0


def test_dates_are_not_needed_to_aggregate() -> None:
    assert date  # aggregates are pure arithmetic: no clock, no lookup
