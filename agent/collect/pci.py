"""PCI collector: every accelerator on the bus, read from sysfs (``/sys/bus/pci/devices``).

This is the cross-check for NVML: a GPU that sits on the bus but that the driver does not report
(driver not loaded, device hidden, GPU lost) still appears in the evidence.

Which devices count as accelerators (class first, vendor only where the class cannot tell):

1. PCI base class 0x12 (processing accelerator), 0x0302 (3D controller) and 0x0380 (other display
   controller): always, whatever the vendor. Data-center GPUs (H100/H200/B200 SXM: 0x0302), AMD
   Instinct and Habana Gaudi (0x12 or 0x0380) land here.
2. 0x0300 (VGA-compatible controller): only for GPU vendors (NVIDIA, AMD, Intel). Every server's BMC
   framebuffer (ASPEED, Matrox) is a VGA controller that computes nothing.
3. Any function of a vendor that makes nothing but accelerators (Habana, Graphcore, Groq,
   Tenstorrent), except bridges, network, storage and audio functions.

Never counted: bridges (class 0x06, e.g. NVIDIA NVSwitch 0x0680), audio (0x0403), network (0x02),
storage (0x01), serial bus (0x0c). Vendor and model names are hints for people reading the evidence;
the verifier identifies chips (and decides TPP) from the vendor and device ids with its own catalog.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from agent.collect import CollectorFailure
from contract import Accelerator

log = logging.getLogger(__name__)

VENDOR_NAMES: dict[int, str] = {
    0x10DE: "NVIDIA",
    0x1002: "AMD",
    0x1022: "AMD",
    0x8086: "Intel",
    0x1DA3: "Habana Labs",
    0x1AE0: "Google",
    0x1E26: "Graphcore",
    0x1DE0: "Groq",
    0x1E52: "Tenstorrent",
    0x1A03: "ASPEED",
    0x102B: "Matrox",
}

_GPU_VENDORS = frozenset({0x10DE, 0x1002, 0x8086})
_ACCELERATOR_ONLY_VENDORS = frozenset({0x1DA3, 0x1E26, 0x1DE0, 0x1E52})
# Base classes that are never compute, even from an accelerator-only vendor.
_NEVER_BASE_CLASSES = frozenset({0x01, 0x02, 0x04, 0x06, 0x0C})

# A hint only, spelled as the vendor's driver names the device so that it reads like NVML's
# "model". The verifier decides what a device id is (and its TPP) from its own catalog.
MODEL_HINTS: dict[tuple[int, int], str] = {
    (0x10DE, 0x20B0): "NVIDIA A100-SXM4-40GB",
    (0x10DE, 0x20B2): "NVIDIA A100-SXM4-80GB",
    (0x10DE, 0x20B5): "NVIDIA A100 80GB PCIe",
    (0x10DE, 0x2321): "NVIDIA H100 NVL",
    (0x10DE, 0x2330): "NVIDIA H100 80GB HBM3",
    (0x10DE, 0x2331): "NVIDIA H100 PCIe",
    (0x10DE, 0x2335): "NVIDIA H200",
    (0x10DE, 0x26B5): "NVIDIA L40",
    (0x10DE, 0x26B9): "NVIDIA L40S",
    (0x10DE, 0x2901): "NVIDIA B200",
    (0x1002, 0x740C): "AMD Instinct MI250X/MI250",
    (0x1002, 0x740F): "AMD Instinct MI210",
    (0x1002, 0x74A0): "AMD Instinct MI300A",
    (0x1002, 0x74A1): "AMD Instinct MI300X",
    (0x1DA3, 0x1000): "Habana Gaudi HL-2000",
    (0x1DA3, 0x1020): "Habana Gaudi2 HL-225",
}

_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})"
    r"\.(?P<fn>[0-7])$"
)
_HEX_ATTR = re.compile(r"^0x[0-9a-fA-F]+$")


def normalize_bus_id(text: str) -> str:
    """``"00000000:18:00.0"``, ``"0000:18:00.0"`` or ``"18:00.0"`` -> ``"0000:18:00.0"``.

    NVML spells the domain with eight digits, sysfs with four; both name the same device. Raises
    ValueError for anything that is not a PCI address (or whose domain does not fit 16 bits).
    """
    match = _BUS_ID.match(text.strip())
    if match is None:
        raise ValueError(f"not a PCI bus id: {text[:40]!r}")
    domain = int(match["domain"] or "0", 16)
    if domain > 0xFFFF:
        raise ValueError(f"PCI domain of {text[:40]!r} does not fit 16 bits")
    return f"{domain:04x}:{match['bus'].lower()}:{match['dev'].lower()}.{match['fn']}"


def is_accelerator(vendor_id: int, pci_class: int) -> bool:
    """The rule in this module's docstring, for one function (24-bit class code)."""
    base, sub = pci_class >> 16, (pci_class >> 8) & 0xFF
    if base == 0x12 or (base, sub) in ((0x03, 0x02), (0x03, 0x80)):
        return True
    if (base, sub) == (0x03, 0x00):
        return vendor_id in _GPU_VENDORS
    return vendor_id in _ACCELERATOR_ONLY_VENDORS and base not in _NEVER_BASE_CLASSES


def _read_hex(device_dir: Path, name: str) -> int:
    text = (device_dir / name).read_text(encoding="ascii").strip()
    if not _HEX_ATTR.match(text):
        raise ValueError(f"{name} is {text[:20]!r}, not a hex number")
    return int(text, 16)


def collect(sys_root: Path = Path("/sys")) -> list[Accelerator]:
    """Accelerators on the PCI bus, ordered by bus id.

    A function whose vendor or class cannot be read is skipped with a warning (sysfs always has
    them; a missing one means the device vanished while we looked).
    """
    devices = sys_root / "bus" / "pci" / "devices"
    try:
        entries = sorted(devices.iterdir())
    except OSError as exc:
        raise CollectorFailure(
            "pci_sysfs_unavailable", f"cannot list {devices}: {exc.strerror or exc}"
        ) from exc
    found: list[Accelerator] = []
    for entry in entries:
        try:
            bus_id = normalize_bus_id(entry.name)
        except ValueError:
            continue  # not a device (e.g. a stray file in a recorded tree)
        try:
            vendor_id = _read_hex(entry, "vendor")
            device_id = _read_hex(entry, "device")
            pci_class = _read_hex(entry, "class")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("skipping PCI function %s: %s", entry.name, exc)
            continue
        if not is_accelerator(vendor_id, pci_class):
            continue
        found.append(
            Accelerator(
                vendor=VENDOR_NAMES.get(vendor_id),
                model=MODEL_HINTS.get((vendor_id, device_id)),
                pci_vendor_id=f"0x{vendor_id:04x}",
                pci_device_id=f"0x{device_id:04x}",
                pci_class=f"0x{pci_class:06x}",
                pci_bus_id=bus_id,
                source="pci",
            )
        )
    found.sort(key=lambda a: a.pci_bus_id or "")
    return found
