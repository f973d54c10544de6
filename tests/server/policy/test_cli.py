"""``policy test`` and ``policy eval`` as the lead wires them into veu-server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from contract import SnapshotV1, sign_envelope, statement_bytes
from server.cli import policy as cli
from tests.server.policy.conftest import PACK


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return cli.run(parser.parse_args(argv))


def test_policy_test_exits_zero_when_every_fixture_passes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _run(["policy", "test", PACK.name, "--policies", str(PACK.parent)]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")


def test_policy_eval_judges_an_envelope_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    accs = [{"model": "NVIDIA H100 80GB HBM3", "pci_vendor_id": "0x10de", "pci_device_id": "0x2330",
             "uuid": f"GPU-{i}", "source": "nvml"} for i in range(8)]  # fmt: skip
    snap = SnapshotV1.model_validate({
        "agent": {"key_id": "2" * 64, "version": "t"}, "site_id": "s", "host": {}, "seq": 1,
        "prev": None, "nonce": None, "collected_at": "2026-01-01T00:00:00Z",
        "accelerators": accs, "storage": [], "posture": {}, "errors": [],
    })  # fmt: skip
    env = sign_envelope(statement_bytes(snap), Ed25519PrivateKey.generate(), "2" * 64)
    path = tmp_path / "snap.json"
    path.write_bytes(env.to_bytes())
    argv = ["policy", "eval", str(path), "--site-country", "de", "--authorized-tpp", "100000",
            "--date", "2026-02-01", "--policies", str(PACK.parent), "--json"]  # fmt: skip
    assert _run(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "contraindicated"
    assert [f["seen"] for f in out["findings"]] == ["126,656 TPP"]
    assert len(out["policy_digest"]) == 64


def test_policy_eval_on_a_missing_file_is_an_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        _run(
            [
                "policy",
                "eval",
                "/nonexistent.json",
                "--site-country",
                "DE",
                "--policies",
                str(PACK.parent),
            ]
        )
        == 4
    )
    assert "error[" in capsys.readouterr().err
