"""The variables handed to expressions, per scope, and the context the store supplies.

Expressions never see the snapshot itself: they see plain facts the verifier derived with its own
trusted data (catalog, country lists, model registry). Strings are never null — unknown is ``""`` —
so an expression does not have to guard every comparison. The sample facts below are the schema:
loading checks every expression against them, and policies/README.md lists them.

Per-item conditions (``for_each``) bind one item of a list to a fixed name:
``accelerators`` -> ``acc``, ``files`` -> ``file``, ``errors`` -> ``err``,
``unidentified_files`` (the large files under weight roots that are no known weight format,
as the agent lists them) -> ``ufile`` (host scope);
``models`` -> ``model``, ``duplicates`` -> ``dup``, ``ledger_unseen`` -> ``ship``,
``ledger_reported`` -> ``chip`` (site scope); ``countries`` -> ``country`` (organization scope).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract import SnapshotV1
from contract.assurance import Level
from server.policy.aggregate import OrgAggregate, SiteAggregate
from server.policy.models import ModelRegistry

SCOPES = ("host", "site", "organization")

ITEMS: dict[str, dict[str, str]] = {
    "host": {
        "accelerators": "acc",
        "files": "file",
        "errors": "err",
        "unidentified_files": "ufile",
    },
    "site": {
        "models": "model",
        "duplicates": "dup",
        "ledger_unseen": "ship",
        "ledger_reported": "chip",
    },
    "organization": {"countries": "country"},
}

#: The vendors whose devices NVML enumerates (NVIDIA). A PCI-only device of these is "hidden".
NVML_VENDOR_IDS = ("0x10de",)

DEFAULT_DENOMINATOR = (
    "installed TPP of 3A090 chips at all sites of the VEU, from the latest accepted snapshot of "
    "each active host"
)


def snapshot_digests(snapshot: SnapshotV1) -> list[str]:
    """Every SHA-256 in a snapshot's storage the model registry is asked about: weight files
    and listed unidentified files."""
    return [
        d
        for root in snapshot.storage
        for d in [*(f.sha256 for f in root.files), *(u.sha256 for u in root.unidentified)]
        if d
    ]


@dataclass
class HostContext:
    """What the store knows about the host's site when one snapshot is judged."""

    site_id: str
    site_country: str
    site_is_test: bool = False
    site_may_store_controlled_weights: bool = False
    models: ModelRegistry = field(default_factory=ModelRegistry)
    host_id: str = ""  # the store's id for the host (defaults to the agent key id)
    org_id: str = ""  # the site's organization (packs attached to an organization)
    #: The level the appraisal gave the host's own evidence (its key's): contract.assurance.
    key_assurance: Level = "self-reported"
    #: The level a site authorization term demands of every host at the site (None: none).
    site_minimum_assurance: Level | None = None


@dataclass
class SiteFacts:
    """Everything a site-scope condition judges; computed by the store, judged by the engine."""

    site_id: str
    country: str
    authorized_tpp: int | None
    aggregate: SiteAggregate
    allowed_models: list[str] | None = None  # None: any chip model
    stale_hosts: list[str] = field(default_factory=list)
    host_count: int = 0
    duplicate_accelerators: list[tuple[str, list[str]]] = field(default_factory=list)
    #: The site keeps a shipment ledger (at least one shipped chip is recorded for it).
    has_ledger: bool = False
    #: Shipped chips no host of the site has reported, oldest shipment first.
    ledger_unseen: list[UnseenShipment] = field(default_factory=list)
    #: Chips the judged hosts report, each with whether any shipment lists it.
    ledger_reported: list[ReportedChip] = field(default_factory=list)
    #: The site's organization and its VEU type (packs that apply to some of them only).
    org_id: str = ""
    org_type: str = ""
    #: The organization's headquarters and its ultimate parent's (15 CFR 742.6(a)(6)(iii)(A)).
    org_hq_country: str = ""
    org_parent_hq_country: str = ""
    site_name: str = ""
    #: The site's assurance level: its weakest host's (None: no host has reported).
    assurance: Level | None = None


@dataclass(frozen=True)
class UnseenShipment:
    """A chip a shipment to the site lists that no host of the site has reported."""

    identity: str  # uuid:... or serial:...
    shipment_id: str
    shipped_on: str  # ISO date
    age_days: int  # days from the shipment to the day judged


@dataclass(frozen=True)
class ReportedChip:
    """A chip a host of the site reports, and whether a recorded shipment lists it."""

    identity: str
    host: str
    shipped: bool
    #: The site of the shipment that lists it ("" when none does).
    shipped_to: str = ""
    #: The U.S. third-party lab test record of that shipment ("" when none is recorded).
    lab_test: str = ""


@dataclass
class OrgFacts:
    org_id: str
    veu_type: str  # "universal" | "national"
    hq_country: str
    parent_hq_country: str
    aggregate: OrgAggregate
    national_country: str = ""  # national VEU: the one country it is authorized in
    denominator: str = DEFAULT_DENOMINATOR
    #: National caps from the organization's own authorization, overriding the pack's defaults:
    #: list of (from, until, tpp). None: the pack's dated caps.
    national_caps: list[tuple[Any, Any, int]] | None = None
    #: The countries of the organization's sites (packs that apply to some countries only).
    site_countries: tuple[str, ...] = ()
    #: Chips the shipment ledger records as shipped to the organization's sites in China or
    #: Macau, and in the United States (91 FR 1684 condition d).
    cn_mo_shipped_units: int = 0
    us_shipped_units: int = 0


# --------------------------------------------------------------------------- samples (the schema)

_SITE_HOST = {
    "id": "site-1",
    "country": "DE",
    "is_test": False,
    "may_store_controlled_weights": True,
    "embargoed": False,
    "tier1": True,
    "groups": ["tier1"],
}
_ACC = {
    "id": "uuid:GPU-0",
    "uuid": "GPU-0",
    "serial": "",
    "model": "NVIDIA H100 80GB HBM3",
    "vendor": "NVIDIA",
    "pci_vendor_id": "0x10de",
    "pci_device_id": "0x2330",
    "pci_bus_id": "0000:18:00.0",
    "source": "nvml",
    "assurance": "self-reported",
    "assurance_rank": 1,
    "identified": True,
    "chip": "nvidia-h100-sxm",
    "matched_by": "pci",
    "classification": "3A090.a",
    "tpp": 15832,
    "nvml_vendor": True,
    "seen_by_nvml": True,
    "origin": "US",
    "dram_bandwidth_gbs": 3350.0,
    "bandwidth_known": True,
    "confidence": ["S"],
}
_FILE = {
    "path": "/w/model.safetensors",
    "root": "/w",
    "size": 1,
    "sha256": "0" * 64,
    "format": "safetensors",
    "mode": "0640",
    "world_readable": False,
    "encryption": "encrypted",
    "encrypted": True,
    "encryption_method": "dm-crypt/LUKS2",
    "registered": True,
    "model": "m",
    "classification": "4E091",
    "controlled": True,
    "reason": "",
    "error": "",
    "assurance": "self-reported",
}
_ERR = {"collector": "nvml", "code": "x", "detail": "x"}
_UFILE = {
    "path": "/w/blob",
    "root": "/w",
    "size": 1,
    "sha256": "0" * 64,
    "registered": False,
    "model": "",
    "error": "",
}
_PARAMS_PLACEHOLDER: dict[str, Any] = {}


def host_sample(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": {
            "id": "h",
            "key_id": "k",
            "hostname": "h",
            "site_id": "site-1",
            "failed_collectors": ["nvml"],
            "nvml_ok": True,
            "accelerator_count": 1,
            "file_count": 1,
            "unidentified_count": 0,
            "unidentified_file_count": 0,
            "unidentified_file_bytes": 0,
            "assurance": "self-reported",
            "assurance_rank": 1,
            "key_assurance": "self-reported",
            "minimum_assurance": "declared",
            "minimum_assurance_rank": 0,
            "minimum_assurance_by": "pack",
        },
        "site": dict(_SITE_HOST),
        "accelerators": [dict(_ACC)],
        "files": [dict(_FILE)],
        "errors": [dict(_ERR)],
        "unidentified_files": [dict(_UFILE)],
        "params": params,
        "acc": dict(_ACC),
        "file": dict(_FILE),
        "err": dict(_ERR),
        "ufile": dict(_UFILE),
    }


_MODEL = {
    "name": "nvidia-h100-sxm",
    "count": 1,
    "tpp": 15832,
    "classification": "3A090.a",
    "origin": "US",
    "dram_bandwidth_gbs": 3350.0,
    "bandwidth_known": True,
}
_DUP = {"identity": "uuid:GPU-0", "hosts": ["a", "b"]}
_SHIP = {
    "identity": "uuid:GPU-0",
    "shipment_id": "shp_1",
    "shipped_on": "2026-01-01",
    "age_days": 1,
}
_CHIP = {
    "identity": "uuid:GPU-0",
    "host": "h",
    "shipped": True,
    "shipped_to": "site-1",
    "lab_test": "LAB-1",
}


def site_sample(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": {
            "id": "site-1",
            "country": "DE",
            "embargoed": False,
            "tier1": True,
            "groups": ["tier1"],
            "has_authorization": True,
            "authorized_tpp": 1,
            "installed_tpp": 1,
            "installed_h100e": 1.0,
            "accelerator_count": 1,
            "unidentified_count": 0,
            "host_count": 1,
            "stale_hosts": ["h"],
            "any_model_allowed": True,
            "allowed_models": ["nvidia-h100-sxm"],
            "has_ledger": True,
            "name": "Frankfurt-1",
            "judged_on": "2026-01-01",
            "licensed": True,
            "org_id": "org-1",
            "org_hq_country": "US",
            "org_parent_hq_country": "US",
            "org_hq_embargoed": False,
            "assurance": "self-reported",
        },
        "models": [dict(_MODEL)],
        "duplicates": [dict(_DUP)],
        "ledger_unseen": [dict(_SHIP)],
        "ledger_reported": [dict(_CHIP)],
        "params": params,
        "model": dict(_MODEL),
        "dup": dict(_DUP),
        "ship": dict(_SHIP),
        "chip": dict(_CHIP),
    }


_COUNTRY = {"code": "DE", "tpp": 1, "share": 0.5, "tier1": True, "embargoed": False}


def org_sample(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "org": {
            "id": "org-1",
            "veu_type": "universal",
            "hq_country": "US",
            "parent_hq_country": "US",
            "hq_embargoed": False,
            "parent_hq_embargoed": False,
            "hq_tier1": True,
            "parent_hq_tier1": True,
            "total_tpp": 1,
            "tier1_tpp": 1,
            "tier1_share": 1.0,
            "us_tpp": 1,
            "us_share": 1.0,
            "national_country": "",
            "national_tpp": 0,
            "national_cap_tpp": 0,
            "national_cap_known": False,
            "national_cap_period": "",
            "denominator": DEFAULT_DENOMINATOR,
            "cn_mo_shipped_units": 0,
            "us_shipped_units": 0,
        },
        "countries": [dict(_COUNTRY)],
        "params": params,
        "country": dict(_COUNTRY),
    }


def sample_for(scope: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"host": host_sample, "site": site_sample, "organization": org_sample}[scope](params)
