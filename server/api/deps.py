"""What every route needs, built once per app: settings, database, verifier key, metrics, the
ingest pipeline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request

from server.appraise import VerifyConfig
from server.compliance.settle import ComplianceConfig, settle_pending
from server.config import Settings
from server.ingest import Ingest
from server.ingest.metrics import Metrics
from server.log.integrate import Integrator, Log
from server.log.note import load_log_key
from server.policy import PolicySet
from server.results import VerifierKey
from server.store.db import Database

__all__ = ["Metrics", "Services", "SvcDep", "services"]

if TYPE_CHECKING:
    from server.compliance.policy_sync import PolicyWatch


@dataclass
class Services:
    settings: Settings
    db: Database
    key: VerifierKey
    verify: VerifyConfig
    metrics: Metrics
    policy: PolicySet
    compliance: ComplianceConfig
    #: The ingest pipeline of this process (built from the fields above).
    ingest: Ingest = field(init=False, repr=False)
    #: Follows the recorded pack set (server/compliance/policy_sync.py); set by create_app.
    policy_watch: PolicyWatch | None = field(default=None, init=False, repr=False)
    #: The transparency log (its key loaded, created 0600 on first use).
    log: Log = field(init=False, repr=False)
    integrator: Integrator | None = field(default=None, init=False, repr=False)
    _limiter: tuple[asyncio.AbstractEventLoop, CapacityLimiter] | None = field(
        default=None, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.ingest = Ingest(
            self.db,
            self.key,
            policy=lambda: self.policy,
            verifier_id=self.settings.verifier_id,
            verify=self.verify,
            metrics=self.metrics,
            batch_max=self.settings.ingest_batch_max,
            batch_wait_s=self.settings.ingest_batch_wait_ms / 1000,
            now=self.now,
        )
        self.log = Log(
            self.db,
            load_log_key(self.settings.log_key_path, self.settings.effective_log_origin),
            now=self.now,
        )

    def start_integrator(self) -> None:
        """Integrate the log in the background, every ``log_interval_ms`` (0: never here)."""
        if self.settings.log_interval_ms > 0 and self.integrator is None:
            self.integrator = Integrator(self.log, self.settings.log_interval_ms / 1000)
            self.integrator.start()

    def ingest_limiter(self) -> CapacityLimiter:
        """How many snapshots this process appraises at once (``ingest_concurrency``); one
        limiter per event loop (a test process may run several apps, each on its own loop)."""
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._limiter[0] is not loop:
            self._limiter = (loop, CapacityLimiter(self.settings.effective_ingest_concurrency))
        return self._limiter[1]

    def close(self) -> None:
        """Stop the group committer once it has written what is queued, then the log's
        integrator (after one last round)."""
        self.ingest.close()
        if self.integrator is not None:
            self.integrator.stop()
            self.integrator = None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def settle(self, *, skip_locked: bool = False) -> int:
        """Judge the sites with newly accepted snapshots now (see server.compliance.settle)."""
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
