"""Verifier settings: one explicit object, built from flags or the environment, passed in.

Nothing in the server reads the environment except :meth:`Settings.from_env` and
:func:`resolve_policies_dir` (which it uses), so a test can run two differently configured servers
in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

ENV_DATA_DIR = "VEU_DATA_DIR"
ENV_DATABASE_URL = "VEU_DATABASE_URL"
ENV_MAX_BODY = "VEU_MAX_BODY_BYTES"

DEFAULT_DATA_DIR = Path("/var/lib/veu-server")
ENV_POLICIES_DIR = "VEU_POLICIES_DIR"
ENV_REFRESH = "VEU_REFRESH_INTERVAL"
ENV_SETTLE = "VEU_SETTLE_INTERVAL"
ENV_INGEST_CONCURRENCY = "VEU_INGEST_CONCURRENCY"
ENV_INGEST_BATCH = "VEU_INGEST_BATCH_MAX"
ENV_INGEST_BATCH_WAIT = "VEU_INGEST_BATCH_WAIT_MS"
ENV_POLICY_CHECK = "VEU_POLICY_CHECK_INTERVAL"
#: Connection bounds (docs/verifier.md, "Resource bounds"): setting name -> (variable, unit).
ENV_CONNECTION_LIMITS = {
    "max_header_bytes": ("VEU_MAX_HEADER_BYTES", "a number of bytes"),
    "max_headers": ("VEU_MAX_HEADERS", "a number of header fields"),
    "header_timeout_s": ("VEU_HEADER_TIMEOUT", "seconds"),
    "body_timeout_s": ("VEU_BODY_TIMEOUT", "seconds"),
    "keep_alive_s": ("VEU_KEEP_ALIVE", "seconds"),
    "max_connections": ("VEU_MAX_CONNECTIONS", "a number of connections"),
    "max_requests_per_connection": ("VEU_MAX_REQUESTS_PER_CONNECTION", "a number of requests"),
}
ENV_LOG_ORIGIN = "VEU_LOG_ORIGIN"
ENV_LOG_INTERVAL = "VEU_LOG_INTERVAL_MS"
ENV_TPM_VENDOR_CAS = "VEU_TPM_VENDOR_CA_DIR"
SQLITE_NAME = "veu.sqlite3"


def shipped_policies_dir() -> Path:
    """The packs that ship inside the installed package (``policies/`` in a checkout)."""
    import policies

    return Path(policies.__file__).resolve().parent


def resolve_policies_dir(flag: str | Path | None = None) -> Path:
    """THE policy directory of every command: ``--policies`` if given, else ``VEU_POLICIES_DIR``,
    else the shipped packs."""
    chosen = flag or os.environ.get(ENV_POLICIES_DIR)
    return Path(chosen) if chosen else shipped_policies_dir()


@dataclass(frozen=True)
class Settings:
    """How one verifier process runs. ``database_url`` ``None`` means SQLite in ``data_dir``."""

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    #: Largest request body read for a snapshot; larger bodies are refused with 413 unread.
    max_body_bytes: int = 16 * 1024 * 1024
    #: How long a challenge nonce stays valid.
    challenge_ttl: timedelta = timedelta(minutes=10)
    #: How far a signed agent request's timestamp may be from the verifier's clock.
    request_skew: timedelta = timedelta(minutes=5)
    #: Identifies this verifier in results (``ear.verifier-id``).
    verifier_id: str = "veu-attest-verifier"
    #: PostgreSQL connection pool per process (see docs/verifier.md, "Connections").
    pool_size: int = 5
    pool_max_overflow: int = 5
    #: Policy packs to judge evidence by (``--policies``, VEU_POLICIES_DIR, else the shipped ones).
    policies_dir: Path = field(default_factory=shipped_policies_dir)
    #: A host whose last accepted snapshot is older than this is stale (3 x the 15 min default
    #: report interval).
    max_host_age: timedelta = timedelta(minutes=45)
    #: How often each process re-judges sites without new evidence (staleness, missing
    #: shipments); 0 disables the periodic task.
    refresh_interval_s: float = 60.0
    #: How often each process settles sites with newly accepted snapshots (folds them into the
    #: site aggregate and judges the site and organization); 0 disables the background settler,
    #: leaving settling to compliance reads.
    settle_interval_s: float = 1.0
    #: Snapshots one process appraises at once (the rest wait their turn, in order). None: 1 on
    #: SQLite (one writer; more threads only contend for the GIL and the write lock) and 4 on
    #: PostgreSQL (overlaps the database round trips). Each is CPU-bound Python, so more than a
    #: few per process never helps; add workers instead.
    ingest_concurrency: int | None = None
    #: Most accepted snapshots one process commits in one transaction (group commit,
    #: server/ingest/_groupcommit.py). Batches form while a commit runs and while the writer
    #: waits for appraisals under way, so a lightly loaded verifier commits each snapshot alone;
    #: 1 turns batching off.
    ingest_batch_max: int = 32
    #: How long the writer waits for snapshots still under appraisal in this process before it
    #: commits what is queued (never when none is under appraisal); 0 commits at once.
    ingest_batch_wait_ms: float = 5.0
    #: How often each process checks the recorded pack set and loads it when a reload on
    #: another process changed it (server/compliance/policy_sync.py); 0: only when the
    #: process starts.
    policy_check_interval_s: float = 2.0
    #: A directory of PEM files: the TPM makers' CAs an EK certificate must chain to for a host
    #: to enroll with its TPM (credential activation). None: TPM evidence is not checked at
    #: enrollment, and TPM hosts enroll as self-reported. None ships with the verifier.
    tpm_vendor_ca_dir: Path | None = None
    #: Most bytes of one request head (request line and headers); more is answered 431.
    max_header_bytes: int = 64 * 1024
    #: Most header fields in one request; more is answered 431.
    max_headers: int = 100
    #: A connection's request head must arrive within this (from connect, or from its first
    #: byte after a keep-alive pause); an idle new socket is closed after it.
    header_timeout_s: float = 10.0
    #: A request's body must arrive within this from the end of its head.
    body_timeout_s: float = 60.0
    #: An idle keep-alive connection is closed after this.
    keep_alive_s: float = 5.0
    #: Open connections per process; one more is answered 503 and closed.
    max_connections: int = 1000
    #: Requests one keep-alive connection may carry before the verifier closes it.
    max_requests_per_connection: int = 10_000
    #: The transparency log's origin (the first line of its checkpoints, its key's name);
    #: None: ``<verifier_id>/log``.
    log_origin: str | None = None
    #: How often each process integrates newly committed leaves and signs a checkpoint
    #: (server/log/integrate.py); at most 1000 ms. 0 turns the integrator off in this process
    #: (leaves are still appended; another process or ``veu-server log integrate`` signs).
    log_interval_ms: float = 200.0

    @property
    def effective_log_origin(self) -> str:
        return self.log_origin or f"{self.verifier_id}/log"

    @property
    def log_key_path(self) -> Path:
        return self.data_dir / "log.key"

    @property
    def effective_ingest_concurrency(self) -> int:
        if self.ingest_concurrency is not None:
            return max(1, self.ingest_concurrency)
        return 1 if self.database_url is None else 4

    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / SQLITE_NAME).resolve()}"

    @property
    def verifier_key_path(self) -> Path:
        return self.data_dir / "verifier.key"

    @classmethod
    def from_env(
        cls, *, data_dir: str | Path | None = None, database_url: str | None = None
    ) -> Settings:
        """Flags win over the environment; the environment wins over defaults."""
        dd = data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR
        url = database_url or os.environ.get(ENV_DATABASE_URL) or None
        max_body = int(_env_number(ENV_MAX_BODY, 16 * 1024 * 1024, "a number of bytes"))
        policies = resolve_policies_dir()
        refresh = _env_duration(ENV_REFRESH, 60.0)
        settle = _env_duration(ENV_SETTLE, 1.0)
        concurrency = _env_number(ENV_INGEST_CONCURRENCY, 0, "a number of snapshots (0: default)")
        batch = _env_number(ENV_INGEST_BATCH, 32, "a number of snapshots (1: no batching)")
        if batch < 1:
            raise ConfigError(f"{ENV_INGEST_BATCH} must be at least 1 (1 turns batching off)")
        wait_ms = 1000 * _env_duration(ENV_INGEST_BATCH_WAIT, 0.005, default_unit="ms")
        if wait_ms > 1000:
            raise ConfigError(f"{ENV_INGEST_BATCH_WAIT} is {wait_ms:g}; at most 1000 ms")
        policy_check = _env_number(ENV_POLICY_CHECK, 2.0, "seconds (0: only at start)")
        limits = {name: _env_limit(cls, name) for name in ENV_CONNECTION_LIMITS}
        log_interval = _env_number(ENV_LOG_INTERVAL, 200.0, "milliseconds (0 turns it off)")
        if log_interval > 1000:
            raise ConfigError(f"{ENV_LOG_INTERVAL} is {log_interval:g}; at most 1000 ms")
        vendor_cas = os.environ.get(ENV_TPM_VENDOR_CAS, "").strip()
        if vendor_cas and not Path(vendor_cas).is_dir():
            raise ConfigError(f"{ENV_TPM_VENDOR_CAS} is {vendor_cas[:200]!r}, not a directory")
        return cls(
            data_dir=Path(dd),
            database_url=url,
            max_body_bytes=max_body,
            policies_dir=policies,
            refresh_interval_s=refresh,
            settle_interval_s=settle,
            ingest_concurrency=int(concurrency) if concurrency >= 1 else None,
            ingest_batch_max=int(batch),
            ingest_batch_wait_ms=wait_ms,
            policy_check_interval_s=policy_check,
            max_header_bytes=int(limits["max_header_bytes"]),
            max_headers=int(limits["max_headers"]),
            header_timeout_s=limits["header_timeout_s"],
            body_timeout_s=limits["body_timeout_s"],
            keep_alive_s=limits["keep_alive_s"],
            max_connections=int(limits["max_connections"]),
            max_requests_per_connection=int(limits["max_requests_per_connection"]),
            log_origin=os.environ.get(ENV_LOG_ORIGIN) or None,
            log_interval_ms=log_interval,
            tpm_vendor_ca_dir=Path(vendor_cas) if vendor_cas else None,
        )


class ConfigError(ValueError):
    """A setting from the environment that cannot be used; ``code`` is stable."""

    code = "bad_config"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _env_limit(cls: type[Settings], name: str) -> float:
    variable, unit = ENV_CONNECTION_LIMITS[name]
    default = getattr(cls, name)
    assert isinstance(default, int | float)
    value = _env_number(variable, default, unit)
    if value <= 0:
        raise ConfigError(f"{variable} is {value:g}; it must be more than 0")
    return value


def _env_number(name: str, default: float, what: str) -> float:
    """A non-negative number from the environment, or a clear error naming the variable."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name} is {raw[:40]!r}; give {what}, a number >= 0")
    return value


def _env_duration(name: str, default: float, *, default_unit: str = "s") -> float:
    """Seconds from a duration in the environment (``90``, ``90s``, ``15m``, ``1.5h``, ``1w``:
    the syntax of :mod:`contract.durations`; a bare number is in ``default_unit``; 0 turns the
    setting off), or a clear error naming the variable."""
    from contract.durations import DurationError, parse_duration

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return parse_duration(
            raw, setting=name, source="environment", default_unit=default_unit, allow_zero=True
        )
    except DurationError as exc:
        raise ConfigError(exc.detail) from exc


def normalize_database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and route them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
