"""Specification of the host identity and posture collectors, on recorded trees and this machine."""

from __future__ import annotations

import socket
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.collect.host import SECURE_BOOT_VAR, collect_host, collect_posture

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"

Addr = namedtuple("Addr", "ip port")
Conn = namedtuple("Conn", "fd family type laddr raddr status pid")


def _host_tree(root: Path) -> tuple[Path, Path]:
    proc, etc = root / "proc", root / "etc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    etc.mkdir()
    (proc / "sys" / "kernel" / "hostname").write_text("gpu-node-017\n")
    (proc / "sys" / "kernel" / "osrelease").write_text("5.15.0-91-generic\n")
    (proc / "sys" / "kernel" / "arch").write_text("x86_64\n")
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(
        "3f1c2a4e-8d7b-4c61-9a0e-5b2d7f8e1c34\n"
    )
    (proc / "uptime").write_text("864123.45 6890011.20\n")
    (etc / "machine-id").write_text("4c4c4544004b3510805ac4c04f4e4d32\n")
    (etc / "os-release").write_text(
        'NAME="Ubuntu"\nVERSION_ID="22.04"\nPRETTY_NAME="Ubuntu 22.04.3 LTS"\nID=ubuntu\n'
    )
    return proc, etc


def test_recorded_host_identity_is_read_from_proc_and_etc(tmp_path: Path) -> None:
    proc, etc = _host_tree(tmp_path)
    host = collect_host(proc_root=proc, sys_root=SYSFS / "h100-hgx", etc_root=etc)
    assert host.hostname == "gpu-node-017"
    assert host.machine_id == "4c4c4544004b3510805ac4c04f4e4d32"
    assert host.boot_id == "3f1c2a4e-8d7b-4c61-9a0e-5b2d7f8e1c34"
    assert host.os == "Ubuntu 22.04.3 LTS"
    assert host.kernel == "5.15.0-91-generic"
    assert host.arch == "x86_64"
    assert host.uptime_s == 864123


def test_unreadable_identity_facts_are_null_not_guessed(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text("NAME=Foo\n")  # no PRETTY_NAME
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "uptime").write_text("not-a-number\n")
    host = collect_host(proc_root=tmp_path / "proc", etc_root=tmp_path / "etc")
    assert host.model_dump() == {
        "hostname": None,
        "machine_id": None,
        "boot_id": None,
        "os": None,
        "kernel": None,
        "arch": None,
        "uptime_s": None,
    }


def test_os_release_with_unbalanced_quote_still_gives_a_name(tmp_path: Path) -> None:
    (tmp_path / "os-release").write_text('PRETTY_NAME="Rocky Linux 9.3\n')
    host = collect_host(proc_root=tmp_path / "none", etc_root=tmp_path)
    assert host.os == "Rocky Linux 9.3"


def test_empty_machine_id_is_null(tmp_path: Path) -> None:
    (tmp_path / "machine-id").write_text("\n")
    assert collect_host(proc_root=tmp_path, etc_root=tmp_path).machine_id is None


def test_this_machine_has_a_hostname_kernel_and_uptime() -> None:
    host = collect_host()
    assert host.hostname == socket.gethostname()
    assert host.kernel
    assert host.arch
    assert host.uptime_s is not None and host.uptime_s >= 0


def _no_sockets(**_: Any) -> list[Conn]:
    return []


def test_recorded_posture_secure_boot_on_and_tpm2(tmp_path: Path) -> None:
    posture = collect_posture(SYSFS / "h100-hgx", tmp_path, net_connections=_no_sockets)
    assert posture.secure_boot is True
    assert posture.tpm_present is True
    assert posture.tpm_version == "2"
    assert posture.listening_sockets == []


def test_recorded_posture_secure_boot_off_and_no_tpm(tmp_path: Path) -> None:
    posture = collect_posture(SYSFS / "mixed-vendor", tmp_path, net_connections=_no_sockets)
    assert posture.secure_boot is False
    assert posture.tpm_present is False
    assert posture.tpm_version is None


def test_unreadable_firmware_and_classes_leave_posture_null(tmp_path: Path) -> None:
    posture = collect_posture(SYSFS / "empty", tmp_path, net_connections=_no_sockets)
    assert posture.secure_boot is None
    assert posture.tpm_present is None


def test_tpm_device_node_counts_as_present(tmp_path: Path) -> None:
    (tmp_path / "tpmrm0").touch()
    posture = collect_posture(SYSFS / "empty", tmp_path, net_connections=_no_sockets)
    assert posture.tpm_present is True
    assert posture.tpm_version is None


@pytest.mark.parametrize("data", [b"\x06\x00\x00", b"\x06\x00\x00\x00\x07"])
def test_truncated_or_odd_secure_boot_variable_is_null(tmp_path: Path, data: bytes) -> None:
    efivars = tmp_path / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    (efivars / SECURE_BOOT_VAR).write_bytes(data)
    assert collect_posture(tmp_path, tmp_path, net_connections=_no_sockets).secure_boot is None


def _recorded_sockets(**kwargs: Any) -> Iterator[Conn]:
    assert kwargs == {"kind": "inet"}
    tcp, udp = socket.SOCK_STREAM, socket.SOCK_DGRAM
    v4, v6 = socket.AF_INET, socket.AF_INET6
    yield Conn(3, v4, tcp, Addr("0.0.0.0", 22), (), psutil.CONN_LISTEN, None)
    yield Conn(4, v6, tcp, Addr("::", 22), (), psutil.CONN_LISTEN, None)
    yield Conn(5, v4, tcp, Addr("10.0.0.5", 22), Addr("10.0.0.9", 50122), "ESTABLISHED", None)
    yield Conn(6, v4, udp, Addr("127.0.0.53", 53), (), psutil.CONN_NONE, None)
    yield Conn(7, v4, udp, Addr("10.0.0.5", 40000), Addr("10.0.0.1", 123), psutil.CONN_NONE, None)
    yield Conn(8, v4, tcp, (), (), psutil.CONN_CLOSE, None)
    yield Conn(9, v4, tcp, Addr("0.0.0.0", 22), (), psutil.CONN_LISTEN, None)  # SO_REUSEPORT


def test_listening_sockets_are_tcp_listeners_and_unconnected_udp(tmp_path: Path) -> None:
    posture = collect_posture(SYSFS / "empty", tmp_path, net_connections=_recorded_sockets)
    assert posture.listening_sockets is not None
    assert [(s.proto, s.address, s.port) for s in posture.listening_sockets] == [
        ("tcp", "0.0.0.0", 22),
        ("tcp6", "::", 22),
        ("udp", "127.0.0.53", 53),
    ]


def test_access_denied_for_sockets_is_null_not_empty(tmp_path: Path) -> None:
    def denied(**_: Any) -> list[Conn]:
        raise psutil.AccessDenied()

    posture = collect_posture(SYSFS / "empty", tmp_path, net_connections=denied)
    assert posture.listening_sockets is None


def test_a_real_listener_on_this_machine_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        posture = collect_posture()
    if posture.listening_sockets is None:
        pytest.skip("this machine does not let us list sockets")
    assert ("tcp", "127.0.0.1", port) in {
        (s.proto, s.address, s.port) for s in posture.listening_sockets
    }
