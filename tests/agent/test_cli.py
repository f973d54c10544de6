"""`veu-agent` end to end: init, snapshot on a recorded H100 HGX host, verify, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from contract import parse_envelope, parse_statement

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HGX_SYSFS = FIXTURES / "sysfs" / "h100-hgx"
HGX_NVML = FIXTURES / "nvml" / "h100-hgx-8.json"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_init_prints_the_key_id_and_refuses_to_overwrite(tmp_path: Path) -> None:
    first = run("init", "--state-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.strip()) == 64
    second = run("init", "--state-dir", str(tmp_path))
    assert second.returncode == 1
    assert "error[key_exists]" in second.stderr and "Traceback" not in second.stderr


def test_snapshot_of_recorded_hgx_host_lists_eight_h100s_and_verifies(tmp_path: Path) -> None:
    assert main(["init", "--state-dir", str(tmp_path)]) == 0
    out = tmp_path / "snap.json"
    result = run(
        "snapshot",
        "--state-dir",
        str(tmp_path),
        "--site",
        "site-a",
        "--sys-root",
        str(HGX_SYSFS),
        "--nvml-replay",
        str(HGX_NVML),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "8 x NVIDIA H100 80GB HBM3" in result.stderr
    _, snapshot = parse_statement(parse_envelope(out.read_bytes()).payload_bytes())
    assert [a.source for a in snapshot.accelerators] == ["nvml"] * 8
    assert all(a.uuid and a.pci_device_id == "0x2330" for a in snapshot.accelerators)
    assert snapshot.extensions["recorded_fixtures"]["nvml"] == HGX_NVML.name
    verified = run("verify", str(out), "--state-dir", str(tmp_path))
    assert verified.returncode == 0, verified.stderr
    assert "valid signature" in verified.stdout


def test_gpu_on_the_bus_without_nvml_still_appears_in_the_evidence(tmp_path: Path) -> None:
    """Here NVML is the real library, absent on this machine: PCI entries remain, error recorded."""
    main(["init", "--state-dir", str(tmp_path)])
    out = tmp_path / "snap.json"
    result = run(
        "snapshot", "--state-dir", str(tmp_path), "--sys-root", str(HGX_SYSFS), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    _, snapshot = parse_statement(parse_envelope(out.read_bytes()).payload_bytes())
    assert len(snapshot.accelerators) == 8
    assert {a.source for a in snapshot.accelerators} == {"pci"}
    if not any(e.collector == "nvml" for e in snapshot.errors):
        pytest.skip("this machine has a working NVML library")
    assert any(e.code.startswith("nvml_") for e in snapshot.errors)


def test_snapshots_chain_and_verify_json_reports_the_digest(tmp_path: Path) -> None:
    main(["init", "--state-dir", str(tmp_path)])
    inv = str(FIXTURES / "inventory" / "h200-sxm-8.yaml")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        run(
            "snapshot", "--state-dir", str(tmp_path), "--inventory", inv, "--out", str(a)
        ).returncode
        == 0
    )
    assert (
        run(
            "snapshot", "--state-dir", str(tmp_path), "--inventory", inv, "--out", str(b)
        ).returncode
        == 0
    )
    first = json.loads(run("verify", str(a), "--state-dir", str(tmp_path), "--json").stdout)
    second = json.loads(run("verify", str(b), "--state-dir", str(tmp_path), "--json").stdout)
    assert second["statement"]["predicate"]["prev"] == first["digest"]
    assert second["statement"]["predicate"]["seq"] == 2
    assert {a["source"] for a in second["statement"]["predicate"]["accelerators"]} == {
        "inventory-file"
    }


def test_snapshot_to_stdout_is_the_envelope_and_summary_goes_to_stderr(tmp_path: Path) -> None:
    main(["init", "--state-dir", str(tmp_path)])
    result = run(
        "snapshot", "--state-dir", str(tmp_path), "--sys-root", str(FIXTURES / "sysfs" / "empty")
    )
    assert result.returncode == 0, result.stderr
    parse_envelope(result.stdout.strip().encode())
    assert "accelerators: 0" in result.stderr


def test_verify_exit_codes_distinguish_bad_signature_from_malformed(tmp_path: Path) -> None:
    main(["init", "--state-dir", str(tmp_path)])
    out = tmp_path / "s.json"
    run(
        "snapshot",
        "--state-dir",
        str(tmp_path),
        "--sys-root",
        str(FIXTURES / "sysfs" / "empty"),
        "--out",
        str(out),
    )
    envelope = json.loads(out.read_text())
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    tampered = tmp_path / "t.json"
    tampered.write_text(json.dumps(envelope))
    bad_sig = run("verify", str(tampered), "--state-dir", str(tmp_path))
    assert bad_sig.returncode == 1 and "error[bad_signature]" in bad_sig.stderr
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    malformed = run("verify", str(junk), "--state-dir", str(tmp_path))
    assert malformed.returncode == 2 and "error[malformed_json]" in malformed.stderr
    other = tmp_path / "other"
    main(["init", "--state-dir", str(other)])
    wrong_key = run("verify", str(out), "--pubkey", str(other / "agent.pub"))
    assert wrong_key.returncode == 1 and "error[unknown_key]" in wrong_key.stderr


def test_snapshot_without_a_key_says_to_run_init(tmp_path: Path) -> None:
    result = run("snapshot", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "error[no_key]" in result.stderr and "veu-agent init" in result.stderr


def test_usage_errors_exit_4(tmp_path: Path) -> None:
    assert run("snapshot", "--bogus").returncode == 4
    assert run().returncode == 4


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("colour = 'blue'\n")
    result = run("snapshot", "--config", str(cfg), "--state-dir", str(tmp_path))
    assert result.returncode == 4 and "error[config_unknown_key]" in result.stderr


def test_attest_without_enrollment_cannot_attest(tmp_path: Path) -> None:
    main(["init", "--state-dir", str(tmp_path)])
    result = run("attest", "--state-dir", str(tmp_path))
    assert result.returncode == 3
    assert "error[not_enrolled]" in result.stderr
