"""The transparency-log benchmark runs end to end in smoke mode (numbers are not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_log.py"


def test_log_benchmark_runs_in_smoke_mode(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_log", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "appends/s" in out and "inclusion proof verified" in out and "log on" in out
    assert "share of ingest CPU" in out
