"""Both CLIs write host- and verifier-controlled text to the terminal with its control and bidi
characters as visible escapes (no raw ESC, BEL or OSC sequence reaches the operator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from server.cli import main as server_main
from tests.server.builders import HostKit
from tests.server.conftest import Api

#: An OSC 52 clipboard write, a bidi override and a bell.
HOSTILE = "gpu\x1b]52;c;cm0gLXJmIC8K\x07\u202egnp.exe"
SHOWN = "gpu\\x1b]52;c;cm0gLXJmIC8K\\x07\\u202egnp.exe"


def _raw_free(text: str) -> bool:
    return not any(ch in text for ch in ("\x1b", "\x07", "\u202e"))


def test_server_cli_escapes_host_controlled_text(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = HostKit(api.site_id)
    body = kit.enroll_body(api.token(), host={"hostname": HOSTILE, "machine_id": kit.machine_id})
    assert api.client.post("/v1/enroll", json=body).status_code == 200  # type: ignore[attr-defined]
    settings = api.services.settings  # type: ignore[attr-defined]
    db = ["--database-url", settings.database_url] if settings.database_url else []
    capsys.readouterr()
    assert server_main(["agent", "list", "--data-dir", str(settings.data_dir), *db]) == 0
    out = capsys.readouterr().out
    assert _raw_free(out) and SHOWN in out


def test_agent_cli_escapes_verifier_controlled_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    status = {
        "state": "stopped",
        "key_id": "k",
        "last_error": {"at": "2026-01-01T00:00:00Z", "code": "rejected", "detail": HOSTILE},
    }
    (state / "status.json").write_text(json.dumps(status))
    agent_main(["status", "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert _raw_free(out) and SHOWN in out
