"""``veu-server demo``: a whole fleet on this machine, with problems to find, in one command.

In a fresh data directory (a temporary one unless ``--data-dir`` names an empty or new folder):

- a U.S.-headquartered universal VEU with four inventory-file sites in Tier 1 and Tier 2 countries
  (each with an authorization; marked as test sites, so declared inventories are accepted there)
  and a fifth site for this machine's own agent, which probes real hardware;
- simulated 8-GPU H100, H200 and B200 servers (inventory files) with model-weight folders holding
  small but real safetensors files, each host a real ``veu-agent run`` process pushing signed,
  hash-chained snapshots over HTTP to the verifier, served in-process on ``127.0.0.1:PORT``;
- deliberate problems: ``nl-ams`` above its authorized TPP; one GPU (UUID and serial) reported at
  ``us-east`` and ``ae-auh``; controlled model weights (3e26 training operations) on storage not
  known to be encrypted at ``us-east``; a storage host at ``de-fra`` that reports once and is
  stopped (it goes stale); the United Arab Emirates, a non-Tier-1 country, above 7% of TPP; and
  ``cn-sha``, a licensed site in China (a licence-requiring destination) whose H20 servers were
  shipped with a U.S. third-party lab test record for all but one chip.

Every shipped pack judges the fleet live: the 2025 AI Diffusion pack (rescinded, not enforced),
the rules in force (``us-advanced-computing-2026``: the missing lab test record is "cannot
attest") and the proposed Chip Security Act (every covered chip: "cannot attest: location not
measured", counted in the headline only when the dashboard is asked to include proposed packs).

All simulated hosts run on this one machine and would share its hostname, so the verifier's
record of each is labelled with its role (``us-east-01``...); its snapshots still say where they
were really taken.

It prints ``Dashboard: <URL>`` and ``Admin API key: <key>`` on lines of their own and runs until
Ctrl-C or SIGTERM, then stops every agent and the server cleanly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from contract.errors import EXIT_USAGE, error_line
from server.errors import Invalid

#: (model name, PCI device id, memory MiB, architecture, board part number, serial prefix)
CHIPS: dict[str, tuple[str, str, int, str, str, str]] = {
    "h100": ("NVIDIA H100 80GB HBM3", "0x2330", 81559, "Hopper", "692-2G520-0200-000", "16549"),
    "h200": ("NVIDIA H200", "0x2335", 143771, "Hopper", "692-2G520-0280-000", "17432"),
    "b200": ("NVIDIA B200", "0x2901", 183359, "Blackwell", "692-2G525-0200-000", "17812"),
    "h20": ("NVIDIA H20", "0x2329", 97871, "Hopper", "692-2G520-0250-000", "17650"),
}
BUSES = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]
DRIVER = {"h100": "535.129.03", "h200": "550.54.15", "b200": "570.124.06", "h20": "550.54.15"}


@dataclass
class DemoHost:
    name: str
    site: str
    chip: str | None  # None: no accelerators (a storage host)
    weights: list[str] = field(default_factory=list)  # model folder names
    stale: bool = False
    local: bool = False  # this machine, real probes, no inventory file
    shares_gpu_with: str | None = None
    state_dir: Path = Path()
    proc: subprocess.Popen[bytes] | None = None


@dataclass(frozen=True)
class DemoSite:
    name: str
    country: str
    authorized_tpp: int
    test_site: bool
    may_store_controlled_weights: bool


SITES = [
    DemoSite("us-east", "US", 2_000_000, True, True),
    DemoSite("de-fra", "DE", 1_000_000, True, False),
    DemoSite("nl-ams", "NL", 100_000, True, False),  # each server 126,656 TPP: above it
    DemoSite("ae-auh", "AE", 400_000, True, False),  # Tier 2: its share of TPP exceeds 7%
    DemoSite("us-lab", "US", 50_000, False, False),  # this machine: real probes, not a test site
    # China: licensed (an authorized TPP); H20 servers (outside 3A090, so the distribution tables
    # do not change), one chip shipped without a U.S. lab test record (91 FR 1684).
    DemoSite("cn-sha", "CN", 200_000, True, False),
]
#: The lab test record of the China shipment, and the one chip shipped without one.
CN_LAB_TEST = "USLAB-DEMO-2026-0001"


def plan_hosts(hosts_per_site: int) -> list[DemoHost]:
    n = max(1, hosts_per_site)
    hosts = [  # the U.S. keeps at least half of the TPP
        DemoHost(f"us-east-{i + 1:02d}", "us-east", "b200", ["open-llm-8b"])
        for i in range(max(2, n))
    ]
    hosts[0].weights.append("frontier-x")  # controlled weights, storage not known encrypted
    hosts += [
        DemoHost(f"de-fra-{i + 1:02d}", "de-fra", "h100", ["open-llm-8b"])
        for i in range(max(1, n - 1))
    ]
    hosts.append(DemoHost("de-fra-store-01", "de-fra", None, ["open-llm-8b"], stale=True))
    hosts += [
        DemoHost(f"nl-ams-{i + 1:02d}", "nl-ams", "h100" if i % 2 == 0 else "h200")
        for i in range(n)
    ]
    hosts.append(DemoHost("ae-auh-01", "ae-auh", "h100", shares_gpu_with="us-east-01"))
    hosts.append(DemoHost("cn-sha-01", "cn-sha", "h20"))
    hosts.append(DemoHost("this-machine", "us-lab", None, local=True))
    return hosts


# --------------------------------------------------------------------------- files


def _uuid_for(host: str, index: int) -> str:
    h = hashlib.sha256(f"veu-demo/{host}/{index}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def accelerators(host: DemoHost, number: int) -> list[dict[str, Any]]:
    if host.chip is None:
        return []
    model, device, memory, arch, part, prefix = CHIPS[host.chip]
    return [
        {
            "vendor": "NVIDIA",
            "model": model,
            "pci_vendor_id": "0x10de",
            "pci_device_id": device,
            "pci_class": "0x030200",
            "pci_bus_id": f"0000:{bus}:00.0",
            "uuid": _uuid_for(host.name, i),
            "serial": f"{prefix}{number:04d}{i:04d}",
            "driver_version": DRIVER[host.chip],
            "memory_mib": memory,
            "architecture": arch,
            "board_part_number": part,
            "vbios_version": "96.00.99.00.01",
        }
        for i, bus in enumerate(BUSES)
    ]


def write_safetensors(path: Path, tensors: dict[str, tuple[int, int]], seed: str) -> str:
    """A real safetensors file (F32 tensors of the given shapes); returns its SHA-256."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "source": "veu-attest demo"}}
    data = bytearray()
    for name, (rows, cols) in tensors.items():
        count = rows * cols
        start = len(data)
        stream = hashlib.shake_256(f"{seed}/{name}".encode()).digest(count)
        data += struct.pack(f"<{count}f", *((b - 128) / 512 for b in stream))
        header[name] = {"dtype": "F32", "shape": [rows, cols], "data_offsets": [start, len(data)]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    body = struct.pack("<Q", len(text)) + text + bytes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    path.chmod(0o640)
    return hashlib.sha256(body).hexdigest()


MODELS: dict[str, dict[str, Any]] = {
    # Controlled: a closed model trained with 3e26 operations (ECCN 4E091 above 1e26).
    "frontier-x": {"training_ops": 3e26, "published": False, "shards": 2},
    # Published open-weight model: classified, not controlled.
    "open-llm-8b": {"training_ops": 1.5e24, "published": True, "shards": 1},
}


def write_models(root: Path) -> dict[str, list[str]]:
    """One copy of each model's files per folder name; returns digests per model."""
    digests: dict[str, list[str]] = {}
    for name, spec in MODELS.items():
        for shard in range(spec["shards"]):
            file = root / name / f"model-{shard + 1:05d}-of-{spec['shards']:05d}.safetensors"
            tensors = {f"layers.{k}.weight": (64, 64) for k in range(4)}
            digests.setdefault(name, []).append(write_safetensors(file, tensors, f"{name}/{shard}"))
    return digests


# --------------------------------------------------------------------------- the demo


class Demo:
    def __init__(
        self, data_dir: Path, port: int, hosts_per_site: int, report_interval: str
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.hosts = plan_hosts(hosts_per_site)
        self.report_interval = report_interval
        self.stop = threading.Event()
        self.admin_key = ""
        self.site_ids: dict[str, str] = {}
        self.server: Any = None
        self.server_thread: threading.Thread | None = None
        self.app: Any = None
        self.socket: socket.socket | None = None
        self.agent_command: str | None = None  # the installed veu-agent (agent_exe)

    # ------------------------------------------------------------------ setup

    def interval_seconds(self) -> float:
        from agent.config import parse_duration

        return parse_duration(self.report_interval)

    def build_app(self) -> None:
        from server.api.app import create_app
        from server.config import Settings, resolve_policies_dir

        interval = self.interval_seconds()
        settings = Settings(
            data_dir=self.data_dir / "server",
            policies_dir=resolve_policies_dir(),
            # A host is stale after three missed reports, as in production (3 x report interval),
            # and the app's periodic task re-judges sites often enough to notice it on time.
            max_host_age=timedelta(seconds=3 * interval),
            refresh_interval_s=min(interval, 10.0),
        )
        self.app = create_app(settings)

    def seed(self) -> dict[str, str]:
        """Organization, sites, authorizations, API key, model registry, ledger; tokens."""
        from server.compliance.registry import bump_registry
        from server.store import repo
        from server.store.compliance_models import (
            ModelFile,
            RegisteredModel,
            Shipment,
            ShipmentItem,
            SiteAuthorization,
        )

        files = self.data_dir / "fleet"
        model_dir = files / "models"
        digests = write_models(model_dir)
        now = datetime.now(UTC)
        tokens: dict[str, str] = {}
        svc = self.app.state.veu
        with svc.db.write() as s:
            org = repo.add_org(s, "Acme AI", "universal", "US", None, now)
            for site in SITES:
                row = repo.add_site(
                    s,
                    org.id,
                    site.name,
                    site.country,
                    float(site.authorized_tpp),
                    f"VEU-DEMO-{site.name.upper()}",
                    site.test_site,
                    now,
                )
                self.site_ids[site.name] = row.id
                s.flush()
                s.add(
                    SiteAuthorization(
                        site_id=row.id,
                        allowed_models=None,
                        may_store_controlled_weights=site.may_store_controlled_weights,
                    )
                )
            self.admin_key, _ = repo.create_api_key(s, "admin", "demo admin", now)
            for index, (name, spec) in enumerate(MODELS.items()):
                model_id = f"mdl_demo{index}"
                s.add(
                    RegisteredModel(
                        id=model_id,
                        name=name,
                        training_ops=spec["training_ops"],
                        published=spec["published"],
                        derived_from=None,
                        derived_from_published=False,
                        added_training_ops=None,
                        less_capable_than_published=False,
                        created_at=now,
                    )
                )
                s.flush()
                for digest in digests[name]:
                    s.add(ModelFile(digest=digest, model_id=model_id))
            bump_registry(s)
            by_name = {h.name: h for h in self.hosts}
            for number, host in enumerate(self.hosts, start=1):
                host.state_dir = self.data_dir / "agents" / host.name / "state"
                host.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not host.local:
                    acc = accelerators(host, number)
                    if host.shares_gpu_with is not None:
                        twin = by_name[host.shares_gpu_with]
                        twin_number = self.hosts.index(twin) + 1
                        acc[-1] = accelerators(twin, twin_number)[0] | {
                            "pci_bus_id": acc[-1]["pci_bus_id"]
                        }
                    (host.state_dir.parent / "inventory.json").write_text(
                        json.dumps({"accelerators": acc}, indent=2) + "\n"
                    )
                    weights = host.state_dir.parent / "weights"
                    for model in host.weights:
                        shutil.copytree(model_dir / model, weights / model)
                token, _ = repo.create_enroll_token(
                    s, self.site_ids[host.site], timedelta(hours=1), now, actor="demo"
                )
                tokens[host.name] = token
            # The ledger: every chip of us-east was shipped to it 60 days ago (all observed).
            us_hosts = [h for h in self.hosts if h.site == "us-east"]
            shipment_chips = [a for h in us_hosts for a in accelerators(h, self.hosts.index(h) + 1)]
            s.add(
                Shipment(
                    id="shp_demo_us_east",
                    shipped_on=date.today() - timedelta(days=60),
                    site_id=self.site_ids["us-east"],
                    destination_country="US",
                    consignee="Acme AI",
                    license_exception="VEU",
                    end_user="veu",
                    chip_model="nvidia-b200",
                    quantity=len(shipment_chips),
                    tpp=36_000 * len(shipment_chips),
                    created_at=now,
                )
            )
            s.flush()
            for chip in shipment_chips:
                s.add(
                    ShipmentItem(
                        shipment_id="shp_demo_us_east",
                        site_id=self.site_ids["us-east"],
                        identity=f"serial:{chip['serial']}",
                    )
                )
            # China: all but the last chip shipped with a U.S. third-party lab test record.
            cn = next(h for h in self.hosts if h.site == "cn-sha")
            cn_chips = accelerators(cn, self.hosts.index(cn) + 1)
            for shipment_id, chips, lab_test in (
                ("shp_demo_cn_sha", cn_chips[:-1], CN_LAB_TEST),
                ("shp_demo_cn_sha_untested", cn_chips[-1:], None),
            ):
                s.add(
                    Shipment(
                        id=shipment_id,
                        shipped_on=date.today() - timedelta(days=30),
                        site_id=self.site_ids["cn-sha"],
                        destination_country="CN",
                        consignee="Acme AI Shanghai",
                        license_exception="license",
                        end_user="non-veu",
                        chip_model="nvidia-h20",
                        quantity=len(chips),
                        tpp=2_368 * len(chips),
                        lab_test=lab_test,
                        created_at=now,
                    )
                )
                s.flush()
                for chip in chips:
                    s.add(
                        ShipmentItem(
                            shipment_id=shipment_id,
                            site_id=self.site_ids["cn-sha"],
                            identity=f"uuid:{chip['uuid']}",
                        )
                    )
        return tokens

    # ------------------------------------------------------------------ processes

    def bind(self) -> None:
        """Take the port before anything else starts, so that a port already in use is said
        plainly and no agent ever talks to whatever else listens there."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(
                    "port_in_use",
                    f"127.0.0.1:{self.port} is already in use by another program; "
                    "stop it or choose another port with --port",
                ) from exc
            raise DemoError(
                "port_unavailable", f"cannot listen on 127.0.0.1:{self.port}: {exc.strerror}"
            ) from exc
        sock.listen(2048)
        self.socket = sock

    def start_server(self) -> None:
        import uvicorn

        assert self.socket is not None, "bind() first"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        sockets = [self.socket]
        self.server_thread = threading.Thread(
            target=lambda: self.server.run(sockets=sockets) if self.server else None,
            name="verifier",
            daemon=True,
        )
        self.server_thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            if not self.server_thread.is_alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"the verifier did not start on {self.url}")

    def agent_exe(self) -> str:
        if self.agent_command is None:
            self.agent_command = agent_command()
        return self.agent_command

    def _agent(self, *args: str, host: DemoHost) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.agent_exe(), *args, "--state-dir", str(host.state_dir)],
            capture_output=True,
            timeout=120,
            env=_agent_env(),
        )

    def enroll(self, tokens: dict[str, str]) -> None:
        def one(host: DemoHost) -> None:
            for args in (("init",), ("enroll", "--server", self.url, "--token", tokens[host.name])):
                done = self._agent(*args, host=host)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"veu-agent {args[0]} for {host.name} failed: {done.stderr.decode()}"
                    )

        _parallel([lambda h=h: one(h) for h in self.hosts])  # type: ignore[misc]
        self.label_hosts()

    def label_hosts(self) -> None:
        """Name each simulated host's record after its role: they all share this machine's name."""
        from contract.keys import key_id, load_public_pem
        from server.store.models import Host

        with self.app.state.veu.db.write() as s:
            for host in self.hosts:
                kid = key_id(load_public_pem((host.state_dir / "agent.pub").read_bytes()))
                row = s.get(Host, kid)
                if row is not None and not host.local:
                    row.hostname = host.name

    def start_agent(self, host: DemoHost) -> None:
        lines = [
            f"state_dir = {json.dumps(str(host.state_dir))}",
            f'report_interval = "{self.report_interval}"',
            'check_in_interval = "2s"',
        ]
        if not host.local:
            lines += [
                f"inventory = {json.dumps(str(host.state_dir.parent / 'inventory.json'))}",
                "nvml = false",
            ]
        weights = host.state_dir.parent / "weights"
        if weights.is_dir():
            lines.append(f"weight_roots = {json.dumps([str(weights)])}")
        config = host.state_dir.parent / "agent.toml"
        config.write_text("\n".join(lines) + "\n")
        log = open(host.state_dir.parent / "agent.log", "ab")  # noqa: SIM115
        host.proc = subprocess.Popen(
            [self.agent_exe(), "run", "--config", str(config)],
            stdout=log,
            stderr=log,
            env=_agent_env(),
            start_new_session=True,  # Ctrl-C reaches the demo, which stops agents in order
        )
        log.close()

    def delivered(self, host: DemoHost) -> int:
        from server.store.models import ChainHead

        key_file = host.state_dir / "agent.pub"
        if not key_file.exists():
            return 0
        from contract.keys import key_id, load_public_pem

        kid = key_id(load_public_pem(key_file.read_bytes()))
        with self.app.state.veu.db.read() as s:
            head = s.get(ChainHead, kid)
            return int(head.seq) if head is not None else 0

    def stop_agent(self, host: DemoHost, timeout: float = 15.0) -> None:
        proc = host.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        self.bind()
        self.agent_exe()  # a missing console script is said before anything starts
        self.build_app()
        tokens = self.seed()
        self.start_server()
        self.enroll(tokens)
        for host in self.hosts:
            self.start_agent(host)
        stale = [h for h in self.hosts if h.stale]
        deadline = time.monotonic() + 60
        while stale and time.monotonic() < deadline and not self.stop.is_set():
            if all(self.delivered(h) >= 1 for h in stale):
                break
            time.sleep(0.5)
        for host in stale:
            self.stop_agent(host)  # it reported; now it goes silent and turns stale
        print(f"Dashboard: {self.url}/dashboard/", flush=True)
        print(f"Admin API key: {self.admin_key}", flush=True)
        print(
            f"Data directory: {self.data_dir} ({len(self.hosts)} agents; Ctrl-C stops them all)",
            flush=True,
        )
        self.stop.wait()
        return 0

    def shutdown(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                if host.proc is not None and host.proc.poll() is None:
                    host.proc.send_signal(signal.SIGTERM)
        for host in self.hosts:
            with contextlib.suppress(Exception):
                self.stop_agent(host)
        if self.server is not None:
            self.server.should_exit = True
        if self.server_thread is not None:
            self.server_thread.join(timeout=15)
        if self.app is not None:
            self.app.state.veu.db.dispose()
        if self.socket is not None:
            self.socket.close()


class DemoError(Invalid):
    """Why the demo cannot start; ``code`` is stable."""


def agent_command() -> str:
    """The installed ``veu-agent`` console script: the one beside this interpreter, else the
    one on PATH. Never ``python -m agent.cli``, which runs whatever ``agent/`` folder is in the
    current directory."""
    beside = Path(sys.executable).with_name("veu-agent")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("veu-agent")
    if found is None:
        raise DemoError(
            "agent_not_installed",
            f"no veu-agent command next to {sys.executable} or on PATH; install the package "
            "(pip install -e . or ./scripts/setup)",
        )
    return found


def _agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEU_")}
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _parallel(jobs: list[Callable[[], None]], width: int = 4) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=width) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def run_demo(
    data_dir: Path | None,
    port: int,
    *,
    hosts_per_site: int = 3,
    report_interval: str = "20s",
) -> int:
    temporary = data_dir is None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="veu-demo-"))
    elif data_dir.exists() and any(data_dir.iterdir()):
        print(
            error_line("not_empty", f"{data_dir} is not empty; the demo needs a fresh one"),
            file=sys.stderr,
        )
        return EXIT_USAGE
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    demo = Demo(data_dir, port, hosts_per_site, report_interval)

    def on_signal(_signo: int, _frame: Any) -> None:
        demo.stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return demo.run()
    except DemoError as exc:
        print(error_line(exc.code, exc.detail), file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as exc:
        print(error_line("demo", str(exc)), file=sys.stderr)
        return 1
    finally:
        demo.shutdown()
        for signo, handler in previous.items():
            signal.signal(signo, handler)
        print("demo stopped", flush=True)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
