"""Test-only fleet builder: writes a realistic compliance state straight into a real database.

Hosts carry real signed envelopes (``tests.server.builders.HostKit``), so envelope downloads and
reports read real evidence; aggregates come from the policy pack's own ``contribution``. Findings
are written as the compliance shell would record them, so the pages can be tested independently of
the ingest pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from server.policy import OrgAggregate, PolicySet, SiteAggregate
from server.store import audit, repo
from server.store.compliance_models import (
    FindingRow,
    HostState,
    ModelFile,
    OrgState,
    RegisteredModel,
    Shipment,
    ShipmentItem,
    SiteAuthorization,
    SiteState,
)
from server.store.db import Database
from server.store.models import (
    ChainHead,
    Host,
    InventoryAccelerator,
    InventoryWeight,
    Snapshot,
)
from tests.server.builders import HostKit, digest_of

TPP_CITATION = "15 CFR part 748, Supp. No. 10, para. 3 (authorized TPP of the site)"


@dataclass
class Fleet:
    org_id: str
    sites: dict[str, str]  # short name -> site id
    hosts: dict[str, list[str]] = field(default_factory=dict)  # short name -> key ids
    admin_key: str = ""
    auditor_key: str = ""
    digests: dict[str, list[str]] = field(default_factory=dict)  # key id -> envelope digests


SITES = [
    # name, country, authorized TPP, hosts with real envelopes
    ("us-east", "US", 1_000_000.0),
    ("de-fra", "DE", 300_000.0),
    ("over-ams", "NL", 100_000.0),  # 1 host x 8 H100 = 126,656 TPP: above its authorization
    ("ae-dxb", "AE", 200_000.0),  # non-Tier-1
]


def seed_fleet(
    db: Database,
    policy: PolicySet,
    now: datetime,
    *,
    hosts_per_site: dict[str, int] | None = None,
    bulk_hosts: int = 0,
) -> Fleet:
    """Four sites of one U.S.-HQ universal VEU; ``bulk_hosts`` extra reporting hosts at us-east."""
    counts = {"us-east": 3, "de-fra": 2, "over-ams": 1, "ae-dxb": 1, **(hosts_per_site or {})}
    with db.write() as s:
        org = repo.add_org(s, "Acme AI", "universal", "US", None, now - timedelta(days=400))
        fleet = Fleet(org.id, {})
        admin, _ = repo.create_api_key(s, "admin", "alice", now)
        auditor, _ = repo.create_api_key(s, "auditor", "bob", now)
        fleet.admin_key, fleet.auditor_key = admin, auditor
        org_agg = OrgAggregate()
        index = 0
        for name, country, tpp in SITES:
            site = repo.add_site(
                s,
                org.id,
                name,
                country,
                tpp,
                f"VEU-2026-{name}",
                False,
                now - timedelta(days=400),
            )
            fleet.sites[name] = site.id
            s.flush()
            s.add(
                SiteAuthorization(
                    site_id=site.id,
                    allowed_models=None,
                    may_store_controlled_weights=name == "us-east",
                )
            )
            agg = SiteAggregate()
            fleet.hosts[name] = []
            for _ in range(counts[name]):
                index += 1
                kit = HostKit(site.id, index)
                contrib = _add_host(s, policy, kit, country, org.id, now, fleet, stale=False)
                agg.apply(None, contrib)
                org_agg.apply(None, contrib)
                fleet.hosts[name].append(kit.key_id)
            status = {"over-ams": "contraindicated", "ae-dxb": "warning"}.get(name, "affirming")
            s.add(
                SiteState(
                    site_id=site.id,
                    aggregate=json.dumps(agg.to_json()),
                    status=status,
                    policy_digest=policy.digest,
                    updated_at=now,
                )
            )
        s.flush()
        us = fleet.sites["us-east"]
        for i in range(bulk_hosts):
            key = f"{i:064x}"
            s.add(
                Host(
                    key_id=key,
                    public_key=b"\0" * 32,
                    site_id=us,
                    status="active",
                    machine_id=None,
                    hostname=f"bulk-{i:05d}",
                    facts="{}",
                    enrolled_at=now - timedelta(days=3),
                    revoked_at=None,
                    last_seen_at=now,
                )
            )
            s.flush()
            s.add(
                ChainHead(key_id=key, seq=1, digest="0" * 64, inventory_digest=None, updated_at=now)
            )
            s.add(
                HostState(
                    key_id=key,
                    site_id=us,
                    org_id=org.id,
                    contribution=json.dumps(
                        {"models": {}, "tpp_3a090": 0, "identities": [], "country": "US"}
                    ),
                    collected_at=now - timedelta(hours=2 if i % 10 == 0 else 0),
                    status="affirming",
                    snapshot_digest="0" * 64,
                    accelerators=0,
                    tpp=0,
                )
            )
        s.add(
            OrgState(
                org_id=org.id,
                aggregate=json.dumps(org_agg.to_json()),
                status="contraindicated",
                policy_digest=policy.digest,
                updated_at=now,
            )
        )
        _findings(s, fleet, now)
        _ledger_and_models(s, fleet, now)
        over_host = fleet.hosts["over-ams"][0]
        audit.append(
            s,
            at=now - timedelta(minutes=5),
            actor=f"host:{over_host}",
            action="evidence.rejected",
            subject=f"host:{over_host}",
            details={"code": "fork", "detail": "a second child of seq 1", "digest": "ab" * 32},
        )
    return fleet


def _add_host(s, policy, kit, country, org_id, now, fleet, *, stale):  # type: ignore[no-untyped-def]
    s.add(
        Host(
            key_id=kit.key_id,
            public_key=kit.key.public_key().public_bytes_raw(),
            site_id=kit.site_id,
            status="active",
            machine_id=kit.machine_id,
            hostname=f"gpu-{kit.index:04d}",
            facts="{}",
            enrolled_at=now - timedelta(days=200),
            revoked_at=None,
            last_seen_at=now,
        )
    )
    s.flush()
    digests = []
    # Two snapshots: one in 2026H1 and the current one; seq 3 after a gap for host 1.
    moments = [datetime(2026, 3, 1, tzinfo=UTC), now - timedelta(minutes=1)]
    last = None
    for moment in moments:
        if kit.index == 1 and moment is moments[-1]:
            kit.seq += 1  # a gap: seq 2 never arrived
        snap = kit.snapshot(now=moment)
        data = kit.envelope(snap)
        digest = digest_of(data)
        kit.seq, kit.prev = snap.seq, digest
        s.add(
            Snapshot(
                digest=digest,
                key_id=kit.key_id,
                site_id=kit.site_id,
                seq=snap.seq,
                prev=snap.prev,
                nonce=None,
                collected_at=moment,
                received_at=moment,
                status="affirming",
                findings="[]",
                result="x",
                size=len(data),
                envelope=data,
            )
        )
        digests.append(digest)
        last = (snap, digest, moment)
    assert last is not None
    snap, digest, moment = last
    fleet.digests[kit.key_id] = digests
    s.add(
        ChainHead(
            key_id=kit.key_id, seq=snap.seq, digest=digest, inventory_digest=None, updated_at=moment
        )
    )
    for a in snap.accelerators:
        s.add(
            InventoryAccelerator(
                key_id=kit.key_id,
                uuid=a.uuid,
                serial=a.serial,
                vendor=a.vendor,
                model=a.model,
                pci_device_id=a.pci_device_id,
                pci_bus_id=a.pci_bus_id,
                memory_mib=a.memory_mib,
                source=a.source,
                snapshot_digest=digest,
            )
        )
    for root in snap.storage:
        for f in root.files:
            s.add(
                InventoryWeight(
                    key_id=kit.key_id,
                    sha256=f.sha256,
                    path=f.path,
                    size=f.size,
                    format=f.format,
                    root=root.root,
                    encryption="unencrypted" if kit.index == 1 else "encrypted",
                    snapshot_digest=digest,
                )
            )
    contrib = policy.contribution(snap, moment.date(), country=country)
    s.add(
        HostState(
            key_id=kit.key_id,
            site_id=kit.site_id,
            org_id=org_id,
            contribution=json.dumps(contrib.to_json()),
            collected_at=moment,
            status="affirming",
            snapshot_digest=digest,
            accelerators=len(snap.accelerators),
            tpp=sum(m.tpp for m in contrib.models.values()),
        )
    )
    return contrib


def _finding(s, fleet, now, **kw):  # type: ignore[no-untyped-def]
    values = dict(
        expected=None,
        seen=None,
        confidence="S",
        opened_at=now - timedelta(days=2),
        last_seen_at=now,
        closed_at=None,
        is_open=True,
        org_id=fleet.org_id,
    )
    values.update(kw)
    s.add(FindingRow(**values))


def _findings(s, fleet, now):  # type: ignore[no-untyped-def]
    over = fleet.sites["over-ams"]
    _finding(
        s,
        fleet,
        now,
        scope="site",
        scope_id=over,
        site_id=over,
        condition_id="ai-diffusion-2025/site.authorized-tpp",
        subject=f"site:{over}",
        severity="violation",
        message=f"Site {over}: installed TPP 126,656 exceeds the authorized 100,000",
        expected="≤ 100,000 TPP",
        seen="126,656 TPP",
        citation=TPP_CITATION,
        confidence="S",
        opened_at=datetime(2026, 5, 2, tzinfo=UTC),
    )
    ae = fleet.sites["ae-dxb"]
    _finding(
        s,
        fleet,
        now,
        scope="organization",
        scope_id=fleet.org_id,
        site_id=None,
        condition_id="ai-diffusion-2025/org.universal-country-share",
        subject="country:AE",
        severity="violation",
        message="14.29% of TPP in AE, a non-Tier-1 country",
        expected="≤ 7%",
        seen="14.29%",
        citation="15 CFR part 748, Supp. No. 10, para. 6",
        confidence="S",
    )
    first = fleet.hosts["us-east"][0]
    _finding(
        s,
        fleet,
        now,
        scope="host",
        scope_id=first,
        site_id=fleet.sites["us-east"],
        condition_id="chain.gap",
        subject=f"host:{first}",
        severity="warning",
        message="seq jumped from 1 to 3: one snapshot missing",
        citation=None,
        confidence="",
    )
    _finding(
        s,
        fleet,
        now,
        scope="site",
        scope_id=ae,
        site_id=ae,
        condition_id="ai-diffusion-2025/site.hosts-fresh",
        subject=f"site:{ae}",
        severity="cannot_attest",
        message="1 host stale",
        citation="15 CFR 748 Supp. 10",
        confidence="U",
        opened_at=datetime(2025, 10, 1, tzinfo=UTC),
        closed_at=datetime(2025, 10, 3, tzinfo=UTC),
        is_open=False,
    )


def _ledger_and_models(s, fleet, now):  # type: ignore[no-untyped-def]
    us = fleet.sites["us-east"]
    s.add(
        Shipment(
            id="shp_1",
            shipped_on=date(2026, 1, 5),
            site_id=us,
            destination_country="US",
            consignee="Acme AI",
            license_exception="VEU",
            end_user="veu",
            chip_model="nvidia-h100-sxm",
            quantity=2,
            tpp=31_664,
            created_at=now,
        )
    )
    s.flush()
    first = fleet.hosts["us-east"][0]
    serial = s.query(InventoryAccelerator.serial).filter_by(key_id=first).first()[0]
    s.add(ShipmentItem(shipment_id="shp_1", site_id=us, identity=f"serial:{serial}"))
    s.add(ShipmentItem(shipment_id="shp_1", site_id=us, identity="serial:NEVER-SEEN-1"))
    s.add(
        RegisteredModel(
            id="mdl_1",
            name="frontier-x",
            training_ops=3e26,
            published=False,
            derived_from=None,
            derived_from_published=False,
            added_training_ops=None,
            less_capable_than_published=False,
            created_at=now,
        )
    )
    s.flush()
    digest = s.query(InventoryWeight.sha256).filter_by(key_id=first).first()[0]
    s.add(ModelFile(digest=digest, model_id="mdl_1"))
