"""Merging what NVML and the PCI bus say into one accelerator list: one entry per physical device.

The PCI bus id is the key (normalized, so NVML's ``00000000:18:00.0`` and sysfs's
``0000:18:00.0`` meet). Rules:

1. A device both report: the NVML entry wins (it knows UUID, serial, firmware); PCI facts NVML
   does not give (the class code, and any id it left null) are copied in.
2. A device only PCI reports stays, with ``source: "pci"``: a GPU on the bus that the driver does
   not show (not loaded, lost, hidden) must still appear in the evidence.
3. A device only NVML reports stays as it is.

Order is stable: by bus id, then entries without a bus id in their input order.
"""

from __future__ import annotations

from agent.collect.pci import normalize_bus_id
from contract import Accelerator

_FILLED_FROM_PCI = ("pci_class", "pci_vendor_id", "pci_device_id", "vendor")


def _key(acc: Accelerator) -> str | None:
    if acc.pci_bus_id is None:
        return None
    try:
        return normalize_bus_id(acc.pci_bus_id)
    except ValueError:
        return None


def merge(nvml: list[Accelerator], pci: list[Accelerator]) -> list[Accelerator]:
    by_bus: dict[str, Accelerator] = {}
    for acc in pci:
        key = _key(acc)
        if key is not None:
            by_bus.setdefault(key, acc)
    keyed: list[tuple[str, Accelerator]] = []
    unkeyed: list[Accelerator] = []
    matched: set[str] = set()
    for acc in nvml:
        key = _key(acc)
        if key is None:
            unkeyed.append(acc)
            continue
        seen = by_bus.get(key)
        update: dict[str, object] = {"pci_bus_id": key}
        if seen is not None:
            matched.add(key)
            for field in _FILLED_FROM_PCI:
                if getattr(acc, field) is None and getattr(seen, field) is not None:
                    update[field] = getattr(seen, field)
        keyed.append((key, acc.model_copy(update=update)))
    for acc in pci:
        key = _key(acc)
        if key is None:
            unkeyed.append(acc)
        elif key not in matched:
            matched.add(key)  # a bus id listed twice by PCI stays one entry
            keyed.append((key, acc.model_copy(update={"pci_bus_id": key})))
    keyed.sort(key=lambda pair: pair[0])
    return [acc for _, acc in keyed] + unkeyed
