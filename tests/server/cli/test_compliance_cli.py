"""`veu-server` commands for the ledger, the model registry, status and on-demand attestation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "data"
    assert (
        run(capsys, "org", "add", "Acme", "--veu", "universal", "--hq", "US", "--data-dir", str(d))[
            0
        ]
        == 0
    )
    assert (
        run(
            capsys,
            "site",
            "add",
            "Acme",
            "fra-1",
            "--country",
            "DE",
            "--authorized-tpp",
            "1000000",
            "--data-dir",
            str(d),
        )[0]
        == 0
    )
    return d


def test_shipment_add_prints_the_id_and_its_tpp(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "shipment",
        "add",
        "--date",
        "2026-02-01",
        "--site",
        "fra-1",
        "--consignee",
        "Acme GmbH",
        "--chip-model",
        "NVIDIA H100 80GB HBM3",
        "--uuid",
        "GPU-1",
        "--uuid",
        "GPU-2",
        "--data-dir",
        str(data_dir),
    )
    assert code == 0, err
    assert out.strip().startswith("shp_") and "31,664 TPP" in err
    code, out, _ = run(capsys, "shipment", "list", "--json", "--data-dir", str(data_dir))
    assert code == 0 and json.loads(out)[0]["quantity"] == 2


def test_shipment_of_an_unknown_chip_is_a_clear_error(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "shipment",
        "add",
        "--date",
        "2026-02-01",
        "--site",
        "fra-1",
        "--consignee",
        "x",
        "--chip-model",
        "Imaginary 9000",
        "--quantity",
        "3",
        "--data-dir",
        str(data_dir),
    )
    assert code == 4 and "unknown_chip_model" in err and "Traceback" not in err


def test_model_add_hashes_files_and_explains_its_classification(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x08" + b"\x00" * 7 + b"{}      ")
    code, out, err = run(
        capsys,
        "model",
        "add",
        "frontier-1",
        "--training-ops",
        "3e26",
        "--file",
        str(weights),
        "--data-dir",
        str(data_dir),
    )
    assert code == 0, err
    assert "controlled" in err and out.strip().startswith("mdl_")
    code, out, _ = run(capsys, "model", "list", "--json", "--data-dir", str(data_dir))
    listed = json.loads(out)[0]
    assert listed["files"] == 1 and listed["controlled"] is True and listed["reason"]


def test_site_status_without_evidence_cannot_attest(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "site", "status", "fra-1", "--json", "--data-dir", str(data_dir))
    status = json.loads(out)
    assert code == 1 and status["status"] == "none" and status["installed_tpp"] == 0


def test_attest_request_for_a_site_without_hosts_says_so(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "attest-request", "fra-1", "--data-dir", str(data_dir))
    assert code == 1 and "no active hosts" in err
    code, _, err = run(capsys, "attest-request", "nowhere", "--data-dir", str(data_dir))
    assert code == 3 and "nowhere" in err


def test_site_authorize_and_org_status(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "site",
        "authorize",
        "fra-1",
        "--allow-model",
        "H100-SXM",
        "--data-dir",
        str(data_dir),
    )
    assert code == 0 and json.loads(out)["allowed_models"] == ["H100-SXM"]
    code, out, _ = run(capsys, "org", "status", "Acme", "--data-dir", str(data_dir))
    assert "denominator" in out and "Acme" in out


def test_site_authorize_demands_an_assurance_level_and_refuses_an_unknown_one(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("site", "authorize", "fra-1", "--data-dir", str(data_dir))
    code, out, _ = run(capsys, *base, "--minimum-assurance", "tpm-quoted")
    assert code == 0 and json.loads(out)["minimum_assurance"] == "tpm-quoted"
    code, _, err = run(capsys, *base, "--minimum-assurance", "tpm-bound")
    assert code != 0 and "bad_assurance" in err and "the ladder is declared" in err
    assert "Traceback" not in err
    code, out, _ = run(capsys, "site", "status", "fra-1", "--json", "--data-dir", str(data_dir))
    assert code == 1 and json.loads(out)["assurance"] is None  # no host has reported: unknown
    code, out, _ = run(capsys, "site", "status", "fra-1", "--data-dir", str(data_dir))
    assert "assurance unknown" in out


def test_policy_test_runs_the_shipped_pack_fixtures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "test")
    assert code == 0 and "PASS" in out


def test_policy_eval_judges_an_envelope_as_at_an_enrolled_site(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main as agent_main

    inventory = Path(__file__).resolve().parents[2] / "fixtures" / "inventory" / "h100-sxm-8.json"
    state = tmp_path / "agent"
    assert agent_main(["init", "--state-dir", str(state)]) == 0
    envelope = tmp_path / "snap.json"
    assert (
        agent_main(
            [
                "snapshot",
                "--state-dir",
                str(state),
                "--inventory",
                str(inventory),
                "--out",
                str(envelope),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code, out, _ = run(
        capsys,
        "policy",
        "eval",
        str(envelope),
        "--site",
        "fra-1",
        "--json",
        "--data-dir",
        str(data_dir),
    )
    result = json.loads(out)
    names = {f["condition_id"].split("/")[-1] for f in result["findings"]}
    # fra-1 is not a test site, so declared inventory cannot attest; 126,656 TPP fits 1,000,000.
    assert code == 1 and result["status"] == "none"
    assert "host.probed-evidence" in names and "site.authorized-tpp" not in names
    code, _, err = run(
        capsys, "policy", "eval", str(envelope), "--site", "nowhere", "--data-dir", str(data_dir)
    )
    assert code == 3 and "nowhere" in err and "Traceback" not in err
