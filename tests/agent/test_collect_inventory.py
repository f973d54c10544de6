"""Specification of the inventory-file collector: declared accelerators, never called probed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.collect import CollectorFailure, run_collector
from agent.collect.inventory import MAX_BYTES, MAX_ENTRIES, InventoryError, load
from contract import Accelerator

INVENTORY = Path(__file__).resolve().parent.parent / "fixtures" / "inventory"
SERVERS = {
    "h100-sxm-8": ("NVIDIA H100 80GB HBM3", "0x2330", "Hopper"),
    "h200-sxm-8": ("NVIDIA H200", "0x2335", "Hopper"),
    "b200-8": ("NVIDIA B200", "0x2901", "Blackwell"),
}


def _write(tmp_path: Path, doc: Any, name: str = "inv.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else str(doc))
    return path


def _code_and_detail(path: Path) -> tuple[str, str]:
    with pytest.raises(InventoryError) as info:
        load(path)
    assert isinstance(info.value, CollectorFailure)
    return info.value.code, info.value.detail


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("ext", ["json", "yaml"])
def test_example_servers_load_as_eight_declared_gpus(server: str, ext: str) -> None:
    model, device_id, arch = SERVERS[server]
    found = load(INVENTORY / f"{server}.{ext}")
    assert len(found) == 8
    assert {a.model for a in found} == {model}
    assert {a.pci_device_id for a in found} == {device_id}
    assert {a.architecture for a in found} == {arch}
    assert {a.source for a in found} == {"inventory-file"}
    assert {a.assurance for a in found} == {"declared"}
    assert len({a.uuid for a in found}) == 8


def test_json_and_yaml_versions_of_a_server_are_identical() -> None:
    for server in SERVERS:
        assert load(INVENTORY / f"{server}.json") == load(INVENTORY / f"{server}.yaml")


def test_missing_fields_are_null(tmp_path: Path) -> None:
    (acc,) = load(_write(tmp_path, {"accelerators": [{"model": "NVIDIA H100 80GB HBM3"}]}))
    assert acc.model == "NVIDIA H100 80GB HBM3"
    assert acc.uuid is None and acc.serial is None and acc.pci_bus_id is None
    assert acc.source == "inventory-file" and acc.assurance == "declared"


def test_ids_and_bus_ids_are_normalized(tmp_path: Path) -> None:
    entry = {"pci_vendor_id": "0x10DE", "pci_device_id": "0x2330", "pci_bus_id": "00000000:2A:00.0"}
    (acc,) = load(_write(tmp_path, {"accelerators": [entry]}))
    assert acc.pci_vendor_id == "0x10de"
    assert acc.pci_bus_id == "0000:2a:00.0"


def test_explicit_inventory_source_and_declared_assurance_are_accepted(tmp_path: Path) -> None:
    entry = {"source": "inventory-file", "assurance": "declared"}
    assert len(load(_write(tmp_path, {"accelerators": [entry]}))) == 1


def test_content_without_known_extension_is_sniffed(tmp_path: Path) -> None:
    as_json = tmp_path / "inv.txt"
    as_json.write_text('{"accelerators": [{"model": "X"}]}')
    as_yaml = tmp_path / "inv.conf"
    as_yaml.write_text("accelerators:\n  - model: X\n")
    assert load(as_json) == load(as_yaml)


def test_empty_list_declares_no_accelerators(tmp_path: Path) -> None:
    assert load(_write(tmp_path, {"accelerators": []})) == []


def test_missing_file_is_inventory_not_found(tmp_path: Path) -> None:
    code, detail = _code_and_detail(tmp_path / "nope.yaml")
    assert code == "inventory_not_found"
    assert "nope.yaml" in detail


def test_directory_is_inventory_not_found(tmp_path: Path) -> None:
    code, _ = _code_and_detail(tmp_path)
    assert code == "inventory_not_found"


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.json", '{"accelerators": [', "not valid JSON"),
        ("dup.json", '{"accelerators": [], "accelerators": []}', "duplicate"),
        ("bad.yaml", "accelerators: [\n", "not valid YAML"),
        ("dup.yaml", "accelerators: []\naccelerators: []\n", "duplicate key"),
        ("alias.yaml", "a: &x [1]\naccelerators: *x\n", "aliases"),
        ("tab.yaml", "accelerators:\n\t- model: x\n", "line 2"),
    ],
)
def test_unparseable_files_are_inventory_malformed(
    tmp_path: Path, name: str, content: str, needle: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    code, detail = _code_and_detail(path)
    assert code == "inventory_malformed"
    assert name in detail and needle in detail


def test_invalid_utf8_yaml_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_bytes(b"accelerators:\n  - model: \xff\n")
    code, _ = _code_and_detail(path)
    assert code == "inventory_malformed"


def test_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_BYTES + 1))
    code, detail = _code_and_detail(path)
    assert code == "inventory_malformed"
    assert "limit" in detail


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"accelerators": [{}] * (MAX_ENTRIES + 1)}))
    code, detail = _code_and_detail(path)
    assert code == "inventory_invalid"
    assert str(MAX_ENTRIES) in detail


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ([], ["top level", "object"]),
        ({"gpus": []}, ["top level", "'gpus'"]),
        ({"accelerators": {"model": "x"}}, ["accelerators", "not a list"]),
        ({}, ["accelerators", "missing"]),
        ({"accelerators": [{}, "H100"]}, ["accelerators[1]", "object"]),
        ({"accelerators": [{}, {}, {"modle": "x"}]}, ["accelerators[2]", "'modle'", "allowed"]),
        ({"accelerators": [{"source": "nvml"}]}, ["accelerators[0].source", "'nvml'", "probed"]),
        (
            {"accelerators": [{"assurance": "hardware-attested"}]},
            ["accelerators[0].assurance", "hardware-attested"],
        ),
        ({"accelerators": [{"pci_device_id": "2330"}]}, ["pci_device_id", "0x2330"]),
        ({"accelerators": [{"pci_class": "0x0302"}]}, ["pci_class"]),
        ({"accelerators": [{"pci_bus_id": "slot 3"}]}, ["accelerators[0].pci_bus_id"]),
        ({"accelerators": [{"memory_mib": "80GB"}]}, ["accelerators[0].memory_mib"]),
        ({"accelerators": [{"memory_mib": True}]}, ["accelerators[0].memory_mib"]),
        ({"accelerators": [{"uuid": 12}]}, ["accelerators[0].uuid", "string"]),
    ],
)
def test_wrong_content_is_inventory_invalid_naming_entry_and_field(
    tmp_path: Path, doc: Any, needles: list[str]
) -> None:
    code, detail = _code_and_detail(_write(tmp_path, doc))
    assert code == "inventory_invalid"
    assert "inv.json" in detail
    for needle in needles:
        assert needle in detail


def test_unquoted_yaml_hex_id_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text("accelerators:\n  - pci_vendor_id: 0x10de\n")  # YAML reads an integer
    code, detail = _code_and_detail(path)
    assert code == "inventory_invalid"
    assert "accelerators[0].pci_vendor_id" in detail and "quote" in detail


def test_bad_inventory_through_runner_becomes_an_error_entry(tmp_path: Path) -> None:
    path = _write(tmp_path, {"accelerators": [{"source": "pci"}]})
    default: list[Accelerator] = []
    found, errors = run_collector("inventory", lambda: load(path), timeout_s=10, default=default)
    assert found == []
    assert [(e.collector, e.code) for e in errors] == [("inventory", "inventory_invalid")]
