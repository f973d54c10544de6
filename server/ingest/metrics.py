"""The verifier's Prometheus registry and the ingest pipeline's own counters.

One registry per app (several apps in one test process must not collide); the compliance
gauges of ``/metrics`` register into the same registry (server/api/dashboard/metrics.py).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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
