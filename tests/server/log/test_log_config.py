"""The log's settings from the environment: bounded, with clear errors."""

from __future__ import annotations

import pytest


def test_the_integration_interval_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.config import ConfigError, Settings

    monkeypatch.setenv("VEU_LOG_INTERVAL_MS", "1500")
    with pytest.raises(ConfigError, match="at most 1000"):
        Settings.from_env()
    monkeypatch.setenv("VEU_LOG_INTERVAL_MS", "0")
    monkeypatch.setenv("VEU_LOG_ORIGIN", "verifier.example/log")
    s = Settings.from_env()
    assert s.log_interval_ms == 0 and s.effective_log_origin == "verifier.example/log"
