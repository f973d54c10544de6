"""One pack set for every verifier process: recording a reload, and each process following it.

A reload (``POST /v1/policy/reload``, ``SIGHUP`` to ``veu-server serve``, and ``serve`` itself
when it starts) reads the pack files from ``VEU_POLICIES_DIR``, copies them under
``<data dir>/policy-sets/<digest>/``, loads them from there, and records the files, their digest
and a new generation in the ``policy_state`` row, in the transaction of its audit entry. Each
process checks that row every ``policy_check_interval_s`` seconds (``VEU_POLICY_CHECK_INTERVAL``,
default 2) and, when it names another digest, loads the recorded files (not its own disk, which
may have changed since, or differ on another machine) and swaps its pack set. A process that
cannot load them keeps judging by the packs it has, logs ``policy_reload_failed`` once per
generation and reports the error in ``GET /v1/policy``.

So every worker judges by the recorded digest at most one interval (plus a load) after the
reload committed, and each signed result names the digest its snapshot was judged by.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.policy import PackError, PolicySet, load_policy_set
from server.policy.engine import pack_set_digest, read_pack_files
from server.store import audit
from server.store.compliance_models import PolicyState

if TYPE_CHECKING:
    from server.config import Settings
    from server.store.db import Database

log = logging.getLogger("veu.policy")

SETS_DIR = "policy-sets"
#: Pack sets kept under ``<data dir>/policy-sets`` (the newest by modification time).
KEEP_SETS = 4


class Holder(Protocol):
    """What the pack set is swapped in (the API's ``Services``): its database, settings and the
    pack set in force."""

    db: Database
    settings: Settings
    policy: PolicySet
    policy_watch: PolicyWatch | None

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class Recorded:
    generation: int
    digest: str


def recorded(session: Session) -> Recorded | None:
    """The generation and digest of the recorded pack set (None: nothing recorded yet)."""
    row = session.execute(
        select(PolicyState.generation, PolicyState.digest).where(PolicyState.id == 1)
    ).first()  # not the files: every process reads this every few seconds
    if row is None or not row.generation:
        return None
    return Recorded(int(row.generation), row.digest)


def materialize(files: dict[str, bytes], data_dir: Path) -> Path:
    """Write ``files`` to ``<data_dir>/policy-sets/<digest>`` (once; atomically) and return it."""
    root = data_dir / SETS_DIR
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        for rel, data in files.items():
            path = (tmp / rel).resolve()
            if tmp.resolve() not in path.parents:
                raise PackError(tmp / rel, 0, "bad_pack_path", "a recorded path leaves its folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        final = root / pack_set_digest(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep=final)
    return final


def _prune(root: Path, keep: Path) -> None:
    sets = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in [p for p in sets if p != keep][KEEP_SETS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def load_files(files: dict[str, bytes], data_dir: Path) -> PolicySet:
    """Load a pack set from its files (through their copy under the data directory)."""
    return load_policy_set(materialize(files, data_dir))


def record(
    session: Session, policy: PolicySet, files: dict[str, bytes], *, actor: str, now: datetime
) -> int:
    """Record ``policy`` (loaded from ``files``) as the pack set of every process; returns the
    new generation. Takes the row's lock, so two reloads at once get two generations."""
    encoded = json.dumps(
        {rel: base64.b64encode(data).decode("ascii") for rel, data in sorted(files.items())}
    )
    row = session.get(PolicyState, 1, with_for_update=True)
    if row is None:
        row = PolicyState(id=1, generation=0)
        session.add(row)
    old = row.digest or None
    row.generation = int(row.generation) + 1
    row.digest, row.files, row.recorded_at, row.actor = policy.digest, encoded, now, actor[:200]
    audit.append(
        session,
        at=now,
        actor=actor,
        action="policy.reloaded",
        subject="policy",
        details={"from": old, "to": policy.digest, "generation": row.generation},
    )
    return row.generation


def reload_from_disk(
    db: Database,
    policies_dir: Path,
    data_dir: Path,
    *,
    actor: str,
    now: datetime,
    unless_recorded: bool = False,
) -> tuple[PolicySet, int | None]:
    """Load the packs of ``policies_dir`` and record them; raises :class:`PackError` (nothing
    recorded) when they do not load. ``unless_recorded``: record only if the recorded digest
    differs (``serve`` at start). Returns the packs and the generation recorded (or None)."""
    files = read_pack_files(policies_dir)
    policy = load_files(files, data_dir)
    with db.write() as session:
        current = recorded(session)
        if unless_recorded and current is not None and current.digest == policy.digest:
            return policy, None
        return policy, record(session, policy, files, actor=actor, now=now)


def reload_policy(svc: Holder, actor: str) -> PolicySet:
    """Load the packs from disk, record them for every process and judge by them in this one;
    raises :class:`PackError` (nothing changes) when they do not load."""
    fresh, generation = reload_from_disk(
        svc.db, svc.settings.policies_dir, svc.settings.data_dir, actor=actor, now=svc.now()
    )
    if svc.policy_watch is not None:
        svc.policy_watch.adopted(generation, fresh)
    else:
        svc.policy = fresh
    return fresh


def _decode(text: str) -> dict[str, bytes]:
    try:
        raw = json.loads(text)
        return {str(rel): base64.b64decode(data, validate=True) for rel, data in raw.items()}
    except (ValueError, AttributeError, binascii.Error) as exc:
        raise PackError("policy_state", 0, "bad_recorded_packs", f"cannot decode: {exc}") from exc


class PolicyWatch:
    """This process's view of the recorded pack set; :meth:`check` follows it."""

    def __init__(self, svc: Holder) -> None:
        self.svc = svc
        self.generation: int | None = None
        self.recorded_digest: str | None = None
        #: Why the recorded pack set could not be loaded here (None when it was, or none is).
        self.error: str | None = None
        self._failed: int | None = None
        self._lock = threading.Lock()

    def adopted(self, generation: int | None, policy: PolicySet) -> None:
        """This process loaded and recorded ``policy`` itself (a reload it answered)."""
        with self._lock:
            self.svc.policy = policy
            if generation is not None:
                self.generation, self.recorded_digest = generation, policy.digest
            self.error = self._failed = None

    def check(self) -> bool:
        """Load the recorded pack set if it is not the one in force; True when it swapped."""
        with self._lock:
            with self.svc.db.read() as session:
                current = recorded(session)
                if current is None:
                    return False
                self.generation, self.recorded_digest = current.generation, current.digest
                if current.digest == self.svc.policy.digest:
                    self.error = self._failed = None
                    return False
                if self._failed == current.generation:
                    return False
                text = session.scalar(select(PolicyState.files).where(PolicyState.id == 1))
            try:
                fresh = load_files(_decode(text or "{}"), self.svc.settings.data_dir)
                if fresh.digest != current.digest:
                    raise PackError(
                        "policy_state",
                        0,
                        "digest_mismatch",
                        f"the recorded files load as {fresh.digest}, not {current.digest}",
                    )
            except (PackError, OSError) as exc:
                self._failed, self.error = current.generation, str(exc)
                log.error(
                    "policy_reload_failed: generation %d (digest %s) did not load in this "
                    "process, which keeps judging by %s: %s",
                    current.generation,
                    current.digest,
                    self.svc.policy.digest,
                    exc,
                )
                return False
            old, self.svc.policy = self.svc.policy.digest, fresh
            self.error = self._failed = None
            log.info(
                "policy reloaded: generation %d, %s -> %s", current.generation, old, fresh.digest
            )
            return True

    def run(self, stop: threading.Event) -> None:
        """Check every ``policy_check_interval_s`` seconds until ``stop`` is set."""
        interval = self.svc.settings.policy_check_interval_s
        while not stop.wait(interval):
            try:
                self.check()
            except Exception:  # a database outage: the next round tries again
                log.exception("policy state check failed")

    def state(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "recorded_digest": self.recorded_digest,
            "check_interval_s": self.svc.settings.policy_check_interval_s,
            "error": self.error,
        }


def watch_thread(watch: PolicyWatch, stop: threading.Event) -> threading.Thread | None:
    """Start the checking thread (None when the interval is 0: only start-up follows)."""
    if watch.svc.settings.policy_check_interval_s <= 0:
        return None
    thread = threading.Thread(target=watch.run, args=(stop,), name="veu-policy", daemon=True)
    thread.start()
    return thread
