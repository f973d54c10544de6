"""Agent configuration: TOML file, then command-line flags on top, validated into one object.

Precedence: built-in defaults < ``/etc/veu-agent/agent.toml`` (or ``--config``) < flags.
Every option in the file is also a flag. Unknown keys in the file are errors (a typo must not
silently fall back to a default).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contract import durations

DEFAULT_CONFIG_PATH = Path("/etc/veu-agent/agent.toml")


class ConfigError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/veu-agent")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "veu-agent"


def parse_duration(
    text: str | float | int, *, setting: str = "duration", source: str | None = None
) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1.5h"``, ``"1w"`` (:mod:`contract.durations`,
    the syntax shared with the verifier), as a :class:`ConfigError` when it is not one."""
    try:
        return durations.parse_duration(text, setting=setting, source=source)
    except durations.DurationError as exc:
        raise ConfigError(exc.code, exc.detail) from exc


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3}
_SIZE_UNIT["gib"] = 1024**3


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``"256MiB"``, ``"1G"``."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ConfigError("bad_size", f"{text!r} is not a size; use bytes or e.g. 256MiB")
        value = int(match.group(1)) * _SIZE_UNIT[(match.group(2) or "b").lower()]
    if value <= 0:
        raise ConfigError("bad_size", f"size must be positive, got {text!r}")
    return value


@dataclass
class AgentConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    site_id: str | None = None
    weight_roots: list[Path] = field(default_factory=list)
    server_url: str | None = None
    check_in_interval: float = 60.0
    report_interval: float = 900.0
    inventory: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    allow_insecure_http: bool = False
    spool_max_bytes: int = 256 * 1024 * 1024
    hash_workers: int | None = None
    #: Unidentified files under a weight root are listed with their digests from this size.
    list_unidentified_from: int = 1024 * 1024
    collector_timeout: float = 30.0
    scan_timeout: float = 3600.0
    sys_root: Path = Path("/sys")
    proc_root: Path = Path("/proc")
    nvml: bool = True
    #: Replay a recorded NVML session instead of the real library (tests and demos on machines
    #: without GPUs). The snapshot says so in ``extensions.recorded_fixtures``.
    nvml_replay: Path | None = None


_PATHS = {
    "state_dir",
    "inventory",
    "ca_file",
    "client_cert",
    "client_key",
    "sys_root",
    "proc_root",
    "nvml_replay",
}
_DURATIONS = {"check_in_interval", "report_interval", "collector_timeout", "scan_timeout"}


def _coerce(name: str, value: Any, source: str = "command line") -> Any:
    """``value`` of setting ``name`` as the config holds it; ``source`` says where it came from
    (the file, or the command line), for errors."""
    if value is None:
        return None
    if name in _PATHS:
        return Path(str(value))
    if name == "weight_roots":
        if isinstance(value, str | Path):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError("bad_config", "weight_roots must be a list of paths")
        return [Path(str(v)) for v in value]
    if name in _DURATIONS:
        flag = "--" + name.replace("_", "-")
        setting = flag if source == "command line" else name
        return parse_duration(value, setting=setting, source=source)
    if name in {"spool_max_bytes", "list_unidentified_from"}:
        return parse_size(value)
    if name == "hash_workers":
        if not isinstance(value, int) or value < 1:
            raise ConfigError("bad_config", "hash_workers must be a positive integer")
        return value
    if name in {"allow_insecure_http", "nvml"}:
        if not isinstance(value, bool):
            raise ConfigError("bad_config", f"{name} must be true or false")
        return value
    if name in {"site_id", "server_url"}:
        return str(value)
    return value


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read the TOML file (if given or present at the default path) and apply ``overrides``.

    Overrides whose value is ``None`` (a flag not given) are ignored.
    """
    known = {f.name for f in fields(AgentConfig)}
    values: dict[str, Any] = {}
    source = path if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or DEFAULT_CONFIG_PATH.exists():
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("config_not_found", f"config file {source} does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("config_malformed", f"{source}: {exc}") from exc
        except PermissionError as exc:
            raise ConfigError(
                "config_unreadable", f"cannot read {source}: permission denied"
            ) from exc
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                "config_unknown_key",
                f"{source}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}",
            )
        for key, value in data.items():
            values[key] = _coerce(key, value, str(source))
    for key, value in (overrides or {}).items():
        if value is None or (key == "weight_roots" and not value):
            continue
        if key not in known:
            raise ConfigError("config_unknown_key", f"unknown option {key}")
        values[key] = _coerce(key, value)
    config = AgentConfig(**values)
    if config.server_url is not None:
        check_server_url(config.server_url, config.allow_insecure_http)
    return config


_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback_host(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def check_server_url(url: str, allow_insecure_http: bool) -> None:
    """Refuse plain HTTP except to loopback, unless explicitly allowed."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError("bad_server_url", f"server URL {url!r} must be https://host[:port]")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            "insecure_http",
            f"refusing plain HTTP to {parts.hostname}; use https:// or set allow_insecure_http",
        )
