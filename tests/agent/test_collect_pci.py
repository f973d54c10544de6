"""Specification of the PCI (sysfs) collector, on recorded trees and on this machine's /sys."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agent.collect import CollectorFailure, run_collector
from agent.collect.pci import collect, is_accelerator, normalize_bus_id
from contract import Accelerator

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"
H100_BUSES = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]


def test_h100_hgx_host_reports_exactly_its_eight_gpus() -> None:
    found = collect(SYSFS / "h100-hgx")
    assert [a.pci_bus_id for a in found] == [f"0000:{b}:00.0" for b in H100_BUSES]
    for acc in found:
        assert acc.source == "pci"
        assert acc.vendor == "NVIDIA"
        assert acc.pci_vendor_id == "0x10de"
        assert acc.pci_device_id == "0x2330"
        assert acc.pci_class == "0x030200"
        assert acc.model == "NVIDIA H100 80GB HBM3"
        assert acc.uuid is None and acc.serial is None and acc.memory_mib is None


def test_nvswitches_nics_storage_and_bmc_vga_are_not_accelerators() -> None:
    found = collect(SYSFS / "h100-hgx")
    ids = {(a.pci_vendor_id, a.pci_device_id) for a in found}
    assert ("0x10de", "0x22a3") not in ids  # NVSwitch, class 0x0680
    assert not any(a.pci_vendor_id in ("0x15b3", "0x144d", "0x1a03") for a in found)


def test_mixed_vendor_host_lists_every_accelerator_class_device() -> None:
    found = collect(SYSFS / "mixed-vendor")
    by_bus = {a.pci_bus_id or "": a for a in found}
    assert list(by_bus) == sorted(by_bus)
    assert set(by_bus) == {
        "0000:11:00.0",
        "0000:21:00.0",
        "0000:31:00.0",
        "0000:41:00.0",
        "0000:51:00.0",
        "0000:71:00.0",
        "0001:05:00.0",
    }
    assert Counter(a.model for a in found)["AMD Instinct MI300X"] == 2
    assert by_bus["0000:31:00.0"].vendor == "Habana Labs"
    assert by_bus["0000:31:00.0"].model == "Habana Gaudi2 HL-225"
    assert by_bus["0000:41:00.0"].vendor == "Intel"
    assert by_bus["0000:41:00.0"].model is None  # not in the hint table: null, not guessed
    assert by_bus["0000:51:00.0"].pci_class == "0x030000"  # NVIDIA VGA counts
    assert by_bus["0001:05:00.0"].model == "NVIDIA H200"


def test_unknown_vendor_processing_accelerator_is_listed_without_a_name() -> None:
    by_bus = {a.pci_bus_id: a for a in collect(SYSFS / "mixed-vendor")}
    unknown = by_bus["0000:71:00.0"]
    assert unknown.vendor is None and unknown.model is None
    assert unknown.pci_vendor_id == "0x1234" and unknown.pci_class == "0x120000"


def test_audio_function_and_host_bridge_of_gpu_vendors_are_skipped() -> None:
    buses = {a.pci_bus_id for a in collect(SYSFS / "mixed-vendor")}
    assert "0000:51:00.1" not in buses  # NVIDIA HDMI audio, class 0x0403
    assert "0000:00:00.0" not in buses  # AMD host bridge
    assert "0000:61:00.0" not in buses  # Intel NIC


def test_device_with_unparseable_class_is_skipped_not_fatal() -> None:
    buses = {a.pci_bus_id for a in collect(SYSFS / "mixed-vendor")}
    assert "0000:81:00.0" not in buses


def test_empty_bus_gives_empty_list() -> None:
    assert collect(SYSFS / "empty") == []


def test_missing_sysfs_is_a_collector_failure_with_stable_code(tmp_path: Path) -> None:
    with pytest.raises(CollectorFailure) as info:
        collect(tmp_path)
    assert info.value.code == "pci_sysfs_unavailable"
    assert str(tmp_path) in info.value.detail


def test_missing_sysfs_through_runner_becomes_an_error_entry(tmp_path: Path) -> None:
    default: list[Accelerator] = []
    result, errors = run_collector("pci", lambda: collect(tmp_path), timeout_s=10, default=default)
    assert result == []
    assert [(e.collector, e.code) for e in errors] == [("pci", "pci_sysfs_unavailable")]


def test_this_machines_real_sysfs_is_read_without_crashing() -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("this machine exposes no PCI sysfs")
    found = collect()
    assert all(a.source == "pci" and a.pci_bus_id for a in found)
    assert [a.pci_bus_id for a in found] == sorted(a.pci_bus_id or "" for a in found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00000000:2A:00.0", "0000:2a:00.0"),
        ("0000:18:00.0", "0000:18:00.0"),
        ("18:00.1", "0000:18:00.1"),
        (" 0001:05:00.0\n", "0001:05:00.0"),
    ],
)
def test_bus_ids_are_normalized_to_four_digit_domain_lowercase(text: str, expected: str) -> None:
    assert normalize_bus_id(text) == expected


@pytest.mark.parametrize("text", ["", "18:00", "0000:18:00.8", "000100000:18:00.0", "zz:00.0"])
def test_malformed_bus_ids_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_bus_id(text)


@pytest.mark.parametrize(
    ("vendor", "pci_class", "expected"),
    [
        (0x10DE, 0x030200, True),  # 3D controller
        (0x1A03, 0x030000, False),  # BMC VGA
        (0x10DE, 0x030000, True),  # GPU vendor VGA
        (0x1002, 0x038000, True),  # other display controller
        (0x1234, 0x120000, True),  # processing accelerator, any vendor
        (0x10DE, 0x068000, False),  # NVSwitch bridge
        (0x10DE, 0x040300, False),  # HDMI audio
        (0x1DA3, 0xFF0000, True),  # accelerator-only vendor, unassigned class
        (0x1DA3, 0x020000, False),  # ... but not its network function
    ],
)
def test_accelerator_rule_is_class_first_then_vendor(
    vendor: int, pci_class: int, expected: bool
) -> None:
    assert is_accelerator(vendor, pci_class) is expected
