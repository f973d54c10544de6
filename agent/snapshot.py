"""Snapshot assembly: run every collector (each bounded in time), build the predicate, chain it.

Which probes run:

- PCI (sysfs) always, unless an inventory file is given: it is the cross-check that sees every
  device on the bus.
- NVML only when PCI shows at least one NVIDIA device (or PCI itself failed): NVML details the
  devices PCI found; on a host with no NVIDIA device there is nothing for it to report, and a
  missing driver there is not a failure.
- An inventory file *replaces* the hardware probes (demos, tests, hosts without the hardware);
  its entries say ``source: inventory-file`` and ``assurance: declared``.
- Host facts, posture and the weight-storage scan always.

Every failure becomes an entry in ``errors``; the verifier turns those into "cannot attest".
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.chain import Chain, Outbox, Taken
from agent.collect import run_collector
from agent.config import AgentConfig
from agent.tpm.keys import TpmSigner, quote
from contract import (
    Accelerator,
    AgentInfo,
    CollectorError,
    Evidence,
    HostInfo,
    Posture,
    SnapshotV1,
    SnapshotV2,
    StorageRoot,
    TpmCertifiedKey,
    TpmEvidence,
    TpmQuote,
    __version__,
    format_timestamp,
)
from contract.keys import Signer
from contract.keys import key_id as compute_key_id
from contract.statement import inventory_digest, quote_qualifying_data

log = logging.getLogger(__name__)

NVIDIA_VENDOR_ID = "0x10de"
HASH_CACHE_NAME = "hashcache.bin"


def collect_accelerators(config: AgentConfig) -> tuple[list[Accelerator], list[CollectorError]]:
    from agent.collect import accelerators, inventory, nvml, pci

    timeout = config.collector_timeout
    if config.inventory is not None:
        inventory_path = config.inventory
        none_declared: list[Accelerator] = []
        return run_collector(
            "inventory",
            lambda: inventory.load(inventory_path),
            timeout_s=timeout,
            default=none_declared,
        )
    errors: list[CollectorError] = []
    sys_root = config.sys_root
    no_devices: list[Accelerator] = []
    on_bus, pci_errors = run_collector(
        "pci", lambda: pci.collect(sys_root), timeout_s=timeout, default=no_devices
    )
    errors.extend(pci_errors)
    from_nvml: list[Accelerator] = []
    wants_nvml = bool(pci_errors) or any(a.pci_vendor_id == NVIDIA_VENDOR_ID for a in on_bus)
    if config.nvml and wants_nvml:
        nothing: tuple[list[Accelerator], list[CollectorError]] = ([], [])
        replay = config.nvml_replay
        (from_nvml, nvml_partial), nvml_errors = run_collector(
            "nvml",
            lambda: nvml.collect_with_errors(
                nvml.RecordedNvml.from_file(replay) if replay is not None else None
            ),
            timeout_s=timeout,
            default=nothing,
        )
        errors.extend(nvml_partial)
        errors.extend(nvml_errors)
    return accelerators.merge(from_nvml, on_bus), errors


def accelerator_fingerprint(config: AgentConfig) -> str:
    """A cheap digest of the accelerator inventory (no weight hashing), to notice changes."""
    found, errors = collect_accelerators(config)
    h = hashlib.sha256()
    for acc in found:
        h.update(f"{acc.pci_bus_id}|{acc.uuid}|{acc.serial}|{acc.pci_device_id}\n".encode())
    for err in errors:
        h.update(f"error|{err.collector}|{err.code}\n".encode())
    return h.hexdigest()


def collect_host(config: AgentConfig) -> tuple[HostInfo, Posture, list[CollectorError]]:
    from agent.collect import host

    proc_root, sys_root = config.proc_root, config.sys_root
    info, errors = run_collector(
        "host",
        lambda: host.collect_host(proc_root=proc_root, sys_root=sys_root),
        timeout_s=config.collector_timeout,
        default=HostInfo(),
    )
    posture, posture_errors = run_collector(
        "posture",
        lambda: host.collect_posture(sys_root=sys_root),
        timeout_s=config.collector_timeout,
        default=Posture(),
    )
    return info, posture, errors + posture_errors


def collect_storage(
    config: AgentConfig, *, progress: bool, low_priority: bool
) -> tuple[list[StorageRoot], list[CollectorError]]:
    if not config.weight_roots:
        return [], []
    from agent.collect import storage

    roots = list(config.weight_roots)
    cache = config.state_dir / HASH_CACHE_NAME
    nothing: tuple[list[StorageRoot], list[CollectorError]] = ([], [])
    (found, partial), errors = run_collector(
        "storage",
        lambda: storage.scan_weight_roots(
            roots,
            cache_path=cache,
            workers=config.hash_workers,
            progress=progress,
            low_priority=low_priority,
            proc_root=config.proc_root,
            sys_root=config.sys_root,
            list_unidentified_from=config.list_unidentified_from,
        ),
        timeout_s=config.scan_timeout,
        default=nothing,
    )
    return found, partial + errors


def take_snapshot(
    config: AgentConfig,
    key: Signer,
    *,
    nonce: str | None = None,
    outbox: Outbox | None = None,
    progress: bool = False,
    low_priority: bool = False,
    site_id: str | None = None,
    dry_run: bool = False,
) -> Taken:
    """Collect everything, then sign and chain one snapshot (durable before the head moves).

    ``dry_run``: sign what the next snapshot would be, marked ``extensions.dry_run`` (which the
    verifier refuses), and leave the chain, journal and outbox untouched.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    accelerators, acc_errors = collect_accelerators(config)
    host, posture, host_errors = collect_host(config)
    storage, storage_errors = collect_storage(config, progress=progress, low_priority=low_priority)
    collected_at = format_timestamp(datetime.now(UTC))
    key_id = compute_key_id(key.public_key())

    def build(seq: int, prev: str | None) -> SnapshotV1:
        snapshot = SnapshotV1(
            agent=AgentInfo(key_id=key_id, version=__version__),
            site_id=site_id if site_id is not None else config.site_id,
            host=host,
            seq=seq,
            prev=prev,
            nonce=nonce,
            collected_at=collected_at,
            accelerators=accelerators,
            storage=storage,
            posture=posture,
            errors=acc_errors + host_errors + storage_errors,
            extensions={**_recorded_fixtures(config), **({"dry_run": True} if dry_run else {})},
        )
        if isinstance(key, TpmSigner):
            return with_tpm_evidence(snapshot, key, config)
        return snapshot

    chain = Chain(config.state_dir, key, outbox=outbox)
    return chain.sign_unchained(build) if dry_run else chain.advance(build)


def _recorded_fixtures(config: AgentConfig) -> dict[str, Any]:
    """Say in the evidence when recorded answers stood in for absent hardware."""
    recorded: dict[str, str] = {}
    if config.nvml_replay is not None:
        recorded["nvml"] = config.nvml_replay.name
    if config.sys_root != Path("/sys"):
        recorded["sysfs"] = str(config.sys_root)
    if config.proc_root != Path("/proc"):
        recorded["procfs"] = str(config.proc_root)
    return {"recorded_fixtures": recorded} if recorded else {}


def default_cache_path(state_dir: Path) -> Path:
    return state_dir / HASH_CACHE_NAME


#: Where Linux exposes the firmware's measured-boot log and IMA's measurement list.
EVENT_LOG = Path("security/tpm0/binary_bios_measurements")
IMA_LOG = Path("security/ima/ascii_runtime_measurements")
#: Largest log carried (the verifier refuses larger ones).
_MAX_LOG = 8 * 1024 * 1024


def _read_log(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_LOG + 1)
    except OSError:
        return None  # absent, or not readable by this user
    if not data or len(data) > _MAX_LOG:
        return None
    return base64.b64encode(data).decode("ascii")


def with_tpm_evidence(snapshot: SnapshotV1, key: TpmSigner, config: AgentConfig) -> SnapshotV2:
    """The snapshot as v2 with its TPM evidence: the AK, the certified key, a quote over
    SHA-256(nonce || inventory digest), and the event and IMA logs where the kernel shows them."""
    k = key.keys
    made = quote(
        k, quote_qualifying_data(snapshot.nonce, inventory_digest(snapshot)), tcti=key.tcti
    )
    kernel = config.sys_root / "kernel"
    evidence = Evidence(
        tpm=TpmEvidence(
            ak_public=k.ak_public,
            certified_key=TpmCertifiedKey(
                public=k.key_public, certify_info=k.certify_info, signature=k.certify_signature
            ),
            quote=TpmQuote(
                quoted=made.quoted, signature=made.signature, bank="sha256", pcrs=made.pcrs
            ),
            event_log=_read_log(kernel / EVENT_LOG),
            ima_log=_read_log(kernel / IMA_LOG),
        )
    )
    return SnapshotV2(**dict(snapshot), evidence=evidence)
