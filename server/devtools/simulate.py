"""Fleet simulator: many hosts, real keys, real enrollment, realistic snapshot traffic over HTTP.

``veu-server simulate`` (and ``bench/fleet.py``, the same engine) creates N Ed25519 host keys,
enrolls each through the real API (``POST /v1/enroll``) and drives signed snapshot traffic into a
running verifier through a pool of keep-alive HTTP connections (asyncio + httpx), reporting
throughput, latency percentiles and errors.

Enrollment tokens are created **directly in the verifier's database** (``repo.create_enroll_token``
in one transaction, the same function ``veu-server enroll-token create`` calls): 10,000 CLI
invocations would take minutes. So the simulator needs the server's ``--data-dir`` /
``--database-url``. With no ``--site`` it creates an organization and a site there as well.

Traffic, per host (each host is driven by exactly one coroutine, so its chain stays in order):

- 8 NVIDIA H100 accelerators (realistic NVML facts, unique UUIDs and serials) and one encrypted
  weight root with 4 safetensors shards (about 9 KB per envelope);
- ``seq`` + 1 and ``prev`` = the digest of the host's last *acknowledged* envelope; a transport
  error resends the same bytes (delivery is idempotent by digest), as the agent's spool does;
- with probability ``--change-rate`` the inventory changes first (a board swapped: new UUID and
  serial; or a weight shard added or removed);
- with probability ``--challenge-rate`` the host first asks for a nonce (``POST /v1/challenges``,
  signed request) and binds the snapshot to it (an on-demand attestation).

Pacing: ``--rate`` snapshots/s for the whole fleet. Coroutine ``w`` of ``C`` owns hosts ``w::C``
and sends its ``k``-th snapshot at ``start + (k*C + w) / rate``; a coroutine that falls behind sends
at once (no requests are dropped) and the largest lag is reported. With N hosts at one snapshot per
host per minute the rate is N/60; ``--compression`` multiplies it (simulated minutes per wall
minute). Every loop is bounded by ``--count`` and ``--seconds`` and stops by itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import (
    Accelerator,
    AgentInfo,
    Encryption,
    HeaderFacts,
    HostInfo,
    Posture,
    SnapshotV1,
    Socket,
    StorageRoot,
    WeightFile,
    build_statement,
    canonical_bytes,
    envelope_digest,
    format_timestamp,
    sign_envelope,
)
from contract.keys import key_id, raw_public
from contract.reqsign import enroll_message, sign_request

JSON = {"Content-Type": "application/json"}
T = TypeVar("T")
BUSES = ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")


def shard_digest(i: int) -> str:
    """The digest of weight shard ``i`` (the same shards tests/server/builders.py uses)."""
    return hashlib.sha256(f"shard{i}".encode()).hexdigest()


def h100_board(bus_id: str, uuid: str, serial: str) -> Accelerator:
    """One NVIDIA H100 SXM as NVML reports it on an HGX host (the simulator's and tests' shape)."""
    return Accelerator(
        vendor="NVIDIA",
        model="NVIDIA H100 80GB HBM3",
        pci_vendor_id="0x10de",
        pci_device_id="0x2330",
        pci_class="0x030200",
        pci_bus_id=bus_id,
        uuid=uuid,
        serial=serial,
        board_part_number="692-2G520-0200-000",
        vbios_version="96.00.74.00.1C",
        driver_version="550.54.15",
        memory_mib=81559,
        architecture="Hopper",
        source="nvml",
    )


def _accelerator(host: int, slot: int, generation: int, key_id: str) -> Accelerator:
    """One board; UUID and serial derive from the host key, so they are unique fleet-wide."""
    tag = hashlib.sha256(f"{key_id}/{slot}/{generation}".encode()).hexdigest()
    return h100_board(
        f"0000:{BUSES[slot]}:00.0",
        f"GPU-{host:08x}-{slot:04x}-{generation:04x}-{tag[:12]}",
        f"1652{int(tag[12:24], 16) % 10**10:010d}",
    )


def _weights(shards: tuple[int, ...]) -> StorageRoot:
    files = [
        WeightFile(
            path=f"/srv/models/llama-3-70b/model-{i:05d}-of-00004.safetensors",
            size=4_900_000_000 + i,
            mtime="2026-01-10T08:00:00Z",
            mode="0640",
            uid=1000,
            gid=1000,
            owner="ml",
            sha256=shard_digest(i),
            format="safetensors",
            header=HeaderFacts(tensor_count=200, parameter_count=17_500_000_000, dtypes=["BF16"]),
        )
        for i in shards
    ]
    return StorageRoot(
        root="/srv/models",
        mount_point="/srv",
        device="/dev/mapper/models",
        filesystem="xfs",
        encryption=Encryption(
            status="encrypted", method="dm-crypt/LUKS2", determined_by="/sys/block/dm-0/dm/uuid"
        ),
        file_count=len(files),
        total_bytes=sum(f.size for f in files),
        files=files,
    )


_POSTURE = Posture(
    secure_boot=True,
    tpm_present=True,
    tpm_version="2.0",
    listening_sockets=[Socket(proto="tcp", address="0.0.0.0", port=22)],  # noqa: S104 (data)
)


@dataclass
class SimHost:
    """One simulated host: its key, its chain head (as acknowledged) and its inventory."""

    site_id: str
    index: int
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    prev: str | None = None
    generations: list[int] = field(default_factory=lambda: [0] * 8)
    shards: tuple[int, ...] = (1, 2, 3, 4)
    _kid: str = ""
    _accs: list[Accelerator] | None = None
    _root: StorageRoot | None = None
    _statement: dict[str, Any] | None = None

    @property
    def key_id(self) -> str:
        if not self._kid:
            self._kid = key_id(self.key.public_key())
        return self._kid

    @property
    def machine_id(self) -> str:
        return hashlib.sha256(self.key_id.encode()).hexdigest()[:32]

    def enroll_body(self, token: str) -> dict[str, Any]:
        return {
            "token": token,
            "public_key": base64.b64encode(raw_public(self.key.public_key())).decode(),
            "host": {"hostname": f"sim-{self.index:05d}", "machine_id": self.machine_id},
            "proof": base64.b64encode(self.key.sign(enroll_message(token, self.key_id))).decode(),
            "chain_head": None,
        }

    def change_inventory(self, rng: random.Random) -> str:
        """Swap one board (new UUID and serial) or add/remove a weight shard."""
        if rng.random() < 0.5:
            slot = rng.randrange(8)
            self.generations[slot] += 1
            self._accs = self._statement = None
            return "board swapped"
        self.shards = (1, 2, 3, 4) if len(self.shards) == 3 else (1, 2, 3)
        self._root = self._statement = None
        return "weights changed"

    def snapshot(self, nonce: str | None = None, collected_at: str | None = None) -> SnapshotV1:
        """The next link of the chain as the evidence model (the reference for :meth:`envelope`)."""
        if self._accs is None:
            self._accs = [
                _accelerator(self.index, s, g, self.key_id) for s, g in enumerate(self.generations)
            ]
        if self._root is None:
            self._root = _weights(self.shards)
        return SnapshotV1(
            agent=AgentInfo(key_id=self.key_id, version="0.1.0"),
            site_id=self.site_id,
            host=HostInfo(
                hostname=f"sim-{self.index:05d}",
                machine_id=self.machine_id,
                boot_id="b" * 32,
                os="Ubuntu 22.04.4 LTS",
                kernel="5.15.0-105-generic",
                arch="x86_64",
                uptime_s=86400,
            ),
            seq=self.seq + 1,
            prev=self.prev,
            nonce=nonce,
            collected_at=collected_at or format_timestamp(datetime.now(UTC)),
            accelerators=self._accs,
            storage=[self._root],
            posture=_POSTURE,
            errors=[],
        )

    def envelope(
        self, nonce: str | None = None, collected_at: str | None = None
    ) -> tuple[bytes, str]:
        """The next link of the chain (not yet acknowledged): bytes and digest.

        The load generator shares the verifier's cores, so it does not rebuild the evidence
        models for every snapshot: the in-toto statement of the current inventory is built once
        (through the models) and only the fields that change per snapshot are replaced before
        canonicalization — byte-identical to :meth:`snapshot` (tested).
        """
        if self._statement is None:
            self._statement = build_statement(self.snapshot())
        predicate = dict(self._statement["predicate"])
        predicate.update(
            seq=self.seq + 1,
            prev=self.prev,
            nonce=nonce,
            collected_at=collected_at or format_timestamp(datetime.now(UTC)),
        )
        payload = canonical_bytes({**self._statement, "predicate": predicate})
        env = sign_envelope(payload, self.key, self.key_id)
        return env.to_bytes(), envelope_digest(env)

    def acknowledged(self, digest: str) -> None:
        self.seq += 1
        self.prev = digest


@dataclass
class Report:
    """What a run measured. Latencies are per snapshot POST (a challenge is counted apart)."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: int = 0
    retries: int = 0
    changes: int = 0
    challenges: int = 0
    seconds: float = 0.0
    max_lag_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-quantile latency in milliseconds (nan with no samples)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text)

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "retries": self.retries,
            "inventory_changes": self.changes,
            "challenges": self.challenges,
            "seconds": round(self.seconds, 3),
            "snapshots_per_s": round(self.rate, 1),
            "p50_ms": round(self.pct(0.50), 2),
            "p95_ms": round(self.pct(0.95), 2),
            "p99_ms": round(self.pct(0.99), 2),
            "max_lag_s": round(self.max_lag_s, 3),
            "statuses": dict(sorted(self.statuses.items())),
            "error_samples": self.error_samples,
        }


# --------------------------------------------------------------------------- setup (database)


def make_site(database_url: str, *, authorized_tpp: float = 1e12) -> str:
    """An organization and a site directly in the verifier's database; returns the site id."""
    from server.store import repo
    from server.store.db import Database, make_engine

    now = datetime.now(UTC)
    engine = make_engine(database_url)
    try:
        with Database(engine).write() as s:
            suffix = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:8]
            org = repo.add_org(s, f"Sim Org {suffix}", "universal", "US", None, now)
            site = repo.add_site(
                s, org.id, f"Sim Site {suffix}", "DE", authorized_tpp, "VEU-SIM", False, now
            )
            return site.id
    finally:
        engine.dispose()


def make_tokens(database_url: str, site_id: str, count: int) -> list[str]:
    """``count`` single-use enrollment tokens, created in one transaction in the database."""
    from server.store import repo
    from server.store.db import Database, make_engine

    now = datetime.now(UTC)
    engine = make_engine(database_url)
    try:
        with Database(engine).write() as s:
            return [
                repo.create_enroll_token(s, site_id, timedelta(hours=2), now)[0]
                for _ in range(count)
            ]
    finally:
        engine.dispose()


async def enroll_all(
    url: str, hosts: list[SimHost], tokens: list[str], concurrency: int = 8
) -> Report:
    """Enroll every host through ``POST /v1/enroll``; any failure is an error in the report."""
    report = Report()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(group: list[tuple[SimHost, str]]) -> None:
            for host, token in group:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/enroll", json=host.enroll_body(token))
                    if r.status_code != 200:
                        report.error(f"enroll {r.status_code} {r.text[:160]}")
                except httpx.HTTPError as exc:
                    report.error(f"enroll {exc!r}")
                report.latencies.append(time.perf_counter() - t0)
                report.sent += 1

        pairs = list(zip(hosts, tokens, strict=True))
        begin = time.perf_counter()
        await asyncio.gather(*(one(pairs[i::concurrency]) for i in range(concurrency)))
        report.seconds = time.perf_counter() - begin
    report.accepted = report.sent - report.errors
    return report


# --------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    rate: float  # snapshots per second, whole fleet
    count: int  # stop after this many snapshots (bound)
    seconds: float  # stop after this many seconds (bound)
    concurrency: int = 8
    change_rate: float = 0.01
    challenge_rate: float = 0.005
    seed: int = 7
    keep_digests: bool = False
    retries: int = 3


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run the simulator's coroutine on uvloop when it is installed (less CPU per request for
    the load generator, which shares the machine with the verifier in benchmarks), else on
    asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def drive(
    url: str,
    hosts: list[SimHost],
    traffic: Traffic,
    on_tick: Callable[[Report], None] | None = None,
) -> Report:
    """Send snapshots from ``hosts`` at ``traffic.rate`` until ``count`` or ``seconds``."""
    report = Report()
    c = max(1, min(traffic.concurrency, len(hosts)))
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    interval = 1.0 / traffic.rate if traffic.rate > 0 else 0.0
    deadline = time.monotonic() + traffic.seconds
    budget = [traffic.count]
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def post(host: SimHost, rng: random.Random) -> None:
            nonce = None
            if rng.random() < traffic.challenge_rate:
                stamp = format_timestamp(datetime.now(UTC))
                headers = sign_request(host.key, host.key_id, "POST", "/v1/challenges", stamp, b"")
                try:
                    r = await client.post("/v1/challenges", headers=headers)
                    if r.status_code == 200:
                        nonce = r.json()["nonce"]
                        report.challenges += 1
                    else:
                        report.error(f"challenge {r.status_code} {r.text[:160]}")
                except httpx.HTTPError as exc:
                    report.error(f"challenge {exc!r}")
            if rng.random() < traffic.change_rate:
                host.change_inventory(rng)
                report.changes += 1
            data, digest = host.envelope(nonce)
            for attempt in range(traffic.retries + 1):
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/snapshots", content=data, headers=JSON)
                except httpx.HTTPError as exc:
                    report.latencies.append(time.perf_counter() - t0)
                    if attempt < traffic.retries:
                        report.retries += 1
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    report.error(f"snapshot {exc!r}")
                    return
                report.latencies.append(time.perf_counter() - t0)
                report.sent += 1
                if r.status_code != 200:
                    report.error(f"snapshot {r.status_code} {r.text[:160]}")
                    return
                body = r.json()
                if body.get("digest") != digest:
                    report.error(f"digest mismatch {body.get('digest')} != {digest}")
                    return
                if body.get("duplicate"):
                    report.duplicates += 1
                else:
                    report.accepted += 1
                status = str(body.get("status"))
                report.statuses[status] = report.statuses.get(status, 0) + 1
                if traffic.keep_digests:
                    report.digests.append(digest)
                host.acknowledged(digest)
                return

        async def worker(w: int, group: list[SimHost]) -> None:
            rng = random.Random(traffic.seed * 1_000_003 + w)  # noqa: S311 (simulation)
            k = 0
            while budget[0] > 0 and time.monotonic() < deadline:
                due = begin + (k * c + w) * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    if time.monotonic() >= deadline:
                        break
                else:
                    report.max_lag_s = max(report.max_lag_s, -delay)
                budget[0] -= 1
                await post(group[k % len(group)], rng)
                k += 1
                if on_tick is not None and w == 0:
                    on_tick(report)

        begin = time.perf_counter()
        await asyncio.gather(*(worker(w, hosts[w::c]) for w in range(c)))
        report.seconds = time.perf_counter() - begin
    return report


def make_hosts(site_id: str, count: int, start: int = 0) -> list[SimHost]:
    return [SimHost(site_id, index=start + i) for i in range(count)]
