"""NVML collector: what NVIDIA's driver says about each GPU, via ``nvidia-ml-py`` (``pynvml``).

It owns:

1. :func:`collect_with_errors` — the walk. Per GPU: name, UUID (the identity), serial, board part
   number, PCI bus and device id, VBIOS, driver version, memory, architecture. A field the board
   does not support (``NVML_ERROR_NOT_SUPPORTED``) is null. A GPU whose identity (handle, PCI
   info, UUID) cannot be read, or that is lost, becomes a :class:`~contract.CollectorError`
   for that GPU and the others are still reported; any other field that fails is null plus an
   error naming the GPU and the field. **The snapshot assembler should call this one**
   (through ``run_collector`` with default ``([], [])``) and add the per-GPU errors to the
   snapshot's ``errors``.
2. :func:`collect` — the same walk for callers that want all or nothing: any per-GPU error raises.
3. Stable error codes (:data:`ERROR_CODES`): ``nvml_library_not_found``, ``nvml_driver_not_loaded``,
   ``nvml_no_permission``, ``nvml_gpu_lost``, ... and ``nvml_error`` for the rest.
4. :class:`RecordedNvml` / :func:`record` — a recorded NVML session (JSON) and its replay
   (``python -m agent.collect.nvml --out FILE --redact`` records a host with GPUs).
   ``record`` runs on a host with real GPUs and saves every answer (errors included);
   ``RecordedNvml`` answers the same calls from the file and raises the real ``pynvml``
   exceptions, so the collector code runs unchanged where there is no GPU (tests, demos). Only
   the hardware is replaced.

``nvmlShutdown`` is called whenever ``nvmlInit`` succeeded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pynvml

from agent.collect import CollectorFailure
from agent.collect.pci import normalize_bus_id
from contract import Accelerator, CollectorError

log = logging.getLogger(__name__)

COLLECTOR = "nvml"

ERROR_CODES: dict[int, str] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "nvml_library_not_found",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "nvml_driver_not_loaded",
    pynvml.NVML_ERROR_NO_PERMISSION: "nvml_no_permission",
    pynvml.NVML_ERROR_GPU_IS_LOST: "nvml_gpu_lost",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "nvml_version_mismatch",
    pynvml.NVML_ERROR_TIMEOUT: "nvml_timeout",
    pynvml.NVML_ERROR_RESET_REQUIRED: "nvml_reset_required",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "nvml_function_not_found",
}

ARCHITECTURES: dict[int, str] = {
    pynvml.NVML_DEVICE_ARCH_KEPLER: "Kepler",
    pynvml.NVML_DEVICE_ARCH_MAXWELL: "Maxwell",
    pynvml.NVML_DEVICE_ARCH_PASCAL: "Pascal",
    pynvml.NVML_DEVICE_ARCH_VOLTA: "Volta",
    pynvml.NVML_DEVICE_ARCH_TURING: "Turing",
    pynvml.NVML_DEVICE_ARCH_AMPERE: "Ampere",
    pynvml.NVML_DEVICE_ARCH_ADA: "Ada Lovelace",
    pynvml.NVML_DEVICE_ARCH_HOPPER: "Hopper",
    pynvml.NVML_DEVICE_ARCH_BLACKWELL: "Blackwell",
}

# Answers that mean "this board has no such field", not "something is wrong".
_ABSENT = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NOT_FOUND})

_ERROR_NAMES: dict[int, str] = {
    getattr(pynvml, n): n for n in dir(pynvml) if n.startswith("NVML_ERROR_")
}


def error_code(exc: pynvml.NVMLError) -> str:
    return ERROR_CODES.get(exc.value, "nvml_error")


def _describe(exc: pynvml.NVMLError) -> str:
    name = _ERROR_NAMES.get(exc.value, f"code {exc.value}")
    try:
        text = str(exc)
    except Exception:  # str() may call into a half-loaded library
        text = "NVML error"
    return f"{text} ({name})"


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _optional(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; an unsupported field is None, every other error propagates."""
    try:
        return fn()
    except pynvml.NVMLError as exc:
        if exc.value in _ABSENT:
            return None
        raise


class _Fields:
    """Reads optional per-GPU fields; a field that fails is null plus an error, not a lost GPU."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.errors: list[CollectorError] = []

    def get(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return _optional(fn)
        except pynvml.NVMLError as exc:
            if exc.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise
            self.errors.append(
                CollectorError(
                    collector=COLLECTOR,
                    code=error_code(exc),
                    detail=f"{self.where}: {name}: {_describe(exc)}",
                )
            )
            return None


def _device(nvml: Any, index: int, driver: str | None) -> tuple[Accelerator, list[CollectorError]]:
    """One GPU. Handle, PCI info and UUID are its identity: if one fails, the GPU fails."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    pci = nvml.nvmlDeviceGetPciInfo(handle)
    bus_text = _text(pci.busId)
    bus_id = normalize_bus_id(bus_text) if bus_text else None
    pci_device = int(pci.pciDeviceId)
    uuid = _text(_optional(partial(nvml.nvmlDeviceGetUUID, handle)))
    fields = _Fields(f"GPU index {index} ({bus_id or 'no bus id'})")
    memory = fields.get("memory", partial(nvml.nvmlDeviceGetMemoryInfo, handle))
    arch = fields.get("architecture", partial(nvml.nvmlDeviceGetArchitecture, handle))
    accelerator = Accelerator(
        vendor="NVIDIA",
        model=_text(fields.get("name", partial(nvml.nvmlDeviceGetName, handle))),
        pci_vendor_id=f"0x{pci_device & 0xFFFF:04x}",
        pci_device_id=f"0x{pci_device >> 16 & 0xFFFF:04x}",
        pci_bus_id=bus_id,
        uuid=uuid,
        serial=_text(fields.get("serial", partial(nvml.nvmlDeviceGetSerial, handle))),
        board_part_number=_text(
            fields.get("board_part_number", partial(nvml.nvmlDeviceGetBoardPartNumber, handle))
        ),
        vbios_version=_text(
            fields.get("vbios_version", partial(nvml.nvmlDeviceGetVbiosVersion, handle))
        ),
        driver_version=driver,
        memory_mib=int(memory.total) // (1024 * 1024) if memory is not None else None,
        architecture=ARCHITECTURES.get(int(arch)) if arch is not None else None,
        source="nvml",
    )
    return accelerator, fields.errors


def collect_with_errors(nvml: Any | None = None) -> tuple[list[Accelerator], list[CollectorError]]:
    """Every GPU NVML can read, and one error per GPU it could not.

    Raises :class:`CollectorFailure` when NVML itself is unusable (no library, no driver, no
    permission to initialize) or when GPUs exist and none of them could be read.
    """
    lib: Any = pynvml if nvml is None else nvml
    try:
        lib.nvmlInit()
    except pynvml.NVMLError as exc:
        raise CollectorFailure(error_code(exc), f"nvmlInit failed: {_describe(exc)}") from exc
    try:
        return _walk(lib)
    finally:
        try:
            lib.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.warning("nvmlShutdown failed: %s", _describe(exc))


def _walk(lib: Any) -> tuple[list[Accelerator], list[CollectorError]]:
    system = _Fields("system")
    driver = _text(system.get("driver_version", lib.nvmlSystemGetDriverVersion))
    try:
        count = int(lib.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        raise CollectorFailure(error_code(exc), f"cannot enumerate GPUs: {_describe(exc)}") from exc
    devices: list[Accelerator] = []
    errors: list[CollectorError] = list(system.errors)
    for index in range(count):
        try:
            device, field_errors = _device(lib, index, driver)
        except pynvml.NVMLError as exc:
            errors.append(
                CollectorError(
                    collector=COLLECTOR,
                    code=error_code(exc),
                    detail=f"GPU index {index}: {_describe(exc)}",
                )
            )
            continue
        except ValueError as exc:  # a bus id NVML should never produce
            errors.append(
                CollectorError(
                    collector=COLLECTOR, code="nvml_bad_answer", detail=f"GPU index {index}: {exc}"
                )
            )
            continue
        devices.append(device)
        errors.extend(field_errors)
    if count > 0 and not devices:
        raise CollectorFailure(
            errors[0].code,
            f"none of {count} GPUs could be read: " + "; ".join(e.detail for e in errors),
        )
    return devices, errors


def collect(nvml: Any | None = None) -> list[Accelerator]:
    """All GPUs, or :class:`CollectorFailure` if NVML or any single GPU failed.

    Prefer :func:`collect_with_errors` in the snapshot: it keeps the GPUs that did answer.
    """
    devices, errors = collect_with_errors(nvml)
    if errors:
        raise CollectorFailure(
            errors[0].code,
            f"{len(errors)} GPU(s) could not be read: " + "; ".join(e.detail for e in errors),
        )
    return devices


# --------------------------------------------------------------------------- record / replay


class RecordingError(Exception):
    """A recorded NVML file that cannot be replayed."""


@dataclass(frozen=True)
class _PciInfo:
    busId: bytes
    pciDeviceId: int
    pciSubSystemId: int


@dataclass(frozen=True)
class _Memory:
    total: int


_FIELDS: dict[str, Callable[[Any, Any], Any]] = {
    "name": lambda lib, h: lib.nvmlDeviceGetName(h),
    "uuid": lambda lib, h: lib.nvmlDeviceGetUUID(h),
    "serial": lambda lib, h: lib.nvmlDeviceGetSerial(h),
    "board_part_number": lambda lib, h: lib.nvmlDeviceGetBoardPartNumber(h),
    "vbios_version": lambda lib, h: lib.nvmlDeviceGetVbiosVersion(h),
    "architecture": lambda lib, h: lib.nvmlDeviceGetArchitecture(h),
    "memory_total_bytes": lambda lib, h: lib.nvmlDeviceGetMemoryInfo(h).total,
    "pci": lambda lib, h: _record_pci(lib.nvmlDeviceGetPciInfo(h)),
}


def _record_pci(info: Any) -> dict[str, Any]:
    return {
        "busId": _text(info.busId),
        "pciDeviceId": f"0x{int(info.pciDeviceId):08x}",
        "pciSubSystemId": f"0x{int(info.pciSubSystemId):08x}",
    }


def _answer(fn: Callable[[], Any]) -> Any:
    try:
        value = fn()
    except pynvml.NVMLError as exc:
        return {"error": _ERROR_NAMES.get(exc.value, "NVML_ERROR_UNKNOWN")}
    return _text(value) if isinstance(value, bytes) else value


def record(nvml: Any | None = None) -> dict[str, Any]:
    """Every answer NVML gives the collector, errors included, as JSON-ready data.

    Run this on a host with GPUs to make a fixture for :class:`RecordedNvml`; redact identifiers
    before publishing it.
    """
    lib: Any = pynvml if nvml is None else nvml
    out: dict[str, Any] = {"format": "veu-attest nvml recording v1"}
    try:
        lib.nvmlInit()
    except pynvml.NVMLError as exc:
        out["init"] = {"error": _ERROR_NAMES.get(exc.value, "NVML_ERROR_UNKNOWN")}
        return out
    try:
        out["driver_version"] = _answer(lib.nvmlSystemGetDriverVersion)
        count = int(lib.nvmlDeviceGetCount())
        devices: list[dict[str, Any]] = []
        for index in range(count):
            handle = _answer(partial(lib.nvmlDeviceGetHandleByIndex, index))
            if isinstance(handle, dict) and "error" in handle:
                devices.append({"handle": handle})
                continue
            devices.append({key: _answer(partial(f, lib, handle)) for key, f in _FIELDS.items()})
        out["devices"] = devices
    finally:
        lib.nvmlShutdown()
    return out


class RecordedNvml:
    """Replays a recording made by :func:`record` through pynvml's call names.

    Any answer may be ``{"error": "NVML_ERROR_..."}``: the call then raises the real pynvml
    exception for that code (``pynvml.NVMLError_GpuIsLost`` and so on).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("devices", []), list):
            raise RecordingError("a recording is an object with a 'devices' list")
        self._data = data
        self._devices: list[dict[str, Any]] = data.get("devices", [])
        self.initialized = False
        self.shutdown_calls = 0

    @classmethod
    def from_file(cls, path: Path) -> RecordedNvml:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RecordingError(f"cannot read NVML recording {path}: {exc}") from exc
        return cls(data)

    @staticmethod
    def _reply(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"error"}:
            name = value["error"]
            code = getattr(pynvml, name, None) if isinstance(name, str) else None
            if not isinstance(code, int) or not name.startswith("NVML_ERROR_"):
                raise RecordingError(f"unknown NVML error name {name!r} in recording")
            raise pynvml.NVMLError(code)
        return value

    def _field(self, handle: int, key: str) -> Any:
        self._require_init()
        return self._reply(self._devices[handle].get(key, {"error": "NVML_ERROR_NOT_SUPPORTED"}))

    def _require_init(self) -> None:
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlInit(self) -> None:
        self._reply(self._data.get("init"))
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._require_init()
        self.initialized = False
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._require_init()
        return str(self._reply(self._data.get("driver_version")))

    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        self._reply(self._data.get("count"))
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._require_init()
        if not 0 <= index < len(self._devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._reply(self._devices[index].get("handle"))
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return str(self._field(handle, "name"))

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._field(handle, "uuid"))

    def nvmlDeviceGetSerial(self, handle: int) -> str:
        return str(self._field(handle, "serial"))

    def nvmlDeviceGetBoardPartNumber(self, handle: int) -> str:
        return str(self._field(handle, "board_part_number"))

    def nvmlDeviceGetVbiosVersion(self, handle: int) -> str:
        return str(self._field(handle, "vbios_version"))

    def nvmlDeviceGetArchitecture(self, handle: int) -> int:
        return int(self._field(handle, "architecture"))

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        return _Memory(total=int(self._field(handle, "memory_total_bytes")))

    def nvmlDeviceGetPciInfo(self, handle: int) -> _PciInfo:
        pci = self._field(handle, "pci")
        try:
            return _PciInfo(
                busId=str(pci["busId"]).encode("ascii"),
                pciDeviceId=int(pci["pciDeviceId"], 16),
                pciSubSystemId=int(pci.get("pciSubSystemId", "0x0"), 16),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(f"GPU {handle}: bad 'pci' entry in recording: {exc}") from exc


def redact(recording: dict[str, Any]) -> dict[str, Any]:
    """A copy with UUIDs and serials replaced by stable look-alikes (same input, same output)."""
    out: dict[str, Any] = json.loads(json.dumps(recording))
    for device in out.get("devices", []):
        for key in ("uuid", "serial"):
            value = device.get(key)
            if not isinstance(value, str):
                continue
            digest = hashlib.sha256(f"{key}:{value}".encode()).hexdigest()
            if key == "uuid":
                device[key] = f"GPU-{uuid_mod.UUID(digest[:32])}"
            else:
                device[key] = str(int(digest[:12], 16))[: max(len(value), 1)].rjust(len(value), "0")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.collect.nvml --out FILE [--redact]``: record this host's NVML answers."""
    parser = argparse.ArgumentParser(prog="python -m agent.collect.nvml", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where to write the recording")
    parser.add_argument("--redact", action="store_true", help="replace UUIDs and serials")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = record()
    data["walk_seconds"] = round(time.perf_counter() - started, 4)
    if args.redact:
        data = redact(data)
    args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    devices = len(data.get("devices", []))
    print(f"recorded {devices} GPU(s) in {data['walk_seconds']}s to {args.out}", file=sys.stderr)
    if "init" in data:
        print(f"nvmlInit failed: {data['init']['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
