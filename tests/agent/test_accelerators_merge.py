"""Specification of merging NVML and PCI accelerator lists into one entry per physical device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.collect import pci
from agent.collect.accelerators import merge
from agent.collect.nvml import RecordedNvml, collect_with_errors
from contract import Accelerator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "nvml" / "h100-hgx-8.json").read_text())
    return data


def _nvml(bus: str | None, uuid: str, **extra: Any) -> Accelerator:
    return Accelerator(source="nvml", pci_bus_id=bus, uuid=uuid, **extra)


def _pci(bus: str, device: str = "0x2330") -> Accelerator:
    return Accelerator(
        source="pci",
        vendor="NVIDIA",
        pci_vendor_id="0x10de",
        pci_device_id=device,
        pci_class="0x030200",
        pci_bus_id=bus,
    )


def test_recorded_h100_host_merges_to_eight_nvml_entries_with_pci_class() -> None:
    found, errors = collect_with_errors(RecordedNvml(_recording()))
    merged = merge(found, pci.collect(FIXTURES / "sysfs" / "h100-hgx"))
    assert errors == []
    assert len(merged) == 8
    assert {a.source for a in merged} == {"nvml"}
    assert {a.pci_class for a in merged} == {"0x030200"}
    assert all(a.uuid for a in merged)


def test_gpu_lost_to_nvml_still_appears_from_the_pci_bus() -> None:
    recording = _recording()
    recording["devices"][5]["uuid"] = {"error": "NVML_ERROR_GPU_IS_LOST"}
    found, errors = collect_with_errors(RecordedNvml(recording))
    merged = merge(found, pci.collect(FIXTURES / "sysfs" / "h100-hgx"))
    assert len(merged) == 8
    lost = [a for a in merged if a.source == "pci"]
    assert [a.pci_bus_id for a in lost] == ["0000:ab:00.0"]
    assert lost[0].uuid is None and lost[0].pci_device_id == "0x2330"
    assert [e.code for e in errors] == ["nvml_gpu_lost"]


def test_nvml_entry_wins_and_bus_id_forms_meet() -> None:
    merged = merge(
        [_nvml("00000000:2A:00.0", "GPU-1", pci_device_id="0x2330", model="NVIDIA H100 80GB HBM3")],
        [_pci("0000:2a:00.0")],
    )
    assert len(merged) == 1
    (acc,) = merged
    assert acc.source == "nvml"
    assert acc.uuid == "GPU-1"
    assert acc.model == "NVIDIA H100 80GB HBM3"
    assert acc.pci_bus_id == "0000:2a:00.0"
    assert acc.pci_class == "0x030200"  # filled from PCI
    assert acc.pci_vendor_id == "0x10de" and acc.vendor == "NVIDIA"


def test_nvml_value_is_not_overwritten_by_pci() -> None:
    (acc,) = merge([_nvml("0000:18:00.0", "GPU-1", pci_device_id="0x2335")], [_pci("0000:18:00.0")])
    assert acc.pci_device_id == "0x2335"


def test_nvml_only_devices_are_kept() -> None:
    merged = merge([_nvml("0000:18:00.0", "GPU-1"), _nvml(None, "GPU-2")], [])
    assert [a.uuid for a in merged] == ["GPU-1", "GPU-2"]


def test_pci_only_devices_are_kept_with_pci_source() -> None:
    merged = merge([], [_pci("0000:18:00.0"), _pci("0000:2a:00.0")])
    assert [(a.source, a.pci_bus_id) for a in merged] == [
        ("pci", "0000:18:00.0"),
        ("pci", "0000:2a:00.0"),
    ]


def test_order_is_by_bus_id_then_unkeyed_in_input_order() -> None:
    merged = merge(
        [_nvml(None, "GPU-z"), _nvml("0000:db:00.0", "GPU-db"), _nvml(None, "GPU-a")],
        [_pci("0000:18:00.0"), _pci("0001:05:00.0")],
    )
    assert [a.uuid or a.pci_bus_id for a in merged] == [
        "0000:18:00.0",
        "GPU-db",
        "0001:05:00.0",
        "GPU-z",
        "GPU-a",
    ]


def test_pci_bus_id_listed_twice_yields_one_entry() -> None:
    assert len(merge([], [_pci("0000:18:00.0"), _pci("0000:18:00.0")])) == 1


def test_empty_inputs_merge_to_empty() -> None:
    assert merge([], []) == []
