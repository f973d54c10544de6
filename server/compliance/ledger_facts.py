"""What the shipment ledger says about a site, for the pack's ledger conditions: shipped chips not
yet seen at their site (after the pack's grace period), chips reported by hosts that no shipment
names, and the LPP quantities used per consignee and year.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from server.policy.facts import ReportedChip, UnseenShipment
from server.store.compliance_models import (
    Shipment,
    ShipmentItem,
)
from server.store.models import Host, InventoryAccelerator, Site


@dataclass(frozen=True)
class LedgerFacts:
    """What the shipment ledger shows at a site (judged by the packs' ``site.*`` ledger
    conditions): empty unless the site keeps a ledger."""

    has_ledger: bool = False
    unseen: tuple[UnseenShipment, ...] = ()
    reported: tuple[ReportedChip, ...] = ()


def ledger_facts(
    session: Session, site: Site, key_ids: Sequence[str], now: datetime
) -> LedgerFacts:
    """Shipments vs observed chips at a site that keeps a ledger (has at least one shipment):
    shipped chips no host here reported (oldest first, at most 500), and the chips the hosts
    ``key_ids`` report with whether a shipment lists them."""
    has_ledger = session.scalar(
        select(func.count()).select_from(ShipmentItem).where(ShipmentItem.site_id == site.id)
    )
    if not has_ledger:
        return LedgerFacts()
    seen_uuid = (
        select(InventoryAccelerator.uuid)
        .join(Host, Host.key_id == InventoryAccelerator.key_id)
        .where(Host.site_id == site.id)
    )
    seen_serial = (
        select(InventoryAccelerator.serial)
        .join(Host, Host.key_id == InventoryAccelerator.key_id)
        .where(Host.site_id == site.id)
    )
    missing = session.execute(
        select(ShipmentItem.identity, Shipment.id, Shipment.shipped_on)
        .join(Shipment, Shipment.id == ShipmentItem.shipment_id)
        .where(
            ShipmentItem.site_id == site.id,
            ~and_(
                ShipmentItem.identity.like("uuid:%"),
                func.substr(ShipmentItem.identity, 6).in_(seen_uuid),
            ),
            ~and_(
                ShipmentItem.identity.like("serial:%"),
                func.substr(ShipmentItem.identity, 8).in_(seen_serial),
            ),
        )
        .order_by(Shipment.shipped_on, ShipmentItem.identity)
        .limit(500)
    ).all()
    today = now.date()
    unseen = tuple(
        UnseenShipment(identity, shipment_id, shipped_on.isoformat(), (today - shipped_on).days)
        for identity, shipment_id, shipped_on in missing
    )
    reported: list[ReportedChip] = []
    for key_id in key_ids:
        reported.extend(_reported_chips(session, key_id))
    return LedgerFacts(True, unseen, tuple(reported))


def _reported_chips(session: Session, key_id: str) -> list[ReportedChip]:
    rows = session.execute(
        select(InventoryAccelerator.uuid, InventoryAccelerator.serial).where(
            InventoryAccelerator.key_id == key_id
        )
    ).all()
    idents = [f"uuid:{u}" for u, _ in rows if u] + [f"serial:{s}" for _, s in rows if s]
    if not idents:
        return []
    # Each listed chip with the site and lab test record of (the latest) shipment listing it.
    shipped: dict[str, tuple[str, str]] = {}
    for ident, site_id, lab_test in session.execute(
        select(ShipmentItem.identity, ShipmentItem.site_id, Shipment.lab_test)
        .join(Shipment, Shipment.id == ShipmentItem.shipment_id)
        .where(ShipmentItem.identity.in_(idents))
        .order_by(Shipment.shipped_on, Shipment.id)
    ):
        shipped[ident] = (site_id or "", lab_test or "")
    out: list[ReportedChip] = []
    for uuid_, serial in rows:
        names = [
            n for n in (f"uuid:{uuid_}" if uuid_ else "", f"serial:{serial}" if serial else "") if n
        ]
        if names:
            found = next((shipped[n] for n in names if n in shipped), None)
            out.append(
                ReportedChip(
                    names[0],
                    key_id,
                    found is not None,
                    found[0] if found else "",
                    found[1] if found else "",
                )
            )
    return out


#: The countries whose shipments count as "China and Macau" (91 FR 1684 condition d).
_CN_MO = ("CN", "MO")


def shipped_units(session: Session, org_id: str) -> tuple[int, int]:
    """Chips the ledger records as shipped to the organization's sites in China or Macau, and in
    the United States: ``(cn_mo, us)``."""
    rows = session.execute(
        select(Shipment.destination_country, func.coalesce(func.sum(Shipment.quantity), 0))
        .join(Site, Site.id == Shipment.site_id)
        .where(Site.org_id == org_id, Shipment.destination_country.in_((*_CN_MO, "US")))
        .group_by(Shipment.destination_country)
    ).all()
    by = {str(c).upper(): int(n or 0) for c, n in rows}
    return sum(by.get(c, 0) for c in _CN_MO), by.get("US", 0)


def lpp_used(session: Session, consignee: str, year: int) -> int:
    start, end = date(year, 1, 1), date(year, 12, 31)
    total = session.scalar(
        select(func.coalesce(func.sum(Shipment.tpp), 0)).where(
            Shipment.consignee == consignee,
            Shipment.license_exception == "LPP",
            Shipment.shipped_on >= start,
            Shipment.shipped_on <= end,
        )
    )
    return int(total or 0)
