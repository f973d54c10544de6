"""Host collector: who this machine is (:func:`collect_host`) and what it can tell about its
own security posture (:func:`collect_posture`).

Everything is read from ``/proc``, ``/sys``, ``/etc`` and ``/dev`` under configurable roots, so
tests can use recorded trees. A fact that cannot be read is null, never guessed:

- secure boot: the EFI variable ``SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c`` (4 attribute
  bytes, then the value byte: 1 enabled, 0 disabled); null when efivars cannot be read.
- TPM: ``class/tpm/tpm0`` in sysfs (version from ``tpm_version_major``) or ``/dev/tpm0``,
  ``/dev/tpmrm0``; false only when sysfs is readable and shows none; null otherwise.
- listening sockets: TCP in LISTEN and bound UDP sockets (psutil); null when the OS refuses.
"""

from __future__ import annotations

import contextlib
import platform
import shlex
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from contract import HostInfo, Posture, Socket

SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
_MAX_ATTR_BYTES = 64 * 1024


def _read(path: Path) -> str | None:
    """A small text file, stripped; None if missing, unreadable, empty or not UTF-8."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_ATTR_BYTES)
        text = data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _os_pretty_name(etc_root: Path) -> str | None:
    text = _read(etc_root / "os-release")
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PRETTY_NAME":
            try:
                parts = shlex.split(value)
            except ValueError:
                return value.strip().strip("\"'") or None
            return " ".join(parts) or None
    return None


def _uptime_s(proc_root: Path) -> int | None:
    text = _read(proc_root / "uptime")
    if text is None:
        return None
    try:
        return int(float(text.split()[0]))
    except (ValueError, IndexError):
        return None


def collect_host(
    proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys"), etc_root: Path = Path("/etc")
) -> HostInfo:
    """Identity of this host. ``sys_root`` is accepted for symmetry; nothing is read from it yet."""
    del sys_root
    live = proc_root == Path("/proc")
    hostname = _read(proc_root / "sys" / "kernel" / "hostname")
    kernel = _read(proc_root / "sys" / "kernel" / "osrelease")
    uptime = _uptime_s(proc_root)
    arch = _read(proc_root / "sys" / "kernel" / "arch")
    if live:  # fall back to the system calls only when describing this very machine
        hostname = hostname or socket.gethostname() or None
        kernel = kernel or platform.release() or None
        arch = arch or platform.machine() or None
        if uptime is None:
            with contextlib.suppress(OSError, RuntimeError):
                uptime = int(max(0.0, time.time() - psutil.boot_time()))
    return HostInfo(
        hostname=hostname,
        machine_id=_read(etc_root / "machine-id"),
        boot_id=_read(proc_root / "sys" / "kernel" / "random" / "boot_id"),
        os=_os_pretty_name(etc_root),
        kernel=kernel,
        arch=arch,
        uptime_s=uptime,
    )


def _secure_boot(sys_root: Path) -> bool | None:
    path = sys_root / "firmware" / "efi" / "efivars" / SECURE_BOOT_VAR
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 5 or data[4] not in (0, 1):
        return None
    return data[4] == 1


def _tpm(sys_root: Path, dev_root: Path) -> tuple[bool | None, str | None]:
    tpm0 = sys_root / "class" / "tpm" / "tpm0"
    if tpm0.is_dir():
        return True, _read(tpm0 / "tpm_version_major")
    if (dev_root / "tpm0").exists() or (dev_root / "tpmrm0").exists():
        return True, None
    if (sys_root / "class").is_dir():
        return False, None
    return None, None


NetConnections = Callable[..., Iterable[Any]]


def _listening(net_connections: NetConnections) -> list[Socket] | None:
    try:
        conns = list(net_connections(kind="inet"))
    except (psutil.AccessDenied, PermissionError, OSError):
        return None
    found: set[tuple[str, str, int]] = set()
    for conn in conns:
        if not conn.laddr:
            continue
        tcp = conn.type == socket.SOCK_STREAM
        if tcp and conn.status != psutil.CONN_LISTEN:
            continue
        if not tcp and (conn.type != socket.SOCK_DGRAM or conn.raddr):
            continue  # a connected UDP socket is a client, not a listener
        v6 = conn.family == socket.AF_INET6
        proto = ("tcp" if tcp else "udp") + ("6" if v6 else "")
        found.add((proto, str(conn.laddr.ip), int(conn.laddr.port)))
    return [Socket(proto=proto, address=addr, port=port) for proto, addr, port in sorted(found)]


def collect_posture(
    sys_root: Path = Path("/sys"),
    dev_root: Path = Path("/dev"),
    *,
    net_connections: NetConnections = psutil.net_connections,
) -> Posture:
    """Secure boot, TPM and listening sockets; ``net_connections`` is injectable for tests."""
    tpm_present, tpm_version = _tpm(sys_root, dev_root)
    return Posture(
        secure_boot=_secure_boot(sys_root),
        tpm_present=tpm_present,
        tpm_version=tpm_version,
        listening_sockets=_listening(net_connections),
    )
