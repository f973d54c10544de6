"""The agent daemon (``veu-agent run``): check in, snapshot, deliver the spool, lose nothing.

Rules this module enforces:

1. An envelope reaches the spool (durably) before any attempt to send it; the chain and the spool
   see to that. It leaves the spool only after the verifier's 2xx carrying a signed result that
   verifies with the verifier key stored at enrollment and names the envelope's digest (an
   already-accepted digest is answered with its stored result), so a crash at any point resends
   rather than loses, and a verifier that answers 2xx without such a result is reported and
   retried like a transient failure.
2. The spool is sent in sequence order, one envelope at a time; a transient failure (network,
   timeout, 5xx, 429) stops the round and schedules the next one with exponential backoff, full
   jitter and a cap, never sooner than the verifier's ``Retry-After``.
3. A permanent rejection (the verifier's 4xx codes: revoked key, fork, malformed, ...) moves that
   envelope to ``spool/rejected/`` with its reason, logs it as an error and shows it in the
   status; the rest of the spool is still sent. A damaged spool file goes to ``spool/corrupt/``.
4. A full spool stops new snapshots (said loudly, in the log and the status) until deliveries make
   room; evidence already taken is never dropped to make space.
5. Snapshots are taken at start (unless one was taken less than a report interval ago), every
   report interval, at once when a check-in returns a challenge (bound to its nonce), and when
   the cheap accelerator fingerprint changes between full snapshots.
6. SIGTERM (and SIGINT) end the daemon with 0 within about a second whatever the network does:
   a call to the verifier in progress is cut off (the envelope stays spooled), a snapshot child is
   killed. SIGHUP reloads the configuration; one that does not load is logged, the old one kept.
7. What the verifier says is bounded before it is kept: rejection details are truncated
   (:data:`agent.client.MAX_DETAIL_CHARS`), at most :data:`RECENT_REJECTIONS` are in the status,
   and an old status file over :data:`MAX_STATUS_BYTES` is not read back.

:class:`Daemon` is the loop's state machine; it does no sleeping and takes the verifier, the
snapshot function, the clock and the randomness as parameters, so tests can drive it tick by tick.
:func:`run` wires it to the real host key, chain, spool and HTTP client.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import logging
import os
import random
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol

from agent.config import AgentConfig
from agent.spool import CORRUPT, REJECTED, Spool, SpoolCorrupt, SpoolFull
from contract.fsutil import atomic_write
from contract.jsonlog import JsonFormatter
from contract.keys import Signer
from contract.keys import key_id as compute_key_id

log = logging.getLogger("agent.daemon")

STATUS_NAME = "status.json"
LOCK_NAME = "daemon.lock"
SPOOL_DIR = "spool"
STATUS_VERSION = 1

#: Exit status when the daemon cannot start for a reason a restart will not fix (no key, not
#: enrolled, another daemon running). ``EX_CONFIG``; the systemd unit does not restart on it.
EXIT_CONFIG = 78
#: The longest Retry-After honoured; a larger value (or a broken server) must not stall delivery.
MAX_RETRY_AFTER = 3600.0
#: How many recent permanent rejections the status keeps.
RECENT_REJECTIONS = 10
#: The largest status file read back at start (a bounded daemon writes a few KiB).
MAX_STATUS_BYTES = 256 * 1024


# --------------------------------------------------------------------------- interfaces


class DeliveryError(Exception):
    """The verifier did not take an envelope (or a check-in failed), and whether to try again."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after
        self.status = status


class Verifier(Protocol):
    """The two calls the daemon makes; raise :class:`DeliveryError` on failure."""

    def checkin(self) -> str | None:
        """Check in; return the nonce of a pending challenge for this host, if any."""

    def submit(self, envelope: bytes) -> None:
        """Deliver one envelope; return only when the verifier answered 2xx."""


@dataclass(frozen=True)
class Spooled:
    """A snapshot that is signed, chained and in the spool."""

    seq: int
    digest: str
    size: int


class SnapshotFailed(Exception):
    """The snapshot process reported a failure, or died without an answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class SnapshotInterrupted(Exception):
    """The daemon was told to stop while a snapshot was being taken (the chain is crash-safe)."""


@dataclass(frozen=True)
class Identity:
    key_id: str
    site_id: str | None
    host_id: str | None
    verifier: str | None


TakeSnapshot = Callable[[AgentConfig, str | None], Spooled]
Fingerprint = Callable[[AgentConfig], str]
VerifierFactory = Callable[[AgentConfig], Verifier]


def rfc3339(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def backoff_delay(
    failures: int, *, base: float, cap: float, rng: random.Random, retry_after: float | None
) -> float:
    """Seconds to wait after ``failures`` consecutive transient failures (full jitter, capped)."""
    ceiling = min(cap, base * 2 ** min(max(failures - 1, 0), 30))
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def backoff_bounds(check_in_interval: float) -> tuple[float, float]:
    """(base, cap) for the backoff: about a second up to five minutes at default intervals."""
    base = min(1.0, check_in_interval / 4)
    cap = max(base, min(300.0, check_in_interval * 5))
    return base, cap


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_malloc_trim = _load_malloc_trim()


# --------------------------------------------------------------------------- the state machine


@dataclass
class _Error:
    at: float
    code: str
    detail: str


@dataclass
class _State:
    last_snapshot_at: float | None = None  # wall clock
    last_snapshot: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    last_checkin_at: float | None = None
    checkins: int = 0
    last_error: _Error | None = None
    failures: int = 0
    spool_full: bool = False
    spool_full_detail: str | None = None
    recent_rejections: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RECENT_REJECTIONS)
    )
    head: dict[str, Any] | None = None


class Daemon:
    """One agent's loop, advanced by :meth:`tick`; all waiting is the caller's."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        identity: Identity,
        spool: Spool,
        take: TakeSnapshot,
        fingerprint: Fingerprint,
        verifier_factory: VerifierFactory,
        head: tuple[int, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.spool = spool
        self._take = take
        self._fingerprint = fingerprint
        self._verifier_factory = verifier_factory
        self.verifier = verifier_factory(config)
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311  (jitter, not secrets)
        self.state = _State()
        if head is not None:
            self.state.head = {"seq": head[0], "digest": head[1]}
        self._restore_status()
        now = clock()
        self._next_checkin = now
        self._next_send = now
        self._retry_after_until = now
        self._next_report = self._first_report_due(now)
        self._last_report_mono = now
        self._challenges: list[str] = []
        self._answered: deque[str] = deque(maxlen=64)
        self._fingerprint_seen: str | None = None
        self._fingerprint_changed = False
        self._last_size = 0
        self._dirty = True

    # -- persistence of what survives a restart --------------------------------------------------

    @property
    def status_path(self) -> Path:
        return self.config.state_dir / STATUS_NAME

    def _restore_status(self) -> None:
        try:
            with self.status_path.open("rb") as handle:
                raw = handle.read(MAX_STATUS_BYTES + 1)
            if len(raw) > MAX_STATUS_BYTES:
                return  # written by an unbounded older agent: start afresh
            old = json.loads(raw)
        except (OSError, ValueError):
            return
        if not isinstance(old, dict):
            return
        with contextlib.suppress(TypeError, ValueError):
            at = old.get("last_snapshot_at_epoch")
            self.state.last_snapshot_at = float(at) if at is not None else None
        for name in ("last_snapshot", "last_success"):
            if isinstance(old.get(name), dict):
                setattr(self.state, name, old[name])
        from agent.client import truncate

        for item in old.get("recent_rejections") or []:
            if isinstance(item, dict):
                item["detail"] = truncate(str(item.get("detail")))
                self.state.recent_rejections.append(item)

    def _first_report_due(self, now: float) -> float:
        last = self.state.last_snapshot_at
        if last is None:
            return now
        age = self._wall() - last
        if age < 0 or age >= self.config.report_interval:
            return now
        return now + (self.config.report_interval - age)

    # -- events ----------------------------------------------------------------------------------

    def _error(self, code: str, detail: str, level: int = logging.WARNING, **extra: Any) -> None:
        self.state.last_error = _Error(self._wall(), code, detail)
        event(level, code, detail=detail, **extra)
        self._dirty = True

    # -- the loop --------------------------------------------------------------------------------

    def tick(self, stop: threading.Event) -> float:
        """Do whatever is due now; return the seconds until something is due next."""
        now = self._clock()
        if now >= self._next_checkin and not stop.is_set():
            self._checkin(now)
        reason = self._snapshot_reason(self._clock())
        if reason is not None and not stop.is_set():
            self._snapshot(reason)
        if self.spool.depth and self._clock() >= self._next_send and not stop.is_set():
            self._drain(stop)
        if self._dirty:
            self.write_status("running")
        return self.seconds_until_due()

    def seconds_until_due(self) -> float:
        now = self._clock()
        due = [self._next_checkin]
        if not self.state.spool_full or self._spool_has_room():
            due.append(self._next_report)
        if self.spool.depth:
            due.append(self._next_send)
        return max(0.0, min(due) - now)

    def _schedule_checkin(self, now: float) -> None:
        interval = self.config.check_in_interval
        self._next_checkin = now + interval * self._rng.uniform(0.9, 1.1)

    def _checkin(self, now: float) -> None:
        self._schedule_checkin(now)
        try:
            nonce = self.verifier.checkin()
        except DeliveryError as exc:
            if exc.code != "cancelled":
                self._error(exc.code, f"check-in failed: {exc.detail}", status=exc.status)
            return
        self.state.last_checkin_at = self._wall()
        self.state.checkins += 1
        self._dirty = True
        if now >= self._retry_after_until:
            self._next_send = min(self._next_send, now)  # the verifier answers: retry now
        if nonce and nonce not in self._answered and nonce not in self._challenges:
            event(logging.INFO, "challenge_received", nonce=nonce)
            self._challenges.append(nonce)
        try:
            seen = self._fingerprint(self.config)
        except Exception as exc:  # a probe failure must not stop the loop
            event(logging.WARNING, "fingerprint_failed", detail=f"{type(exc).__name__}: {exc}")
            return
        if self._fingerprint_seen is not None and seen != self._fingerprint_seen:
            event(logging.INFO, "accelerators_changed")
            self._fingerprint_changed = True
        self._fingerprint_seen = seen

    def _snapshot_reason(self, now: float) -> str | None:
        if self._challenges:
            return "challenge"
        if self._fingerprint_changed:
            return "accelerators_changed"
        if now >= self._next_report:
            return "scheduled" if self.state.last_snapshot_at is not None else "start"
        return None

    def _spool_has_room(self) -> bool:
        return self.spool.has_room(self._last_size)

    def _mark_spool_full(self, detail: str) -> None:
        if not self.state.spool_full:
            event(
                logging.ERROR,
                "spool_full",
                detail=detail,
                depth=self.spool.depth,
                bytes=self.spool.bytes_used,
                max_bytes=self.spool.max_bytes,
            )
        self.state.spool_full = True
        self.state.spool_full_detail = detail
        self.state.last_error = _Error(self._wall(), "spool_full", detail)
        self._dirty = True

    def _snapshot(self, reason: str) -> None:
        if not self._spool_has_room():
            self._mark_spool_full(
                f"spool holds {self.spool.bytes_used} of {self.spool.max_bytes} bytes; the "
                f"last envelope took {self._last_size}: no snapshot until deliveries make room"
            )
            return
        nonce = self._challenges[0] if reason == "challenge" else None
        try:
            seen: str | None = self._fingerprint(self.config)
        except Exception:
            seen = None
        try:
            taken = self._take(self.config, nonce)
        except SpoolFull as exc:
            self._mark_spool_full(exc.detail)
            return
        except SnapshotInterrupted:
            return
        except Exception as exc:  # a failing snapshot must not kill the daemon
            self._error(
                getattr(exc, "code", "snapshot_failed"),
                f"snapshot failed: {getattr(exc, 'detail', None) or exc}",
                level=logging.ERROR,
            )
            self._next_report = self._clock() + self.config.check_in_interval
            return
        if self.state.spool_full:
            event(logging.WARNING, "spool_recovered", depth=self.spool.depth)
        self.state.spool_full = False
        self.state.spool_full_detail = None
        if nonce is not None:
            self._challenges.pop(0)
            self._answered.append(nonce)
            self._next_send = self._clock()  # answer a challenge at once
        if seen is not None:
            self._fingerprint_seen = seen
        self._fingerprint_changed = False
        wall = self._wall()
        seq = taken.seq
        self._last_size = taken.size
        self.state.last_snapshot_at = wall
        self.state.last_snapshot = {
            "at": rfc3339(wall),
            "seq": seq,
            "digest": taken.digest,
            "reason": reason,
            "nonce": nonce,
        }
        self.state.head = {"seq": seq, "digest": taken.digest}
        self._last_report_mono = self._clock()
        self._next_report = self._last_report_mono + self.config.report_interval
        self._dirty = True
        self._release_memory()
        event(
            logging.INFO,
            "snapshot_taken",
            seq=seq,
            digest=taken.digest,
            reason=reason,
            nonce=nonce,
            bytes=taken.size,
        )

    def _release_memory(self) -> None:
        """Give a snapshot's transient objects back to the OS: the daemon idles for minutes."""
        gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)

    def _drain(self, stop: threading.Event) -> None:
        try:
            self._send_pending(stop)
        finally:
            self._release_memory()

    def _send_pending(self, stop: threading.Event) -> None:
        for seq in self.spool.pending():
            if stop.is_set():
                return
            try:
                data = self.spool.read(seq)
            except SpoolCorrupt as exc:
                moved = self.spool.quarantine(seq, exc.detail, folder=CORRUPT, code=exc.code)
                self._error(
                    "spool_corrupt",
                    f"seq {seq}: {exc.detail}; moved to {moved.path}",
                    level=logging.ERROR,
                    seq=seq,
                )
                continue
            try:
                self.verifier.submit(data)
            except DeliveryError as exc:
                if exc.code == "cancelled":
                    return  # stopping: the envelope stays spooled
                if exc.transient:
                    self._transient(seq, exc)
                    return
                self._rejected(seq, exc)
                continue
            self.spool.remove(seq)
            self.state.failures = 0
            self.state.last_success = {"at": rfc3339(self._wall()), "seq": seq}
            self._dirty = True
            event(logging.INFO, "delivered", seq=seq, depth=self.spool.depth)

    def _transient(self, seq: int, exc: DeliveryError) -> None:
        self.state.failures += 1
        base, cap = backoff_bounds(self.config.check_in_interval)
        delay = backoff_delay(
            self.state.failures, base=base, cap=cap, rng=self._rng, retry_after=exc.retry_after
        )
        now = self._clock()
        self._next_send = now + delay
        if exc.retry_after:
            self._retry_after_until = now + min(exc.retry_after, MAX_RETRY_AFTER)
        self._error(
            exc.code,
            f"delivery of seq {seq} failed ({exc.detail}); retry in {delay:.2f}s",
            seq=seq,
            status=exc.status,
            failures=self.state.failures,
        )

    def _rejected(self, seq: int, exc: DeliveryError) -> None:
        from agent.client import MAX_CODE_CHARS, truncate

        code, detail = truncate(exc.code, MAX_CODE_CHARS), truncate(exc.detail)
        reason = f"{code}: {detail}"
        moved = self.spool.quarantine(seq, reason, folder=REJECTED, code=code)
        self.state.recent_rejections.append(
            {
                "at": rfc3339(self._wall()),
                "seq": seq,
                "code": code,
                "detail": detail,
                "path": str(moved.path),
            }
        )
        self._error(
            "rejected",
            f"the verifier rejected seq {seq} for good ({reason}); moved to {moved.path}",
            level=logging.ERROR,
            seq=seq,
            code_from_verifier=code,
            status=exc.status,
        )

    # -- configuration ---------------------------------------------------------------------------

    def reconfigure(self, config: AgentConfig) -> None:
        """Apply a reloaded configuration; timers keep their last event, take the new interval."""
        old = self.config
        self.config = config
        self.spool.max_bytes = config.spool_max_bytes
        if (
            config.server_url,
            config.ca_file,
            config.client_cert,
            config.client_key,
            config.allow_insecure_http,
        ) != (
            old.server_url,
            old.ca_file,
            old.client_cert,
            old.client_key,
            old.allow_insecure_http,
        ):
            close = getattr(self.verifier, "close", None)
            if callable(close):
                close()
            self.verifier = self._verifier_factory(config)
        self._next_report = self._last_report_mono + config.report_interval
        self._next_checkin = self._clock()
        self._fingerprint_seen = None
        self._dirty = True
        event(
            logging.INFO,
            "config_reloaded",
            check_in_interval=config.check_in_interval,
            report_interval=config.report_interval,
            spool_max_bytes=config.spool_max_bytes,
        )

    # -- status ----------------------------------------------------------------------------------

    def status(self, state: str) -> dict[str, Any]:
        now_mono, now_wall = self._clock(), self._wall()

        def at(mono: float) -> str | None:
            return rfc3339(now_wall + max(0.0, mono - now_mono))

        s = self.state
        blocked = s.spool_full and not self._spool_has_room()
        return {
            "version": STATUS_VERSION,
            "state": state,
            "pid": os.getpid(),
            "updated_at": rfc3339(now_wall),
            "key_id": self.identity.key_id,
            "site_id": self.identity.site_id or self.config.site_id,
            "host_id": self.identity.host_id,
            "verifier": self.config.server_url or self.identity.verifier,
            "chain_head": s.head,
            "spool": {
                "depth": self.spool.depth,
                "bytes": self.spool.bytes_used,
                "max_bytes": self.spool.max_bytes,
                "full": s.spool_full,
                "full_detail": s.spool_full_detail,
                "rejected": len(self.spool.quarantined(REJECTED)),
                "corrupt": len(self.spool.quarantined(CORRUPT)),
                "quarantined_bytes": self.spool.quarantined_bytes,
                "directory": str(self.spool.directory),
            },
            "last_snapshot": s.last_snapshot,
            "last_snapshot_at_epoch": s.last_snapshot_at,
            "last_success": s.last_success,
            "last_checkin_at": rfc3339(s.last_checkin_at),
            "checkins": s.checkins,
            "last_error": (
                None
                if s.last_error is None
                else {
                    "at": rfc3339(s.last_error.at),
                    "code": s.last_error.code,
                    "detail": s.last_error.detail,
                }
            ),
            "consecutive_failures": s.failures,
            "next_snapshot_at": None if blocked or state != "running" else at(self._next_report),
            "next_checkin_at": None if state != "running" else at(self._next_checkin),
            "next_send_at": (
                at(self._next_send) if self.spool.depth and state == "running" else None
            ),
            "pending_challenges": len(self._challenges),
            "recent_rejections": list(s.recent_rejections),
            "check_in_interval": self.config.check_in_interval,
            "report_interval": self.config.report_interval,
        }

    def write_status(self, state: str) -> None:
        body = json.dumps(self.status(state), indent=2, sort_keys=True).encode()
        try:
            atomic_write(self.status_path, body, mode=0o644)
        except OSError as exc:  # a full disk must not stop delivery
            event(logging.WARNING, "status_write_failed", detail=str(exc))
            return
        self._dirty = False


# --------------------------------------------------------------------------- logging


def event(level: int, name: str, **fields_: Any) -> None:
    """One structured log event; :class:`JsonFormatter` writes it as one JSON line."""
    log.log(level, name, extra={"fields": {k: v for k, v in fields_.items() if v is not None}})


def configure_logging(stream: Any = None) -> None:
    """The daemon logs JSON lines at INFO to stderr (journald keeps them)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for chatty in ("httpx", "httpcore"):  # one line per request; our own events say more
        logging.getLogger(chatty).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- wiring


class StartupError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


#: Descriptors a snapshot child must not keep (the daemon's lock outlives it otherwise).
_PARENT_ONLY_FDS: set[int] = set()


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    _PARENT_ONLY_FDS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StartupError(
                "already_running",
                f"another `veu-agent run` holds {state_dir / LOCK_NAME}; one daemon per state "
                "directory",
            ) from exc
        yield
    finally:
        _PARENT_ONLY_FDS.discard(fd)
        os.close(fd)


def snapshot_in_child(
    work: Callable[[], Spooled], stop: threading.Event, *, poll_s: float = 0.2
) -> Spooled:
    """Run ``work`` (collect, sign, chain, spool) in a forked child and return what it spooled.

    A full snapshot of thousands of weight files builds many short-lived objects; in a child their
    memory goes back to the OS when it exits, so the long-lived daemon stays small. A collector
    that crashes the interpreter (a driver library) takes only the child with it. The chain and
    spool writes are crash-safe, so killing the child (on stop, or with the daemon: it asks for
    SIGKILL when its parent dies) loses nothing.
    """
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child_main(work, write_fd, parent)
    os.close(write_fd)
    chunks: list[bytes] = []
    try:
        while True:
            if stop.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise SnapshotInterrupted("stopping")
            ready, _, _ = select.select([read_fd], [], [], poll_s)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, wait_status = os.waitpid(pid, 0)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SnapshotFailed(
            "snapshot_worker_died",
            f"the snapshot process ended without an answer ({_describe(wait_status)})",
        )
    if "error" in answer:
        if answer["error"] == "spool_full":
            raise SpoolFull(str(answer.get("detail")))
        raise SnapshotFailed(str(answer["error"]), str(answer.get("detail")))
    return Spooled(int(answer["seq"]), str(answer["digest"]), int(answer["size"]))


def _describe(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"killed by signal {os.WTERMSIG(wait_status)}"
    return f"exit status {os.waitstatus_to_exitcode(wait_status)}"


def _child_main(work: Callable[[], Spooled], write_fd: int, parent: int) -> NoReturn:
    code = 1
    answer: dict[str, Any]
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for fd in _PARENT_ONLY_FDS:
            with contextlib.suppress(OSError):
                os.close(fd)
        _die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        done = work()
        answer = {"seq": done.seq, "digest": done.digest, "size": done.size}
        code = 0
    except SpoolFull as exc:
        answer = {"error": "spool_full", "detail": exc.detail}
    except BaseException as exc:
        answer = {
            "error": str(getattr(exc, "code", None) or "snapshot_failed"),
            "detail": str(getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"),
        }
    try:
        os.write(write_fd, json.dumps(answer).encode())
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class HttpVerifier:
    """:class:`Verifier` over :class:`agent.client.VerifierClient` (signed check-ins)."""

    def __init__(
        self,
        config: AgentConfig,
        key: Signer,
        key_id: str,
        server_url: str,
        *,
        verifier_key: str,
        stop: threading.Event | None = None,
    ) -> None:
        from agent.client import VerifierClient

        cert: tuple[str, str] | str | None = None
        if config.client_cert is not None:
            cert = (
                (str(config.client_cert), str(config.client_key))
                if config.client_key is not None
                else str(config.client_cert)
            )
        verify: bool | str = str(config.ca_file) if config.ca_file is not None else True
        # Long enough for a busy verifier, short enough that a hung one does not stall the loop.
        timeout = max(2.0, min(30.0, config.check_in_interval * 5))
        self._client = VerifierClient(
            server_url,
            verify=verify,
            cert=cert,
            timeout=timeout,
            allow_insecure_http=config.allow_insecure_http,
            cancel=stop,
        )
        self._key = key
        self._key_id = key_id
        self._verifier_key = verifier_key

    def close(self) -> None:
        self._client.close()

    def checkin(self) -> str | None:
        from agent.client import ClientError

        try:
            answer = self._client.checkin(self._key, self._key_id)
        except ClientError as exc:
            raise _delivery_error(exc) from exc
        pending = answer.get("pending_challenge") if isinstance(answer, dict) else None
        if isinstance(pending, dict) and isinstance(pending.get("nonce"), str):
            return str(pending["nonce"])
        return None

    def submit(self, envelope: bytes) -> None:
        from agent.client import ClientError, verified_result
        from contract import EvidenceError, envelope_digest, parse_envelope

        try:
            digest = envelope_digest(parse_envelope(envelope))
        except EvidenceError as exc:  # the spool checked it; kept for a caller that did not
            raise DeliveryError(exc.code, exc.detail, transient=False) from exc
        try:
            result = self._client.submit(envelope)
            status = int(getattr(result, "status_code", 200))
            if not 200 <= status < 300:
                transient = status >= 500 or status in {408, 425, 429}
                raise DeliveryError(
                    f"http_{status}",
                    f"verifier answered {status}",
                    transient=transient,
                    status=status,
                )
            verified_result(result, digest, self._verifier_key)
        except ClientError as exc:
            raise _delivery_error(exc) from exc


def _delivery_error(exc: Any) -> DeliveryError:
    return DeliveryError(
        str(getattr(exc, "code", "client_error")),
        str(getattr(exc, "detail", exc)),
        transient=bool(getattr(exc, "transient", True)),
        retry_after=getattr(exc, "retry_after", None),
        status=getattr(exc, "status", None),
    )


def _override_dict(overrides: Any) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    known = {f.name for f in fields(AgentConfig)}
    return {k: v for k, v in vars(overrides).items() if k in known}


def run(
    config: AgentConfig,
    *,
    stop_event: threading.Event,
    config_path: Path | None = None,
    overrides: Any = None,
    reload: Callable[[], AgentConfig] | None = None,
    install_signals: bool = True,
) -> int:
    """Run the daemon until ``stop_event`` is set (SIGTERM/SIGINT set it); 0 on a clean stop."""
    # httpx's __init__ imports its optional command-line tool (click, rich, pygments: ~6 MB of
    # resident memory) whenever those happen to be installed; the daemon never uses it, and
    # httpx has a documented fallback when that import fails.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    configure_logging()
    try:
        with _exclusive(config.state_dir):
            return _run_locked(
                config,
                stop_event=stop_event,
                reload=reload or (lambda: _load(config_path, overrides)),
                install_signals=install_signals,
            )
    except StartupError as exc:
        event(logging.ERROR, exc.code, detail=exc.detail)
        return EXIT_CONFIG


def _load(config_path: Path | None, overrides: Any) -> AgentConfig:
    from agent.config import load_config

    return load_config(config_path, _override_dict(overrides))


def _run_locked(
    config: AgentConfig,
    *,
    stop_event: threading.Event,
    reload: Callable[[], AgentConfig],
    install_signals: bool,
) -> int:
    from agent import enrollment as enrollment_mod
    from agent import keys
    from agent.chain import Chain
    from agent.snapshot import accelerator_fingerprint, take_snapshot

    try:
        key = keys.load_signer(config.state_dir)
        enrolled = enrollment_mod.load(config.state_dir)
    except (keys.KeyFileError, enrollment_mod.EnrollmentError) as exc:
        raise StartupError(exc.code, exc.detail) from exc
    key_id = compute_key_id(key.public_key())
    server_url = config.server_url or (enrolled.server_url if enrolled else None)
    if server_url is None or enrolled is None:
        raise StartupError(
            "not_enrolled",
            f"no enrollment in {config.state_dir}: run `veu-agent enroll --server URL --token T` "
            "(the daemon checks every answer against the verifier key stored then)",
        )
    verifier_key = enrolled.verifier_key
    site_id = config.site_id or (enrolled.site_id if enrolled else None)
    identity = Identity(
        key_id=key_id,
        site_id=site_id,
        host_id=enrolled.host_id if enrolled else None,
        verifier=server_url,
    )
    spool = Spool(
        config.state_dir / SPOOL_DIR,
        config.spool_max_bytes,
        public_key=key.public_key(),
        key_id=key_id,
    )
    head: tuple[int, str] | None = None
    try:
        chain = Chain(config.state_dir, key, outbox=spool)  # adopts a journal left by a crash
        current = chain.head()
        head = (current.seq, current.digest) if current is not None else None
    except SpoolFull as exc:
        event(logging.ERROR, "spool_full", detail=exc.detail)

    def take(cfg: AgentConfig, nonce: str | None) -> Spooled:
        def work() -> Spooled:
            taken = take_snapshot(
                cfg, key, nonce=nonce, outbox=spool, low_priority=True, site_id=site_id
            )
            return Spooled(taken.snapshot.seq, taken.digest, len(taken.raw))

        try:
            return snapshot_in_child(work, stop_event)
        finally:
            spool.refresh()  # the child wrote the spool file

    def verifier_for(cfg: AgentConfig) -> Verifier:
        return HttpVerifier(
            cfg,
            key,
            key_id,
            cfg.server_url or server_url,
            verifier_key=verifier_key,
            stop=stop_event,
        )

    daemon = Daemon(
        config,
        identity=identity,
        spool=spool,
        take=take,
        fingerprint=accelerator_fingerprint,
        verifier_factory=verifier_for,
        head=head,
    )
    reload_requested = threading.Event()
    waker = _Waker(stop_event)
    if install_signals and threading.current_thread() is threading.main_thread():
        # Handlers only set events (the main thread never blocks on them: it sleeps in select
        # on the wakeup pipe), so a signal cannot deadlock on a lock the main thread holds.
        waker.install(
            {
                signal.SIGTERM: stop_event.set,
                signal.SIGINT: stop_event.set,
                signal.SIGHUP: reload_requested.set,
            }
        )
    event(
        logging.INFO,
        "started",
        key_id=key_id,
        site_id=site_id,
        verifier=server_url,
        spool_depth=spool.depth,
        check_in_interval=config.check_in_interval,
        report_interval=config.report_interval,
    )
    try:
        while not stop_event.is_set():
            if reload_requested.is_set():
                reload_requested.clear()
                try:
                    new = reload()
                except Exception as exc:
                    event(
                        logging.ERROR,
                        "config_reload_failed",
                        detail=getattr(exc, "detail", None) or str(exc),
                    )
                else:
                    daemon.reconfigure(replace(new, state_dir=config.state_dir))
            delay = daemon.tick(stop_event)
            if not reload_requested.is_set():
                waker.sleep(delay)
    finally:
        daemon.write_status("stopped")
        waker.uninstall()
        event(logging.INFO, "stopped", spool_depth=spool.depth)
    return 0


class _Waker:
    """Sleeps until a deadline, a signal (through a wakeup pipe) or, without signals, a stop."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._pipe: tuple[int, int] | None = None
        self._previous: dict[int, Any] = {}
        self._old_wakeup_fd = -1

    def install(self, handlers: dict[signal.Signals, Callable[[], None]]) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._old_wakeup_fd = signal.set_wakeup_fd(write_fd)
        for signum, action in handlers.items():

            def handler(_signum: int, _frame: FrameType | None, act: Any = action) -> None:
                act()

            self._previous[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def sleep(self, delay: float) -> None:
        if self._pipe is None:
            self._stop.wait(delay)
            return
        read_fd = self._pipe[0]
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select([read_fd], [], [], min(remaining, 5.0))
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(read_fd, 512):
                        pass
                return
