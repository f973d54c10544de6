"""Inventory file: a declared accelerator list for machines without the hardware (demos, tests).

Format (JSON, or YAML by ``.yaml``/``.yml`` extension or by content)::

    {"accelerators": [{"vendor": "NVIDIA", "model": "NVIDIA H100 80GB HBM3", ...}, ...]}

Field names are those of :class:`~contract.Accelerator`; missing fields are null. Every entry
is forced to ``source: "inventory-file"`` and ``assurance: "declared"``: nothing typed in by a
person may pretend that it was probed, so an entry that claims another source or assurance is an
error rather than being silently rewritten. PCI ids and bus ids are checked and normalized (ids to
lowercase ``0x`` hex, bus ids to ``0000:18:00.0``) so they compare with probed entries.

Limits: :data:`MAX_BYTES` per file, :data:`MAX_ENTRIES` entries, no YAML aliases (a small file
must not expand into a large document), no duplicate keys.

Errors (:class:`InventoryError`, a :class:`~agent.collect.CollectorFailure`):
``inventory_not_found``, ``inventory_malformed`` (cannot be parsed) and ``inventory_invalid``
(parses, wrong content); the detail names the file, the entry index and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.collect import CollectorFailure
from agent.collect.pci import normalize_bus_id
from contract import Accelerator, MalformedError, parse_json_strict

MAX_BYTES = 1024 * 1024
MAX_ENTRIES = 10_000
SOURCE = "inventory-file"
ASSURANCE = "declared"

_FIELDS = frozenset(Accelerator.model_fields)
_HEX_IDS = {
    "pci_vendor_id": re.compile(r"^0x[0-9a-f]{4}$"),
    "pci_device_id": re.compile(r"^0x[0-9a-f]{4}$"),
    "pci_class": re.compile(r"^0x[0-9a-f]{6}$"),
}


class InventoryError(CollectorFailure):
    """An inventory file that cannot be used; ``code`` is one of the three in the module doc."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not allowed in an inventory", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse(path: Path, data: bytes) -> Any:
    suffix = path.suffix.lower()
    as_yaml = suffix in (".yaml", ".yml") or (
        suffix != ".json" and not data.lstrip().startswith((b"{", b"["))
    )
    if not as_yaml:
        try:
            return parse_json_strict(data)
        except MalformedError as exc:
            raise InventoryError("inventory_malformed", f"{path}: {exc.detail}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(
            "inventory_malformed", f"{path}: not valid UTF-8 at byte {exc.start}"
        ) from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InventoryError(
            "inventory_malformed", f"{path}: not valid YAML: {problem}{where}"
        ) from exc


def _invalid(path: Path, where: str, message: str) -> InventoryError:
    return InventoryError("inventory_invalid", f"{path}: {where}: {message}")


def _entry(path: Path, index: int, raw: Any) -> Accelerator:
    where = f"accelerators[{index}]"
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise _invalid(path, where, f"each entry must be an object, not {kind}")
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in _FIELDS:
            allowed = ", ".join(sorted(_FIELDS))
            raise _invalid(path, where, f"unknown field {repr(key)[:60]} (allowed: {allowed})")
        fields[key] = value
    for key, forced in (("source", SOURCE), ("assurance", ASSURANCE)):
        claimed = fields.get(key, forced)
        if claimed != forced:
            raise _invalid(
                path,
                f"{where}.{key}",
                f"declares {repr(claimed)[:60]}, but an inventory file can only declare "
                f"{forced!r}: its entries were typed in, not probed",
            )
        fields[key] = forced
    for key, pattern in _HEX_IDS.items():
        value = fields.get(key)
        if isinstance(value, str):
            fields[key] = value.strip().lower()
            if not pattern.match(fields[key]):
                problem = f"{value[:40]!r} is not like {_example(key)}"
                raise _invalid(path, f"{where}.{key}", problem)
    bus = fields.get("pci_bus_id")
    if isinstance(bus, str):
        try:
            fields["pci_bus_id"] = normalize_bus_id(bus)
        except ValueError as exc:
            problem = f"{exc}; expected e.g. 0000:18:00.0"
            raise _invalid(path, f"{where}.pci_bus_id", problem) from exc
    try:
        return Accelerator.model_validate(fields, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "string_type":
            message += " (in YAML, quote values such as '0x10de' or '0000:18:00.0')"
        raise _invalid(path, f"{where}.{loc}", message) from exc


def _example(key: str) -> str:
    return {"pci_vendor_id": "0x10de", "pci_device_id": "0x2330", "pci_class": "0x030200"}[key]


def load(path: Path) -> list[Accelerator]:
    """The declared accelerators in ``path``; :class:`InventoryError` for anything wrong."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise InventoryError("inventory_not_found", f"{path}: no such file") from exc
    except OSError as exc:
        raise InventoryError(
            "inventory_not_found", f"{path}: cannot read: {exc.strerror or exc}"
        ) from exc
    if len(data) > MAX_BYTES:
        raise InventoryError(
            "inventory_malformed", f"{path}: larger than the {MAX_BYTES}-byte limit"
        )
    document = _parse(path, data)
    if not isinstance(document, dict):
        raise _invalid(path, "(top level)", 'must be an object: {"accelerators": [...]}')
    extra = sorted(str(k) for k in document if k != "accelerators")
    if extra:
        raise _invalid(path, "(top level)", f"unknown key {extra[0]!r} (allowed: accelerators)")
    entries = document.get("accelerators")
    if not isinstance(entries, list):
        raise _invalid(path, "accelerators", "missing, or not a list")
    if len(entries) > MAX_ENTRIES:
        raise _invalid(path, "accelerators", f"{len(entries)} entries; the limit is {MAX_ENTRIES}")
    return [_entry(path, index, raw) for index, raw in enumerate(entries)]
