"""Policy evaluation cost (issue 4): per-snapshot host judgement, and site/org update after one
new snapshot at sites of 1,000, 10,000 and 100,000 GPUs (must stay flat: aggregation is
incremental); and (issue 22) the per-snapshot judgement by every shipped pack against the
2025 pack alone, in the same run (target: within 2x). Run:
``.venv/bin/python bench/bench_policy.py [--smoke]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract import SnapshotV1  # noqa: E402
from server.policy import (  # noqa: E402
    HostContext,
    ModelRecord,
    ModelRegistry,
    OrgAggregate,
    OrgFacts,
    SiteAggregate,
    SiteFacts,
    load_policy_set,
)

ON = date(2026, 2, 1)
#: A day on which every shipped pack is active (the Chip Security Act pack from 2026-03-26).
ON_ALL = date(2026, 12, 1)


def make_snapshot(host: int, gpus: int = 8, files: int = 100, *, fresh: bool = False) -> SnapshotV1:
    accs = [
        {"model": "NVIDIA H100 80GB HBM3", "pci_vendor_id": "0x10de", "pci_device_id": "0x2330",
         "pci_bus_id": f"0000:{i + 1:02x}:00.0", "uuid": f"GPU-{host}-{i}", "source": "nvml"}
        for i in range(gpus)
    ]  # fmt: skip
    wfiles = [
        {"path": f"/m/{i}.safetensors", "size": 10_000 + i, "mtime": "2026-01-01T00:00:00Z",
         "mode": "0640", "uid": 0, "gid": 0, "format": "safetensors",
         "sha256": f"{i:032x}{host:032x}" if fresh else f"{i:064x}"}
        for i in range(files)
    ]  # fmt: skip
    storage = [{"root": "/m", "encryption": {"status": "encrypted"}, "file_count": files,
                "total_bytes": 0, "files": wfiles}] if files else []  # fmt: skip
    return SnapshotV1.model_validate({
        "agent": {"key_id": "3" * 64, "version": "bench"}, "site_id": "s", "host": {}, "seq": 1,
        "prev": None, "nonce": None, "collected_at": "2026-01-01T00:00:00Z",
        "accelerators": accs, "storage": storage, "posture": {}, "errors": [],
    })  # fmt: skip


def _one_snapshot(
    policy: Any,
    site: SiteAggregate,
    org: OrgAggregate,
    state: dict[str, Any],
    snap: SnapshotV1,
    hosts: int,
) -> None:
    """What ingest does after accepting one snapshot: O(chip models), never a rescan."""
    new = policy.contribution(snap, ON, country="DE")
    site.apply(state["old"], new)
    org.apply(state["old"], new)
    state["old"] = new
    policy.evaluate_site(SiteFacts("s", "DE", 10**12, site, host_count=hosts), ON)
    policy.evaluate_org(OrgFacts("o", "universal", "US", "US", org), ON)


def judge_snapshot(policy: Any, snap: SnapshotV1, ctx: HostContext, hosts: int) -> None:
    """Everything judged when one snapshot arrives: host, contribution, site and organization."""
    policy.evaluate_host(snap, ctx, ON_ALL)
    site = SiteAggregate()
    new = policy.contribution(snap, ON_ALL, country="DE")
    site.apply(None, new)
    org = OrgAggregate()
    org.apply(None, new)
    policy.evaluate_site(SiteFacts("s", "DE", 10**12, site, host_count=hosts), ON_ALL)
    policy.evaluate_org(OrgFacts("o", "universal", "US", "US", org), ON_ALL)


def paired(first: Any, second: Any, n: int) -> tuple[float, float]:
    """Median µs per call of each, called alternately n times (after one warm-up each)."""
    first()
    second()
    a, b = [], []
    for _ in range(n):
        t = time.perf_counter()
        first()
        a.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        second()
        b.append((time.perf_counter() - t) * 1e6)
    return statistics.median(a), statistics.median(b)


def timed(fn: Any, n: int) -> float:
    """Median µs per call over n calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    args_p = argparse.ArgumentParser()
    args_p.add_argument("--smoke", action="store_true")
    args = args_p.parse_args(argv)
    n = 5 if args.smoke else 200
    policy = load_policy_set(ROOT / "policies")
    # Half the files are registered (10 controlled models), half unclassified: both paths run.
    registry = ModelRegistry.of(
        ModelRecord(f"m{k}", 3e26, digests=tuple(f"{i:064x}" for i in range(k, 50, 10)))
        for k in range(10)
    )
    ctx = HostContext("s", "DE", site_may_store_controlled_weights=True, models=registry)
    snap = make_snapshot(0)
    host_us = timed(lambda: policy.evaluate_host(snap, ctx, ON), n)
    findings = len(policy.evaluate_host(snap, ctx, ON))
    print(f"host evaluation, 8 GPUs + 100 weight files: {host_us:,.0f} µs/snapshot", end="")
    print(f" ({findings} findings)")

    results: dict[int, float] = {}
    for gpus in (1_000, 10_000, 100_000):
        site, org = SiteAggregate(), OrgAggregate()
        hosts = gpus // 8
        base = policy.contribution(make_snapshot(1, files=0), ON, country="DE")
        for _ in range(hosts):  # setup: the site as the store would have it; not timed
            site.apply(None, base)
            org.apply(None, base)
        org.apply(
            None, policy.contribution(make_snapshot(2, gpus=gpus // 8, files=0), ON, country="US")
        )
        new_snap = make_snapshot(1, files=0)
        state: dict[str, Any] = {"old": base}

        results[gpus] = timed(
            functools.partial(_one_snapshot, policy, site, org, state, new_snap, hosts), n
        )
        assert site.accelerators == gpus
        print(f"site of {gpus:>7,} GPUs: contribution + site/org apply + evaluate_site/org: "
              f"{results[gpus]:,.0f} µs/snapshot")  # fmt: skip
    ratio = max(results.values()) / min(results.values())
    print(f"flatness (max/min over sizes): {ratio:.2f}x (target within 2x)")

    one = load_policy_set(ROOT / "policies", only=["ai-diffusion-2025"])
    every = policy
    label = f"{len(every.packs)} packs"
    print(f"{label}: {', '.join(p.id for p in every.packs)}")
    # Interleaved, one call of each per round, so that both see the same machine load.
    warm = paired(
        lambda: judge_snapshot(one, snap, ctx, 1), lambda: judge_snapshot(every, snap, ctx, 1), n
    )
    found = (len(one.evaluate_host(snap, ctx, ON_ALL)), len(every.evaluate_host(snap, ctx, ON_ALL)))
    print(f"judgement per snapshot, same facts as the last: 1 pack {warm[0]:,.0f} µs "
          f"({found[0]} host findings), {label} {warm[1]:,.0f} µs ({found[1]} host findings): "
          f"{warm[1] / warm[0]:.2f}x (target within 2x)")  # fmt: skip
    # Facts never seen before (new GPUs, new weight digests every snapshot): no memo hits.
    fresh_one = iter([make_snapshot(1000 + k, fresh=True) for k in range(n + 1)])
    fresh_all = iter([make_snapshot(1000 + k, fresh=True) for k in range(n + 1)])
    cold = paired(
        lambda: judge_snapshot(one, next(fresh_one), ctx, 1),
        lambda: judge_snapshot(every, next(fresh_all), ctx, 1),
        n,
    )
    print(f"judgement per snapshot, new facts: 1 pack {cold[0]:,.0f} µs, {label} "
          f"{cold[1]:,.0f} µs: {cold[1] / cold[0]:.2f}x (target within 2x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
