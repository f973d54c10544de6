"""The verifier logs JSON lines (issue 6), uvicorn's own lines included."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def test_serve_writes_json_lines_to_stderr(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
            "--access-log",
            "--log-level",
            "info",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/hosts").status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert events and all({"ts", "level", "logger", "event"} <= set(e) for e in events)
    assert any(e["logger"] == "uvicorn.access" and "/healthz" in e["event"] for e in events)
