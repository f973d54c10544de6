"""Country groups with dated membership: lists change, so a verdict on a date uses that date's list.

A member belongs to a group on day ``d`` when ``from <= d`` and (no ``until`` or ``d <= until``).
``treated_as`` maps a territory onto a country for every group (Macau is treated with China), so an
expression asks one question — is the site's country arms-embargoed — and gets the right answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path

from server.policy._yaml import Reader, load_yaml
from server.policy.errors import PackError
from server.policy.figures import read_tag

_MEMBER_KEYS = {"code", "name", "from", "until", "confidence", "source", "note"}


@dataclass(frozen=True)
class Membership:
    code: str
    name: str
    start: date | None
    until: date | None
    confidence: str
    source: str

    def on(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (
            self.until is None or day <= self.until
        )


@dataclass(frozen=True)
class Group:
    id: str
    title: str
    citation: str
    members: tuple[Membership, ...]

    def codes_on(self, day: date) -> frozenset[str]:
        return frozenset(m.code for m in self.members if m.on(day))

    def membership(self, code: str, day: date) -> Membership | None:
        for m in self._by_code.get(code, ()):
            if m.on(day):
                return m
        return None

    @cached_property
    def _by_code(self) -> dict[str, tuple[Membership, ...]]:
        """Members by code: every judgement asks about a few countries of long lists."""
        out: dict[str, list[Membership]] = {}
        for m in self.members:
            out.setdefault(m.code, []).append(m)
        return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class Countries:
    groups: dict[str, Group]
    treated_as: dict[str, tuple[str, str]]  # territory -> (country, confidence)

    def canonical(self, code: str) -> str:
        code = code.upper()
        return self.treated_as.get(code, (code, ""))[0]

    def in_group(self, code: str | None, group: str, day: date) -> bool:
        if not code or group not in self.groups:
            return False
        g = self.groups[group]
        return (
            g.membership(code.upper(), day) is not None
            or g.membership(self.canonical(code), day) is not None
        )

    def groups_of(self, code: str | None, day: date) -> list[str]:
        return sorted(g for g in self.groups if self.in_group(code, g, day))

    def confidence_of(self, code: str | None, group: str, day: date) -> tuple[str, ...]:
        if not code or group not in self.groups:
            return ()
        tags = set()
        for c in {code.upper(), self.canonical(code)}:
            m = self.groups[group].membership(c, day)
            if m is not None:
                tags.add(m.confidence)
        if code.upper() in self.treated_as:
            tags.add(self.treated_as[code.upper()][1])
        return tuple(sorted(tags))


def _code(r: Reader, key: str) -> str:
    value = r.rstr(key)
    if len(value) != 2 or not value.isalpha() or not value.isupper():
        raise r.error(
            key, "bad_country", f"country codes are ISO 3166-1 alpha-2 in capitals, got {value!r}"
        )
    return value


def _date(r: Reader, key: str) -> date | None:
    value = r.raw(key)
    if value is None:
        return None
    if not isinstance(value, date):
        raise r.error(key, "bad_date", f"{key} must be a date like 2025-01-13")
    return value


def load_countries(path: Path) -> Countries:
    doc = load_yaml(path)
    top = Reader(path, doc, "countries", {"groups", "treated_as", "source"})
    groups: dict[str, Group] = {}
    groups_node = top.req("groups")
    gr = Reader(
        path, groups_node, "groups", set(groups_node) if isinstance(groups_node, dict) else set()
    )
    for gid in gr.node:
        g = Reader(path, gr.node[gid], f"group {gid}", {"title", "citation", "members", "note"})
        members: list[Membership] = []
        for item in g.seq("members"):
            m = Reader(path, item, f"member of {gid}", _MEMBER_KEYS)
            start, until = _date(m, "from"), _date(m, "until")
            if start and until and until < start:
                raise m.error("until", "bad_dates", "until is before from")
            code = _code(m, "code")
            for other in members:
                if other.code == code and _overlap(other.start, other.until, start, until):
                    raise m.error(
                        "code",
                        "overlapping_membership",
                        f"{code} is listed twice in {gid} for overlapping dates",
                    )
            members.append(
                Membership(
                    code=code,
                    name=m.rstr("name"),
                    start=start,
                    until=until,
                    confidence=read_tag(path, m.node, "confidence", m.req("confidence")),
                    source=m.rstr("source"),
                )
            )
        groups[gid] = Group(gid, g.rstr("title"), g.rstr("citation"), tuple(members))
    for required in ("tier1", "d5"):
        if required not in groups:
            raise PackError(
                path,
                top.line("groups"),
                "missing_group",
                f"countries.yaml needs group {required!r}",
            )
    treated: dict[str, tuple[str, str]] = {}
    for item in top.seq("treated_as", required=False):
        t = Reader(path, item, "treated_as entry", {"code", "as", "confidence", "source", "note"})
        treated[_code(t, "code")] = (
            _code(t, "as"),
            read_tag(path, t.node, "confidence", t.req("confidence")),
        )
        t.rstr("source")
    return Countries(groups, treated)


def _overlap(a0: date | None, a1: date | None, b0: date | None, b1: date | None) -> bool:
    lo_a, hi_a = a0 or date.min, a1 or date.max
    lo_b, hi_b = b0 or date.min, b1 or date.max
    return lo_a <= hi_b and lo_b <= hi_a
