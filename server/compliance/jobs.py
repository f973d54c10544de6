"""The verifier's background judgement: settle sites with new evidence about once a second, and
re-judge every site now and then (hosts going stale, shipped chips never seen).

Every worker runs it; the work is idempotent and each site is its own short transaction, so
several workers running it at once only repeat work (settling skips sites another worker holds).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select

from server.compliance.settle import ComplianceConfig, refresh_site, settle_pending
from server.policy import PolicySet
from server.store.db import Database
from server.store.models import Site

log = logging.getLogger("veu.compliance")


def refresh_all_sites(
    db: Database, policy: PolicySet, config: ComplianceConfig, now: Callable[[], datetime]
) -> int:
    """Re-judge every site without new evidence; answers how many."""
    with db.read() as session:
        site_ids = list(session.scalars(select(Site.id).order_by(Site.id)))
    for site_id in site_ids:
        with db.write() as session:
            refresh_site(session, policy, site_id, now(), config)
    return len(site_ids)


def judge_in_background(
    db: Database,
    policy: Callable[[], PolicySet],
    config: ComplianceConfig,
    now: Callable[[], datetime],
    *,
    settle_interval_s: float,
    refresh_interval_s: float,
    stop: threading.Event,
) -> None:
    """Until ``stop``: settle every ``settle_interval_s`` and re-judge every site every
    ``refresh_interval_s`` seconds (either 0: off). ``policy`` is asked each round (a reload
    takes effect at the next one)."""
    tick = min(t for t in (settle_interval_s, refresh_interval_s) if t > 0)
    next_refresh = time.monotonic() + refresh_interval_s
    while not stop.wait(tick):
        try:
            if refresh_interval_s > 0 and time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + refresh_interval_s
                refresh_all_sites(db, policy(), config, now)
            elif settle_interval_s > 0:
                settle_pending(db, policy(), config, now, skip_locked=True)
        except Exception:  # keep the task alive; the next round tries again
            log.exception("background site judgement failed")
