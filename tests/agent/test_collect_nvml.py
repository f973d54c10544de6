"""Specification of the NVML collector.

The hardware is replaced by :class:`RecordedNvml` replaying a recording of an 8x H100 SXM host; it
raises the real pynvml exception classes, so the collector code under test is the production code.
The one real call (:func:`test_real_nvml_on_this_gpu_less_machine_reports_library_not_found`) runs
against whatever NVML this machine has.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.collect import CollectorFailure, run_collector
from agent.collect.nvml import (
    RecordedNvml,
    RecordingError,
    collect,
    collect_with_errors,
    main,
    record,
    redact,
)
from contract import Accelerator, CollectorError

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "nvml" / "h100-hgx-8.json"
H100_BUSES = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]


@pytest.fixture
def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def _err(name: str) -> dict[str, str]:
    return {"error": name}


def test_h100_host_reports_eight_gpus_with_every_field(recording: dict[str, Any]) -> None:
    replay = RecordedNvml(recording)
    found = collect(replay)
    assert [a.pci_bus_id for a in found] == [f"0000:{b}:00.0" for b in H100_BUSES]
    first = found[0]
    assert first.source == "nvml"
    assert first.vendor == "NVIDIA"
    assert first.model == "NVIDIA H100 80GB HBM3"
    assert first.pci_vendor_id == "0x10de"
    assert first.pci_device_id == "0x2330"
    assert first.uuid == recording["devices"][0]["uuid"]
    assert first.serial == recording["devices"][0]["serial"]
    assert first.board_part_number == "692-2G520-0200-000"
    assert first.vbios_version == "96.00.99.00.01"
    assert first.driver_version == "535.129.03"
    assert first.memory_mib == 81559
    assert first.architecture == "Hopper"
    assert first.pci_class is None  # NVML does not say; the PCI collector does
    assert len({a.uuid for a in found}) == 8
    assert replay.shutdown_calls == 1 and not replay.initialized


def test_unsupported_fields_are_null_not_errors(recording: dict[str, Any]) -> None:
    device = recording["devices"][2]
    device["serial"] = _err("NVML_ERROR_NOT_SUPPORTED")
    device["board_part_number"] = _err("NVML_ERROR_NOT_SUPPORTED")
    device["architecture"] = _err("NVML_ERROR_NOT_SUPPORTED")
    recording["driver_version"] = _err("NVML_ERROR_NOT_SUPPORTED")
    found, errors = collect_with_errors(RecordedNvml(recording))
    assert errors == []
    assert found[2].serial is None
    assert found[2].board_part_number is None
    assert found[2].architecture is None
    assert found[2].uuid is not None
    assert all(a.driver_version is None for a in found)


def test_unknown_architecture_number_is_null(recording: dict[str, Any]) -> None:
    recording["devices"][0]["architecture"] = 0xFFFFFFFF
    assert collect(RecordedNvml(recording))[0].architecture is None


def test_one_lost_gpu_is_recorded_and_the_others_are_kept(recording: dict[str, Any]) -> None:
    recording["devices"][5]["uuid"] = _err("NVML_ERROR_GPU_IS_LOST")
    replay = RecordedNvml(recording)
    found, errors = collect_with_errors(replay)
    assert len(found) == 7
    assert "0000:ab:00.0" not in {a.pci_bus_id for a in found}
    assert [(e.collector, e.code) for e in errors] == [("nvml", "nvml_gpu_lost")]
    assert "GPU index 5" in errors[0].detail
    assert replay.shutdown_calls == 1


def test_lost_gpu_makes_all_or_nothing_collect_fail(recording: dict[str, Any]) -> None:
    recording["devices"][0]["handle"] = _err("NVML_ERROR_GPU_IS_LOST")
    with pytest.raises(CollectorFailure) as info:
        collect(RecordedNvml(recording))
    assert info.value.code == "nvml_gpu_lost"


def test_all_gpus_unreadable_is_a_failure_not_an_empty_list(recording: dict[str, Any]) -> None:
    for device in recording["devices"]:
        device["handle"] = _err("NVML_ERROR_NO_PERMISSION")
    replay = RecordedNvml(recording)
    with pytest.raises(CollectorFailure) as info:
        collect_with_errors(replay)
    assert info.value.code == "nvml_no_permission"
    assert "none of 8 GPUs" in info.value.detail
    assert replay.shutdown_calls == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("NVML_ERROR_LIBRARY_NOT_FOUND", "nvml_library_not_found"),
        ("NVML_ERROR_DRIVER_NOT_LOADED", "nvml_driver_not_loaded"),
        ("NVML_ERROR_NO_PERMISSION", "nvml_no_permission"),
        ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", "nvml_version_mismatch"),
        ("NVML_ERROR_UNKNOWN", "nvml_error"),
    ],
)
def test_init_failures_have_stable_codes_and_no_shutdown(
    recording: dict[str, Any], error: str, code: str
) -> None:
    recording["init"] = _err(error)
    replay = RecordedNvml(recording)
    with pytest.raises(CollectorFailure) as info:
        collect_with_errors(replay)
    assert info.value.code == code
    assert error in info.value.detail
    assert replay.shutdown_calls == 0


def test_enumeration_failure_is_a_failure_and_still_shuts_down(recording: dict[str, Any]) -> None:
    recording["count"] = _err("NVML_ERROR_DRIVER_NOT_LOADED")
    replay = RecordedNvml(recording)
    with pytest.raises(CollectorFailure) as info:
        collect_with_errors(replay)
    assert info.value.code == "nvml_driver_not_loaded"
    assert replay.shutdown_calls == 1


def test_driver_failure_through_runner_becomes_an_error_entry(recording: dict[str, Any]) -> None:
    recording["init"] = _err("NVML_ERROR_DRIVER_NOT_LOADED")
    replay = RecordedNvml(recording)
    default: tuple[list[Accelerator], list[CollectorError]] = ([], [])
    (found, per_gpu), errors = run_collector(
        "nvml", lambda: collect_with_errors(replay), timeout_s=10, default=default
    )
    assert found == [] and per_gpu == []
    assert [(e.collector, e.code) for e in errors] == [("nvml", "nvml_driver_not_loaded")]


def _skip_if_nvml_library_present() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return
    except pynvml.NVMLError:
        pytest.skip("this machine has the NVML library")
    pynvml.nvmlShutdown()
    pytest.skip("this machine has an NVIDIA driver")


def test_real_nvml_on_this_gpu_less_machine_reports_library_not_found() -> None:
    _skip_if_nvml_library_present()
    with pytest.raises(CollectorFailure) as info:
        collect()
    assert info.value.code == "nvml_library_not_found"


def test_record_then_replay_reproduces_the_same_accelerators(recording: dict[str, Any]) -> None:
    recording["devices"][1]["serial"] = _err("NVML_ERROR_NOT_SUPPORTED")
    recording["devices"][3]["handle"] = _err("NVML_ERROR_GPU_IS_LOST")
    original = RecordedNvml(copy.deepcopy(recording))
    rerecorded = record(original)
    assert rerecorded["devices"][3] == {"handle": _err("NVML_ERROR_GPU_IS_LOST")}
    assert collect_with_errors(RecordedNvml(rerecorded)) == collect_with_errors(
        RecordedNvml(recording)
    )


def test_record_of_a_host_without_driver_saves_the_init_error(recording: dict[str, Any]) -> None:
    recording["init"] = _err("NVML_ERROR_DRIVER_NOT_LOADED")
    assert record(RecordedNvml(recording))["init"] == _err("NVML_ERROR_DRIVER_NOT_LOADED")


def test_replay_refuses_unknown_error_names(recording: dict[str, Any]) -> None:
    recording["devices"][0]["uuid"] = _err("NOT_AN_NVML_ERROR")
    with pytest.raises(RecordingError, match="NOT_AN_NVML_ERROR"):
        collect(RecordedNvml(recording))


def test_replay_raises_the_real_pynvml_exception_classes(recording: dict[str, Any]) -> None:
    recording["devices"][0]["uuid"] = _err("NVML_ERROR_GPU_IS_LOST")
    replay = RecordedNvml(recording)
    replay.nvmlInit()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        replay.nvmlDeviceGetUUID(0)


def test_unreadable_recording_file_is_a_recording_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RecordingError, match=r"bad\.json"):
        RecordedNvml.from_file(bad)


def test_fixture_loads_from_file() -> None:
    assert len(collect(RecordedNvml.from_file(FIXTURE))) == 8


def test_failed_optional_field_is_null_with_an_error_and_the_gpu_is_kept(
    recording: dict[str, Any],
) -> None:
    recording["devices"][4]["serial"] = _err("NVML_ERROR_NO_PERMISSION")
    found, errors = collect_with_errors(RecordedNvml(recording))
    assert len(found) == 8
    assert found[4].serial is None and found[4].uuid is not None
    assert [e.code for e in errors] == ["nvml_no_permission"]
    assert "0000:9a:00.0" in errors[0].detail and "serial" in errors[0].detail


def test_gpu_lost_while_reading_an_optional_field_loses_that_gpu(
    recording: dict[str, Any],
) -> None:
    recording["devices"][7]["memory_total_bytes"] = _err("NVML_ERROR_GPU_IS_LOST")
    found, errors = collect_with_errors(RecordedNvml(recording))
    assert len(found) == 7
    assert "0000:db:00.0" not in {a.pci_bus_id for a in found}
    assert [e.code for e in errors] == ["nvml_gpu_lost"]


def test_driver_version_failure_is_recorded_and_gpus_still_reported(
    recording: dict[str, Any],
) -> None:
    recording["driver_version"] = _err("NVML_ERROR_UNKNOWN")
    found, errors = collect_with_errors(RecordedNvml(recording))
    assert len(found) == 8 and all(a.driver_version is None for a in found)
    assert [(e.code, e.detail.split(":")[0]) for e in errors] == [("nvml_error", "system")]


def test_host_with_no_gpus_reports_an_empty_list(recording: dict[str, Any]) -> None:
    recording["devices"] = []
    assert collect_with_errors(RecordedNvml(recording)) == ([], [])


def test_redaction_replaces_identifiers_stably_and_keeps_their_shape(
    recording: dict[str, Any],
) -> None:
    redacted = redact(recording)
    again = redact(recording)
    assert redacted == again
    before, after = recording["devices"][0], redacted["devices"][0]
    assert after["uuid"] != before["uuid"] and after["uuid"].startswith("GPU-")
    assert len(after["uuid"]) == len(before["uuid"])
    assert after["serial"] != before["serial"] and len(after["serial"]) == len(before["serial"])
    assert after["serial"].isdigit()
    assert after["pci"] == before["pci"]
    assert len({d["uuid"] for d in redacted["devices"]}) == 8
    assert len(collect(RecordedNvml(redacted))) == 8


def test_recording_command_on_a_gpu_less_machine_saves_the_init_error(tmp_path: Path) -> None:
    _skip_if_nvml_library_present()
    out = tmp_path / "rec.json"
    assert main(["--out", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["init"] == {"error": "NVML_ERROR_LIBRARY_NOT_FOUND"}
