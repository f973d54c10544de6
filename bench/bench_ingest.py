#!/usr/bin/env python3
"""Ingest benchmark (issue 3, "Speed"): signed 8-GPU snapshots over HTTP into a real verifier.

In one run:

1. The floor: the same envelopes verified in a tight loop in one process (strict JSON parse,
   JCS check, schema, Ed25519) with :func:`contract.open_envelope` — what ingest would cost
   with no HTTP and no database.
2. HTTP ingest against a real ``veu-server serve`` subprocess on SQLite (one worker), and on
   PostgreSQL (``--pg-url`` or ``VEU_TEST_PG_URL``; ``--workers`` processes).

Load: ``--hosts`` enrolled hosts, each sending ``--per-host`` chained snapshots in order, over
``--concurrency`` keep-alive connections. The load generator is :mod:`bench.loadgen` (requests
pre-encoded, one asyncio protocol per connection, ~0.3 ms of CPU a request) unless ``--client
httpx`` (the product's client, ~1.2-1.8 ms a request). Every envelope is built and signed before
the clock starts. Reported: snapshots/s, p50/p99 latency, errors, and ingest as a share of
the floor. The load generator runs on the same cores as the server (and PostgreSQL): its CPU is
reported, and it is part of why the figures are what they are.

``--smoke`` runs a tiny load on SQLite only (seconds) and fails on any error, for CI.
``--write`` replaces the "## Ingest (issue 3)" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.fleet import (  # noqa: E402
    cpu_by_pid,
    cpu_since,
    pg_create,
    pg_drop,
    postgres_pids,
    tree_pids,
)
from contract import open_envelope  # noqa: E402
from contract.keys import public_from_raw, raw_public  # noqa: E402
from tests.server.builders import HostKit  # noqa: E402
from tests.server.conftest import (  # noqa: E402
    LiveServer,
    free_port,
    make_fleet,
    start_server,
    stop_server,
)

SECTION = "## Ingest (issue 3)"


@dataclass
class Run:
    label: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int
    client_cpu: float
    #: CPU seconds of the server's processes (supervisor and workers) and of PostgreSQL's
    #: during the load (None: not measured, e.g. the floor, or SQLite's database).
    server_cpu: float | None = None
    db_cpu: float | None = None

    def per_snapshot_ms(self, cpu: float | None) -> str:
        return "n/a" if cpu is None or not self.count else f"{cpu / self.count * 1000:.2f}"

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> str:
        if not self.latencies:
            return "n/a"
        ordered = sorted(self.latencies)
        return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


def build_load(site_id: str, hosts: int, per_host: int) -> tuple[list[HostKit], list[list[bytes]]]:
    kits = [HostKit(site_id, index=i) for i in range(hosts)]
    start = datetime.now(UTC) - timedelta(seconds=60)
    streams = []
    for kit in kits:
        stream = []
        for j in range(per_host):
            stamp = (start + timedelta(milliseconds=j)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            stream.append(kit.next_envelope(collected_at=stamp))
        streams.append(stream)
    return kits, streams


class CpuMeter:
    """CPU spent by the server's process tree and by PostgreSQL between start() and stop()
    (PostgreSQL backends opened during the load count from zero)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def start(self) -> None:
        self._server = cpu_by_pid(tree_pids(self.server_pid))
        self._db = cpu_by_pid(postgres_pids())

    def stop(self) -> tuple[float, float]:
        return (
            cpu_since(self._server, tree_pids(self.server_pid)),
            cpu_since(self._db, postgres_pids()),
        )


def in_process(
    label: str,
    data_dir: Path,
    database_url: str | None,
    hosts: int,
    per_host: int,
    batch: int,
    settle_every: int = 256,
) -> Run:
    """The verifier's own work per snapshot, with no HTTP, no threads and no load generator: the
    same site and envelopes as :func:`http_run`, each appraised by the ingest code
    (:meth:`server.ingest.Ingest.appraise`) and committed ``batch`` at a time by its
    group-commit write (:meth:`~server.ingest.Ingest.commit`), and the site settled
    every ``settle_every`` snapshots (a server settles once a second, which at the rates seen
    here is a few hundred snapshots; counted, not timed, so a slower run or a profiler does not
    settle more often), one after the other in this process.

    Its CPU per snapshot (this process and PostgreSQL's) bounds what any serving of this code
    can reach on this machine: N cores cannot ingest more than N / (that CPU + the load
    generator's) snapshots a second, however the requests reach it.
    """
    from fastapi.testclient import TestClient

    from server.api.app import create_app
    from server.config import Settings
    from server.ingest import Outcome, Pending
    from server.store import repo

    app = create_app(Settings(data_dir=data_dir, database_url=database_url))
    svc = app.state.veu
    now = datetime.now(UTC)
    with svc.db.write() as session:  # what make_fleet does through the CLI
        repo.add_org(session, "Acme Compute", "universal", "US", None, now)
        site = repo.add_site(session, "Acme Compute", "Frankfurt-1", "DE", 5e6, None, False, now)
        site_id = site.id
        tokens = [
            repo.create_enroll_token(session, site_id, timedelta(hours=1), now)[0]
            for _ in range(hosts)
        ]
    kits, streams = build_load(site_id, hosts, per_host)
    with TestClient(app) as client:
        for kit, token in zip(kits, tokens, strict=True):
            answer = client.post("/v1/enroll", json=kit.enroll_body(token))
            if answer.status_code != 200:
                raise SystemExit(f"enroll failed: {answer.status_code} {answer.text[:200]}")
    order = [body for bodies in zip(*streams, strict=True) for body in bodies]  # in chain order
    errors = 0
    db_before = cpu_by_pid(postgres_pids()) if database_url else {}
    cpu0 = time.process_time()
    begin = time.perf_counter()
    unsettled = 0
    for start in range(0, len(order), batch):
        items = [svc.ingest.appraise(body) for body in order[start : start + batch]]
        pending = [item for item in items if isinstance(item, Pending)]
        errors += len(items) - len(pending)
        outcomes = svc.ingest.commit(pending)
        errors += sum(not isinstance(o, Outcome) for o in outcomes)
        unsettled += len(items)
        if unsettled >= settle_every:
            svc.settle()
            unsettled = 0
    svc.settle()
    seconds = time.perf_counter() - begin
    cpu = time.process_time() - cpu0
    db_cpu = cpu_since(db_before, postgres_pids()) if database_url else None
    svc.db.dispose()
    return Run(label, len(order), seconds, [], errors, 0.0, cpu, db_cpu)  # no latency: no requests


def floor(
    kits: list[HostKit], streams: list[list[bytes]], seconds: float = 3.0, when: str = ""
) -> Run:
    keys = {k.key_id: public_from_raw(raw_public(k.key.public_key())) for k in kits}
    flat = [e for s in streams for e in s]
    latencies: list[float] = []
    count = 0
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds or count < len(flat):
        data = flat[count % len(flat)]
        t0 = time.perf_counter()
        open_envelope(data, keys)
        latencies.append(time.perf_counter() - t0)
        count += 1
    label = "floor: open_envelope in one process" + (f", {when}" if when else "")
    return Run(label, count, time.perf_counter() - begin, latencies, 0, 0.0)


async def _drive(
    url: str, streams: list[list[bytes]], concurrency: int
) -> tuple[int, float, list[float], int, list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    groups = [streams[i::concurrency] for i in range(concurrency)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker(group: list[list[bytes]]) -> None:
            for body in loadgen.in_order(group):
                t0 = time.perf_counter()
                try:
                    response = await client.post("/v1/snapshots", content=body, headers=headers)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:120]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - t0)

        begin = time.perf_counter()
        await asyncio.gather(*(worker(g) for g in groups if g))
        elapsed = time.perf_counter() - begin
    return sum(len(s) for s in streams), elapsed, latencies, len(errors), errors[:5]


def http_run(
    label: str,
    server: LiveServer,
    hosts: int,
    per_host: int,
    concurrency: int,
    client: str = "lean",
) -> Run:
    fleet = make_fleet(server)
    kits, streams = build_load(fleet.site_id, hosts, per_host)
    for kit in kits:
        fleet.enroll(kit)
    # Encoded before the clock starts, like the envelopes themselves.
    requests = [
        [loadgen.encode_post(server.url, "/v1/snapshots", body) for body in stream]
        for stream in streams
    ]
    meter = CpuMeter(server.process.pid)
    meter.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if client == "httpx":
        count, seconds, latencies, errors, samples = asyncio.run(
            _drive(server.url, streams, concurrency)
        )
    else:
        outcome = loadgen.run(server.url, requests, concurrency)
        count, seconds, latencies = outcome.count, outcome.seconds, outcome.latencies
        errors, samples = len(outcome.errors), outcome.errors[:5]
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu, pg_cpu = meter.stop()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    for sample in samples:
        print(f"  error sample: {sample}", file=sys.stderr)
    # SQLite runs inside the server's processes: no database CPU of its own.
    db_cpu = None if server.database_url.startswith("sqlite") else pg_cpu
    return Run(label, count, seconds, latencies, errors, cpu, server_cpu, db_cpu)


def bound(http: Run, local: Run, cores: int) -> float:
    """The most snapshots a second ``cores`` could ingest if serving added nothing to the
    in-process work: cores / (the verifier's and the database's CPU per snapshot in process +
    the load generator's CPU per request in the HTTP run)."""
    per = ((local.server_cpu or 0.0) + (local.db_cpu or 0.0)) / max(local.count, 1)
    per += http.client_cpu / max(http.count, 1)
    return cores / per if per > 0 else 0.0


#: One database's runs: (its name, HTTP ingest, the same load in process).
Pair = tuple[str, Run, Run]


def markdown(pairs: list[Pair], floors: list[Run], args: argparse.Namespace) -> str:
    load1, load5, load15 = os.getloadavg()
    lines = [
        SECTION,
        "",
        "`.venv/bin/python bench/bench_ingest.py` (`--smoke` in CI via",
        "`tests/bench/test_bench_ingest_smoke.py`). Realistic 8-GPU H100 snapshots (8 "
        "accelerators,",
        "4 weight files, about 9 KB per envelope), built and signed before the clock starts; each",
        f"host sends its chain in order. {args.hosts} hosts x {args.per_host} snapshots over "
        f"{args.concurrency} keep-alive connections",
        f"({'bench/loadgen.py' if args.client == 'lean' else 'asyncio + httpx'}), from a load "
        "generator on the same cores as the server and PostgreSQL.",
        "",
        f"### Latest run ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}; load average before the run {load1:.2f}/{load5:.2f}/"
        f"{load15:.2f} (shared with other engineers' runs)",
        "",
        "| run | snapshots | snapshots/s | p50 ms | p99 ms | errors | share of floor | "
        "server CPU ms/snapshot | PostgreSQL CPU ms/snapshot | load-gen CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    # The box's speed drifts over minutes: the floor is measured before and after the runs, and
    # shares are of their mean.
    reference = sum(f.rate for f in floors) / len(floors)
    for run in [*floors, *(run for _, http, local in pairs for run in (http, local))]:
        share = run.rate / reference * 100 if reference else 0
        lines.append(
            f"| {run.label} | {run.count} | {run.rate:,.0f} | {run.pct(0.5)} | "
            f"{run.pct(0.99)} | {run.errors} | {share:.0f}% | "
            f"{run.per_snapshot_ms(run.server_cpu)} | {run.per_snapshot_ms(run.db_cpu)} | "
            f"{run.client_cpu:.1f} |"
        )
    cores = os.cpu_count() or 1
    if pairs:
        lines += ["", f"Bound from the in-process runs on these {cores} cores (see `in_process`):"]
    for database, http, local in pairs:
        ceiling = bound(http, local, cores)
        if not ceiling:
            lines.append(f"- {database}: no CPU measured")
            continue
        parts = [f"{local.per_snapshot_ms(local.server_cpu)} ms verifier"]
        if local.db_cpu is not None:
            parts.append(f"{local.per_snapshot_ms(local.db_cpu)} ms PostgreSQL")
        parts.append(f"{http.per_snapshot_ms(http.client_cpu)} ms load generator")
        share = ceiling / reference * 100 if reference else 0
        lines.append(
            f"- {database}: {cores} / ({' + '.join(parts)}) = **{ceiling:,.0f} snapshots/s at "
            f"most** ({share:.0f}% of the floor); measured over HTTP: {http.rate:,.0f}/s "
            f"({http.rate / ceiling * 100:.0f}% of that bound)"
        )
    lines += [
        "",
        "Reading (2-core box; the issue's targets are 1,000 snapshots/s with p99 < 100 ms on",
        "PostgreSQL, and ingest at 25% of the floor). The floor is appraisal alone; ingest adds",
        "host judgement (CEL over every accelerator and weight file), the signed result, one",
        "lookup and one write transaction (snapshot, chain head, nonce, inventory when it",
        "changed, host state and findings, audit row; `synchronous=FULL` on SQLite), and HTTP;",
        "the load generator and PostgreSQL run on the same two cores. The in-process runs do",
        "the same work with the same code, one snapshot after the other, without HTTP, threads",
        "or a load generator: their CPU per snapshot is what the verifier's work itself costs,",
        "and the bound says how far any serving of that work could go here. See the history",
        "below for where the time goes and what changed.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, section: str = SECTION) -> None:
    """Put this run first in ``section`` of bench/RESULTS.md: the section's heading and intro
    are replaced, and every earlier run below them (its ``###`` subsections) is kept."""
    path = REPO / "bench" / "RESULTS.md"
    current = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(current)
    if found is None:
        path.write_text(text + "\n" + current)
        return
    section = found.group(0)
    earlier = re.search(r"^### ", section, re.M)
    kept = section[earlier.start() :] if earlier is not None else ""
    path.write_text(current[: found.start()] + text + "\n" + kept + current[found.end() :])


@contextmanager
def fresh_database(pg_url: str | None, data_dir: Path) -> Iterator[str]:
    """A new database's URL: a SQLite file in ``data_dir``, or (``pg_url``: its server's admin
    URL) a new PostgreSQL database, dropped afterwards."""
    if pg_url is None:
        yield f"sqlite:///{data_dir / 'veu.sqlite3'}"
        return
    url, name = pg_create(pg_url)
    try:
        yield url
    finally:
        pg_drop(pg_url, name)


def measure(args: argparse.Namespace, tmp: Path, pg_url: str | None) -> Pair:
    """One database (SQLite, or PostgreSQL at ``pg_url``): HTTP ingest against a real ``serve``
    (``--workers`` on PostgreSQL), then the same load in process, each on a fresh database."""
    database = "PostgreSQL" if pg_url else "SQLite"
    workers = args.workers if pg_url else 1
    with fresh_database(pg_url, tmp / "http") as url:
        server = start_server(tmp / "http", url, *(["--workers", str(workers)] if pg_url else []))
        try:
            http = http_run(
                f"HTTP ingest, {database}, {workers} worker{'s' if workers > 1 else ''}",
                server,
                args.hosts,
                args.per_host,
                args.concurrency,
                args.client,
            )
        finally:
            stop_server(server)
    with fresh_database(pg_url, tmp / "local") as url:
        local = in_process(
            f"in process, no HTTP, {database}",
            tmp / "local",
            url if pg_url else None,  # None: the server's own default, SQLite in the data dir
            args.hosts,
            args.per_host,
            args.concurrency,
        )
    return database, http, local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="load generator: bench/loadgen.py (default) or httpx",
    )
    parser.add_argument("--workers", type=int, default=2, help="server workers on PostgreSQL")
    parser.add_argument("--pg-url", default=os.environ.get("VEU_TEST_PG_URL"))
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hosts, args.per_host, args.concurrency, args.pg_url = 4, 5, 4, None

    floor_seconds = 0.5 if args.smoke else 3.0
    kits, streams = build_load("site_floor", min(args.hosts, 16), min(args.per_host, 10))
    floors = [floor(kits, streams, floor_seconds, "before the runs")]
    pairs: list[Pair] = []
    with tempfile.TemporaryDirectory(prefix="veu-bench-") as tmp:
        if not args.no_sqlite:
            pairs.append(measure(args, Path(tmp) / "sqlite", None))
        if args.pg_url:
            pairs.append(measure(args, Path(tmp) / "pg", args.pg_url))
    floors.append(floor(kits, streams, floor_seconds, "after the runs"))
    text = markdown(pairs, floors, args)
    print(text)
    if args.write and not args.smoke:
        write_section(text)
    failed = sum(http.errors + local.errors for _, http, local in pairs)
    if failed:
        print(f"{failed} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _ = free_port
    sys.exit(main())
