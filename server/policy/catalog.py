"""The chip catalog: what a device is, how much compute it has, and how ECCN 3A090 classifies it.

The agent reports only what the driver and the PCI bus say (vendor and device ids, the model name);
the verifier looks the device up here. Lookup is by ``(pci_vendor_id, pci_device_id)`` first,
because one marketing name covers several boards with different TPP (H100 SXM, PCIe, NVL), then by
the exact name NVML reports. Every TPP and PD figure carries its source and confidence tag.

The 3A090 classification is *computed* from TPP and PD and checked against the one the pack
declares, so a typo in either shows up at load time:

1. 3A090.a: TPP >= 4800, or TPP >= 1600 and PD >= 5.92.
2. 3A090.b: 2400 <= TPP < 4800 and 1.6 <= PD < 5.92, or TPP >= 1600 and 3.2 <= PD < 5.92.
3. Not designed or marketed for data centers and TPP < 4800: outside 3A090.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from contract import Accelerator
from server.policy._yaml import Reader, load_yaml
from server.policy.errors import PackError
from server.policy.figures import Figure, read_figure, read_tag

Classification = Literal["3A090.a", "3A090.b", "none"]
CLASSIFICATIONS = ("3A090.a", "3A090.b", "none")


def classify_3a090(tpp: float, pd: float | None, *, data_center: bool = True) -> Classification:
    """ECCN 3A090 by the rule in the module docstring. Unknown PD counts only where TPP decides."""
    if not data_center and tpp < 4800:
        return "none"
    if tpp >= 4800 or (tpp >= 1600 and pd is not None and pd >= 5.92):
        return "3A090.a"
    if pd is None:
        return "none"
    if (2400 <= tpp < 4800 and 1.6 <= pd < 5.92) or (tpp >= 1600 and 3.2 <= pd < 5.92):
        return "3A090.b"
    return "none"


@dataclass(frozen=True)
class PciId:
    vendor: str  # "0x10de"
    device: str  # "0x2330"
    confidence: str


@dataclass(frozen=True)
class Chip:
    id: str
    vendor: str
    title: str
    names: tuple[str, ...]
    names_confidence: str
    pci: tuple[PciId, ...]
    data_center: bool
    tpp: Figure
    pd: Figure | None
    classification: Classification
    line: int
    origin: str = ""
    #: Total DRAM bandwidth in GB/s (91 FR 1684 scope parameter), with source and confidence.
    dram_bandwidth_gbs: Figure | None = None

    @property
    def tpp_value(self) -> int:
        return int(self.tpp.value)

    @property
    def confidence(self) -> tuple[str, ...]:
        tags = {self.tpp.confidence}
        if self.pd is not None:
            tags.add(self.pd.confidence)
        if self.dram_bandwidth_gbs is not None:
            tags.add(self.dram_bandwidth_gbs.confidence)
        return tuple(sorted(tags))


@dataclass(frozen=True)
class ChipMatch:
    """What the catalog says a reported device is, and how the match was made."""

    chip_id: str
    model: str
    tpp: int
    pd: float | None
    classification: Classification
    confidence: tuple[str, ...]
    source: str
    matched_by: Literal["pci", "name"]
    origin: str = ""
    dram_bandwidth_gbs: float | None = None


def norm_hex(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return _norm_hex_text(value)


@lru_cache(maxsize=1024)
def _norm_hex_text(value: str) -> str | None:
    text = value.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    try:
        return f"0x{int(text, 16):04x}"
    except ValueError:
        return None


def _norm_name(name: str) -> str:
    return " ".join(name.split()).casefold()


_CHIP_KEYS = {
    "id", "vendor", "title", "names", "names_confidence", "pci", "data_center", "tpp", "pd",
    "classification", "note", "origin", "dram_bandwidth_gbs",
}  # fmt: skip
#: Where a chip was designed and made, as far as export controls care (GP10 guidance on PRC
#: 3A090 ICs, 2025-05-13): "" when the pack does not say.
ORIGINS = ("US", "PRC", "other")


_SEEN_MAX = 4096


class Catalog:
    """Chips by PCI id and by reported name. Overlaps are load errors, never first-one-wins."""

    def __init__(self, chips: list[Chip], source: str) -> None:
        self.chips = chips
        self.source = source
        self._by_pci: dict[tuple[str, str], Chip] = {}
        self._by_name: dict[str, Chip] = {}
        for chip in chips:
            for pid in chip.pci:
                self._by_pci[(pid.vendor, pid.device)] = chip
            for name in chip.names:
                self._by_name[_norm_name(name)] = chip
        # Every snapshot of every host names the same few boards: remember the answers (bounded:
        # reported strings are the host's, and a hostile host may vary them endlessly).
        self._seen: dict[tuple[str | None, str | None, str | None], ChipMatch | None] = {}

    def identify(self, acc: Accelerator) -> ChipMatch | None:
        key = (acc.pci_vendor_id, acc.pci_device_id, acc.model)
        try:
            return self._seen[key]
        except KeyError:
            pass
        match = self._identify(acc)
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen[key] = match
        return match

    def _identify(self, acc: Accelerator) -> ChipMatch | None:
        vendor, device = norm_hex(acc.pci_vendor_id), norm_hex(acc.pci_device_id)
        chip = self._by_pci.get((vendor, device)) if vendor and device else None
        how: Literal["pci", "name"] = "pci"
        if chip is None and acc.model:
            chip = self._by_name.get(_norm_name(acc.model))
            how = "name"
        if chip is None:
            return None
        return ChipMatch(
            chip_id=chip.id,
            model=chip.title,
            tpp=chip.tpp_value,
            pd=None if chip.pd is None else float(chip.pd.value),
            classification=chip.classification,
            confidence=chip.confidence,
            source=chip.tpp.source,
            matched_by=how,
            origin=chip.origin,
            dram_bandwidth_gbs=(
                None if chip.dram_bandwidth_gbs is None else float(chip.dram_bandwidth_gbs.value)
            ),
        )


def load_catalog(path: Path) -> Catalog:
    doc = load_yaml(path)
    top = Reader(path, doc, "catalog", {"source", "chips"})
    chips: list[Chip] = []
    ids: dict[str, int] = {}
    pci_seen: dict[tuple[str, str], str] = {}
    names_seen: dict[str, str] = {}
    for item in top.seq("chips"):
        r = Reader(path, item, "chip", _CHIP_KEYS)
        chip_id = r.rstr("id")
        if chip_id in ids:
            raise r.error(
                "id", "duplicate_chip", f"chip id {chip_id!r} already used at line {ids[chip_id]}"
            )
        ids[chip_id] = r.line("id")
        names_node = r.seq("names", required=False)
        names: list[str] = []
        for name in names_node:
            if not isinstance(name, str) or not name.strip():
                raise r.error("names", "bad_type", "names must be non-empty strings")
            key = _norm_name(name)
            if key in names_seen:
                raise r.error(
                    "names",
                    "overlapping_catalog",
                    f"name {name!r} is already listed for chip {names_seen[key]!r}",
                )
            names_seen[key] = chip_id
            names.append(name)
        pcis: list[PciId] = []
        for pnode in r.seq("pci", required=False):
            pr = Reader(
                path, pnode, f"chip {chip_id} pci id", {"vendor", "device", "confidence", "note"}
            )
            vendor, device = norm_hex(pr.req("vendor")), norm_hex(pr.req("device"))
            if vendor is None or device is None:
                raise pr.error(
                    None, "bad_pci_id", "vendor and device must be hex strings like '0x10de'"
                )
            if (vendor, device) in pci_seen:
                raise pr.error(
                    "device",
                    "overlapping_catalog",
                    f"PCI id {vendor}:{device} is already listed for chip "
                    f"{pci_seen[(vendor, device)]!r}",
                )
            pci_seen[(vendor, device)] = chip_id
            pcis.append(
                PciId(vendor, device, read_tag(path, pr.node, "confidence", pr.req("confidence")))
            )
        if not names and not pcis:
            raise r.error(
                None, "unidentifiable_chip", f"chip {chip_id!r} has neither names nor pci ids"
            )
        data_center = r.raw("data_center", True)
        if not isinstance(data_center, bool):
            raise r.error("data_center", "bad_type", "data_center must be true or false")
        tpp = read_figure(path, r.req("tpp"), f"chip {chip_id} tpp")
        if not isinstance(tpp.value, int) or tpp.value < 0:
            raise r.error(
                "tpp", "bad_type", "TPP must be a non-negative integer (quotas are summed exactly)"
            )
        pd = read_figure(path, r.req("pd"), f"chip {chip_id} pd") if r.has("pd") else None
        origin = r.str_("origin", required=False) or ""
        if origin and origin not in ORIGINS:
            raise r.error("origin", "bad_origin", f"origin is one of {', '.join(ORIGINS)}")
        bandwidth = (
            read_figure(path, r.req("dram_bandwidth_gbs"), f"chip {chip_id} dram_bandwidth_gbs")
            if r.has("dram_bandwidth_gbs")
            else None
        )
        if bandwidth is not None and (
            isinstance(bandwidth.value, bool)
            or not isinstance(bandwidth.value, int | float)
            or bandwidth.value <= 0
        ):
            raise r.error(
                "dram_bandwidth_gbs", "bad_type", "dram_bandwidth_gbs must be a number above 0"
            )
        declared = r.rstr("classification")
        if declared not in CLASSIFICATIONS:
            raise r.error(
                "classification",
                "bad_classification",
                f"classification must be one of {CLASSIFICATIONS}",
            )
        computed = classify_3a090(
            tpp.value, None if pd is None else float(pd.value), data_center=data_center
        )
        if computed != declared:
            raise r.error(
                "classification",
                "classification_mismatch",
                f"chip {chip_id!r} declares {declared} but TPP {tpp.value} and PD "
                f"{None if pd is None else pd.value} give {computed}",
            )
        chips.append(
            Chip(
                id=chip_id,
                vendor=r.rstr("vendor"),
                title=r.str_("title", required=False) or chip_id,
                names=tuple(names),
                names_confidence=read_tag(
                    path, r.node, "names_confidence", r.raw("names_confidence", "U")
                ),
                pci=tuple(pcis),
                data_center=data_center,
                tpp=tpp,
                pd=pd,
                classification=computed,
                line=r.line(),
                origin=origin,
                dram_bandwidth_gbs=bandwidth,
            )
        )
    if not chips:
        raise PackError(
            path, top.line("chips"), "empty_catalog", "a catalog needs at least one chip"
        )
    return Catalog(chips, top.str_("source", required=False) or "")
