"""Incremental site and organization aggregates: one new snapshot costs O(chip models), not O(site).

A host's :class:`HostContribution` is what its latest accepted snapshot adds to the totals. When a
host sends a new snapshot the store calls ``aggregate.apply(old, new)``: the old contribution is
subtracted and the new one added. A host that goes inactive is ``apply(old, None)``; a new host is
``apply(None, new)``. TPP figures are integers, so sums are exact however many times they change.

Aggregates serialize to and from JSON so the store can persist them next to the site row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelTotal:
    count: int = 0
    tpp: int = 0
    classification: str = "none"


@dataclass(frozen=True)
class HostContribution:
    """What one snapshot contributes: per chip model, its count and TPP; 3A090 total; identities."""

    models: dict[str, ModelTotal]
    tpp_3a090: int
    identities: tuple[str, ...]  # "uuid:GPU-…" or "serial:…"
    country: str = ""
    unidentified: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {
                k: [v.count, v.tpp, v.classification] for k, v in sorted(self.models.items())
            },
            "tpp_3a090": self.tpp_3a090,
            "identities": list(self.identities),
            "country": self.country,
            "unidentified": self.unidentified,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostContribution:
        return cls(
            models={
                k: ModelTotal(int(v[0]), int(v[1]), str(v[2])) for k, v in data["models"].items()
            },
            tpp_3a090=int(data["tpp_3a090"]),
            identities=tuple(data.get("identities", ())),
            country=str(data.get("country", "")),
            unidentified=int(data.get("unidentified", 0)),
        )


def _add_models(target: dict[str, ModelTotal], source: dict[str, ModelTotal], sign: int) -> None:
    for name, tot in source.items():
        cur = target.setdefault(name, ModelTotal(classification=tot.classification))
        cur.count += sign * tot.count
        cur.tpp += sign * tot.tpp
        if cur.count == 0 and cur.tpp == 0:
            del target[name]


@dataclass
class SiteAggregate:
    """Installed chips at one site, from the latest accepted snapshot of each active host."""

    models: dict[str, ModelTotal] = field(default_factory=dict)
    tpp_3a090: int = 0
    accelerators: int = 0
    unidentified: int = 0
    hosts: int = 0

    def apply(self, old: HostContribution | None, new: HostContribution | None) -> None:
        for contrib, sign in ((old, -1), (new, 1)):
            if contrib is None:
                continue
            _add_models(self.models, contrib.models, sign)
            self.tpp_3a090 += sign * contrib.tpp_3a090
            self.accelerators += sign * (
                sum(m.count for m in contrib.models.values()) + contrib.unidentified
            )
            self.unidentified += sign * contrib.unidentified
            self.hosts += sign

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {
                k: [v.count, v.tpp, v.classification] for k, v in sorted(self.models.items())
            },
            "tpp_3a090": self.tpp_3a090,
            "accelerators": self.accelerators,
            "unidentified": self.unidentified,
            "hosts": self.hosts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SiteAggregate:
        return cls(
            models={
                k: ModelTotal(int(v[0]), int(v[1]), str(v[2])) for k, v in data["models"].items()
            },
            tpp_3a090=int(data["tpp_3a090"]),
            accelerators=int(data["accelerators"]),
            unidentified=int(data.get("unidentified", 0)),
            hosts=int(data.get("hosts", 0)),
        )


@dataclass
class OrgAggregate:
    """Installed 3A090 TPP per country across every site of one VEU."""

    tpp_by_country: dict[str, int] = field(default_factory=dict)

    def apply(self, old: HostContribution | None, new: HostContribution | None) -> None:
        for contrib, sign in ((old, -1), (new, 1)):
            if contrib is None:
                continue
            if not contrib.country:
                raise ValueError("a contribution to an organization aggregate needs its country")
            total = self.tpp_by_country.get(contrib.country, 0) + sign * contrib.tpp_3a090
            if total:
                self.tpp_by_country[contrib.country] = total
            else:
                self.tpp_by_country.pop(contrib.country, None)

    @property
    def total_tpp(self) -> int:
        return sum(self.tpp_by_country.values())

    def to_json(self) -> dict[str, Any]:
        return {"tpp_by_country": dict(sorted(self.tpp_by_country.items()))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrgAggregate:
        return cls({str(k): int(v) for k, v in data["tpp_by_country"].items()})
