"""`veu-server shipment add --lab-test REF`: the U.S. third-party lab test record of a shipment
(91 FR 1684), stored with it and shown by `shipment list`; a bad reference is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server.cli.test_compliance_cli import data_dir, run  # noqa: F401 (fixture)


def _add(capsys: pytest.CaptureFixture[str], d: Path, *extra: str) -> tuple[int, str, str]:
    return run(
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
        *extra,
        "--data-dir",
        str(d),
    )


def test_lab_test_record_is_stored_and_listed(
    data_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _add(capsys, data_dir, "--lab-test", "USLAB-2026-0042")
    assert code == 0, err
    code, out, _ = run(capsys, "shipment", "list", "--json", "--data-dir", str(data_dir))
    assert code == 0 and json.loads(out)[0]["lab_test"] == "USLAB-2026-0042"


def test_an_unprintable_lab_test_reference_is_refused_with_its_code(
    data_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _add(capsys, data_dir, "--lab-test", "bad\x07ref")
    assert code != 0 and "bad_lab_test" in err and "Traceback" not in err
    code, out, _ = run(capsys, "shipment", "list", "--json", "--data-dir", str(data_dir))
    assert code == 0 and json.loads(out) == []
