"""``veu-server serve --workers N``: uvicorn's supervisor, one listening socket per worker.

uvicorn's multiprocess mode binds ONE socket in the parent and hands it to every worker. Each
worker's event loop accepts from it in a loop, so when a load balancer or a pool of agents
opens its keep-alive connections at once, the worker that wakes first takes most of them and
keeps them: measured here, 8 connections to 2 workers put 78% of the CPU on one worker and
cost a quarter of the throughput (bench/RESULTS.md, "Fleet scale").

Here every worker gets its own socket, bound to the same address with ``SO_REUSEPORT``, and
the kernel spreads new connections over the listening sockets by a hash of the connection's
addresses (Linux 3.9+, the BSDs; nginx's ``reuseport``). Only sockets of the same user may join
the group. A worker's socket lives and dies with it: the supervisor closes its own copy as soon
as the worker holds it, so a dead worker's socket leaves the group at once and gets no new
connections, and its replacement binds a fresh one. Where ``SO_REUSEPORT`` does not exist, the
shared socket is used as before.

Why not a supervisor of our own: uvicorn's handles worker health checks, restarts and
SIGTTIN/SIGTTOU (one worker more or fewer). It takes a fresh ``self.sockets`` each time it starts
a worker, so a property is all this changes. SIGHUP is the one signal taken over: instead of
replacing every worker it reloads the policy packs (``on_hup``: recorded in the database, which
every worker checks; server/compliance/policy_sync.py), so no connection is dropped for a pack edit.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable

from uvicorn import Config
from uvicorn.supervisors import Multiprocess

REUSE_PORT = hasattr(socket, "SO_REUSEPORT")

log = logging.getLogger("veu.server")


class _HupReloads(Multiprocess):
    """uvicorn's supervisor whose SIGHUP calls ``on_hup`` (in its loop, not in the handler)."""

    on_hup: Callable[[], None] | None = None

    def handle_hup(self) -> None:
        if self.on_hup is None:
            super().handle_hup()
            return
        log.info("Received SIGHUP, reloading the policy packs.")
        self.on_hup()


def listening_socket(config: Config, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to the configured address (not yet listening: the worker listens).

    TCP_NODELAY is set here because uvicorn creates the server from a socket with ``proto=0``,
    and asyncio then does not set it on accepted connections (which inherit it on Linux):
    without it every keep-alive answer waits ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((config.host, config.port))
    except OSError:
        sock.close()
        raise
    return sock


class PerWorkerSockets(_HupReloads):
    """uvicorn's :class:`Multiprocess`, each worker on its own ``SO_REUSEPORT`` socket."""

    def __init__(self, config: Config) -> None:
        self._handed: list[socket.socket] = []
        # The first socket is bound now, so a port in use fails before any worker starts.
        self._first: socket.socket | None = listening_socket(config, reuse_port=True)
        super().__init__(config, sockets=[])

    @property
    def sockets(self) -> list[socket.socket]:
        """uvicorn reads this once for each worker it starts: a new socket each time."""
        if self._first is not None:
            sock, self._first = self._first, None
        else:
            sock = listening_socket(self.config, reuse_port=True)
        self._handed.append(sock)
        return [sock]

    @sockets.setter
    def sockets(self, _value: list[socket.socket]) -> None:
        """uvicorn's ``__init__`` stores the shared sockets; there are none."""

    def release_handed(self) -> None:
        """Close the supervisor's copies of the sockets it handed to workers.

        Starting a worker pickles its socket (a duplicate descriptor kept by
        ``multiprocessing``'s resource sharer until the worker takes it), so once ``start()``
        has returned the supervisor's copy only keeps a dead worker's socket in the group.
        """
        while self._handed:
            with contextlib.suppress(OSError):
                self._handed.pop().close()

    def keep_subprocess_alive(self) -> None:
        # Called every half second by the supervisor's loop, after signals (SIGHUP, SIGTTIN)
        # may have started workers.
        self.release_handed()
        super().keep_subprocess_alive()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.release_handed()
            if self._first is not None:
                self._first.close()


def supervisor(config: Config, *, on_hup: Callable[[], None] | None = None) -> Multiprocess:
    """The supervisor of ``config.workers`` worker processes (``.run()`` until SIGINT/SIGTERM);
    SIGHUP calls ``on_hup`` (None: uvicorn's, which replaces every worker). Raises OSError if the
    address cannot be bound."""
    sup: _HupReloads
    if REUSE_PORT:
        sup = PerWorkerSockets(config)
    else:
        sup = _HupReloads(config, sockets=[listening_socket(config, reuse_port=False)])
    sup.on_hup = on_hup
    return sup
