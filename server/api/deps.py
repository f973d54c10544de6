"""What every route needs, built once per app: settings, database, verifier key, metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from anyio import CapacityLimiter
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.config import Settings
from server.db import Database
from server.groupcommit import GroupCommitter
from server.policy import PolicySet
from server.results import VerifierKey
from server.store.compliance import (
    ComplianceConfig,
    JudgementMemo,
    RegistryCache,
    settle_pending,
)
from server.verify import VerifyConfig

if TYPE_CHECKING:
    from server.policy_sync import PolicyWatch


class Metrics:
    """Per-app registry, so several apps in one test process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "veu_snapshots_accepted_total",
            "Snapshots accepted (new rows; duplicates not counted)",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "veu_snapshots_duplicate_total",
            "Snapshots already accepted, answered again idempotently",
            registry=self.registry,
        )
        self.rejected = Counter(
            "veu_snapshots_rejected_total",
            "Snapshots rejected, by stable code",
            ["code", "authenticated"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "veu_ingest_seconds",
            "Time from request body read to answer for POST /v1/snapshots",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            "veu_ingest_commit_batch_size",
            "Accepted snapshots committed per transaction (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_retries = Counter(
            "veu_ingest_batch_retries_total",
            "Group commits that failed as a whole (a race, a duplicate, a deadlock) and were "
            "retried one snapshot per transaction",
            registry=self.registry,
        )


@dataclass
class Services:
    settings: Settings
    db: Database
    key: VerifierKey
    verify: VerifyConfig
    metrics: Metrics
    policy: PolicySet
    compliance: ComplianceConfig
    #: Registered models by weight digest, kept per registry generation (ingest judgement).
    models: RegistryCache = field(default_factory=RegistryCache)
    #: Each host's last judgement, answered again while its inputs are unchanged (ingest).
    judgements: JudgementMemo = field(default_factory=JudgementMemo)
    #: Follows the recorded pack set (server/policy_sync.py); set by create_app.
    policy_watch: PolicyWatch | None = field(default=None, init=False, repr=False)
    _limiter: tuple[asyncio.AbstractEventLoop, CapacityLimiter] | None = field(
        default=None, init=False, repr=False
    )
    _committer: GroupCommitter[Any, Any] | None = field(default=None, init=False, repr=False)
    _committer_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def ingest_limiter(self) -> CapacityLimiter:
        """How many snapshots this process appraises at once (``ingest_concurrency``); one
        limiter per event loop (a test process may run several apps, each on its own loop)."""
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._limiter[0] is not loop:
            self._limiter = (loop, CapacityLimiter(self.settings.effective_ingest_concurrency))
        return self._limiter[1]

    def ingest_committer(
        self, write: Callable[[Sequence[Any]], Sequence[Any]]
    ) -> GroupCommitter[Any, Any]:
        """This process's group committer of accepted snapshots (built on first use with
        ``write``; see server/groupcommit.py)."""
        with self._committer_lock:
            if self._committer is None:
                self._committer = GroupCommitter(
                    write,
                    max_batch=self.settings.ingest_batch_max,
                    linger_s=self.settings.ingest_batch_wait_ms / 1000,
                    name="veu-ingest-commit",
                    on_batch=self.metrics.commit_batch.observe,
                )
            return self._committer

    def close(self) -> None:
        """Stop the group committer once it has written what is queued."""
        with self._committer_lock:
            if self._committer is not None:
                self._committer.close()
                self._committer = None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def settle(self, *, skip_locked: bool = False) -> int:
        """Judge the sites with newly accepted snapshots now (see server.store.compliance)."""
        return settle_pending(
            self.db, self.policy, self.compliance, self.now, skip_locked=skip_locked
        )


def services(request: Request) -> Services:
    svc = request.app.state.veu
    assert isinstance(svc, Services)
    return svc


async def _services_dependency(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in its threadpool, which cost
    every request a thread hop just to read ``app.state``."""
    return services(request)


SvcDep = Annotated[Services, Depends(_services_dependency)]
