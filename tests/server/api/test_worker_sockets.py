"""server/api/workers.py without processes: the supervisor hands each worker a new socket."""

from __future__ import annotations

import socket

import pytest
from uvicorn import Config

from server.api import workers

pytestmark = pytest.mark.skipif(not workers.REUSE_PORT, reason="no SO_REUSEPORT here")


def _config() -> Config:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return Config("server.api.app:create_app_from_env", host="127.0.0.1", port=port, workers=2)


def test_each_worker_gets_a_new_socket_on_the_same_address() -> None:
    config = _config()
    supervisor = workers.supervisor(config)
    assert isinstance(supervisor, workers.PerWorkerSockets)
    first, second = supervisor.sockets, supervisor.sockets
    try:
        assert len(first) == len(second) == 1 and first[0] is not second[0]
        for sock in (first[0], second[0]):
            assert sock.getsockname() == ("127.0.0.1", config.port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        supervisor.release_handed()
    # The supervisor keeps no copy once the workers hold them.
    assert first[0].fileno() == -1 and second[0].fileno() == -1


def test_a_port_in_use_fails_before_any_worker_starts() -> None:
    config = _config()
    busy = socket.socket()
    busy.bind(("127.0.0.1", config.port))
    busy.listen()
    try:
        with pytest.raises(OSError):
            workers.supervisor(config)
    finally:
        busy.close()


def test_an_ipv6_host_gets_an_ipv6_socket() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    config = Config("x:y", host="::1", port=0, workers=2)
    try:
        sock = workers.listening_socket(config, reuse_port=True)
    except OSError as exc:  # IPv6 disabled on this machine
        pytest.skip(f"::1 cannot be bound: {exc}")
    try:
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()
