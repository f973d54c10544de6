"""One duration syntax for both command lines, the agent's config file and the verifier's
environment (contract.durations), with errors that name the setting and where it came from."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.config import ConfigError, load_config
from contract.durations import DurationError, parse_duration

ACCEPTED = [
    ("90", 90.0),
    ("90s", 90.0),
    ("15m", 900.0),
    ("1.5h", 5400.0),
    ("1w", 604800.0),
    ("7d", 604800.0),
    ("250ms", 0.25),
    (" 2 m ", 120.0),
    (5, 5.0),
]
REFUSED = ["", "abc", "-1s", "0", "0s", "5 parsecs", "1e3", "nan", "inf", "1h30m", "1.s"]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED)
def test_the_shared_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", REFUSED)
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(text, setting="report_interval", source="/etc/x.toml")
    assert err.value.code == "bad_duration"
    assert "report_interval (/etc/x.toml)" in err.value.detail


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED[:-1])
def test_agent_flags_and_config_file_take_the_shared_syntax(
    text: str, seconds: float, tmp_path: Path
) -> None:
    assert load_config(None, {"report_interval": text}).report_interval == seconds
    config = tmp_path / "agent.toml"
    config.write_text(f'check_in_interval = "{text}"\n')
    assert load_config(config).check_in_interval == seconds
    assert build_parser().parse_args(["attest", "--timeout", text]).timeout == seconds


def test_agent_errors_name_the_setting_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('check_in_interval = "soon"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.code == "bad_duration"
    assert f"check_in_interval ({config})" in err.value.detail and "1.5h" in err.value.detail
    with pytest.raises(ConfigError) as err:
        load_config(None, {"report_interval": "soon"})
    assert "--report-interval (command line)" in err.value.detail


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED[:-1])
def test_verifier_flags_take_the_shared_syntax(text: str, seconds: float) -> None:
    from server.cli import build_parser

    args = build_parser().parse_args(["enroll-token", "create", "site-1", "--ttl", text])
    assert args.ttl == timedelta(seconds=seconds)


def test_verifier_environment_takes_the_shared_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.config import ConfigError as ServerConfigError
    from server.config import Settings

    monkeypatch.setenv("VEU_REFRESH_INTERVAL", "1.5h")
    monkeypatch.setenv("VEU_SETTLE_INTERVAL", "0")  # 0 turns it off, as documented
    monkeypatch.setenv("VEU_INGEST_BATCH_WAIT_MS", "2")  # a bare number: milliseconds
    settings = Settings.from_env(data_dir="/tmp/unused")
    assert settings.refresh_interval_s == 5400.0 and settings.settle_interval_s == 0.0
    assert settings.ingest_batch_wait_ms == pytest.approx(2.0)
    monkeypatch.setenv("VEU_INGEST_BATCH_WAIT_MS", "250ms")
    assert Settings.from_env(data_dir="/tmp/unused").ingest_batch_wait_ms == pytest.approx(250.0)
    monkeypatch.setenv("VEU_REFRESH_INTERVAL", "soon")
    with pytest.raises(ServerConfigError) as err:
        Settings.from_env(data_dir="/tmp/unused")
    assert "VEU_REFRESH_INTERVAL (environment)" in err.value.detail
