"""Host key files and agent configuration."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent import keys
from agent.config import ConfigError, check_server_url, load_config, parse_duration, parse_size
from contract.keys import key_id as compute_key_id
from contract.keys import load_public_pem


def test_init_writes_a_0600_pkcs8_key_and_a_public_key(tmp_path: Path) -> None:
    key = keys.create(tmp_path)
    mode = stat.S_IMODE((tmp_path / keys.PRIVATE_NAME).stat().st_mode)
    assert mode == 0o600
    assert (tmp_path / keys.PRIVATE_NAME).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = load_public_pem((tmp_path / keys.PUBLIC_NAME).read_bytes())
    assert compute_key_id(pub) == compute_key_id(key.public_key())
    assert len(compute_key_id(pub)) == 64


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = keys.create(tmp_path)
    with pytest.raises(keys.KeyFileError) as err:
        keys.create(tmp_path)
    assert err.value.code == "key_exists"
    second = keys.create(tmp_path, force=True)
    assert compute_key_id(second.public_key()) != compute_key_id(first.public_key())


def test_a_group_readable_key_is_refused(tmp_path: Path) -> None:
    keys.create(tmp_path)
    os.chmod(tmp_path / keys.PRIVATE_NAME, 0o640)
    with pytest.raises(keys.KeyFileError) as err:
        keys.load(tmp_path)
    assert err.value.code == "key_permissions"
    assert "chmod 600" in err.value.detail


def test_missing_key_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError) as err:
        keys.load(tmp_path)
    assert err.value.code == "no_key" and "veu-agent init" in err.value.detail


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("2s", 2.0), ("15m", 900.0), ("1h", 3600.0), ("250ms", 0.25), (5, 5.0)],
)
def test_durations_accept_seconds_and_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1s", "0", "5 parsecs"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_duration(text)
    assert err.value.code == "bad_duration"


def test_sizes_accept_units() -> None:
    assert parse_size("256MiB") == 256 * 1024 * 1024
    assert parse_size(4096) == 4096
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_toml_config_then_flags_on_top(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'site_id = "site-a"\nweight_roots = ["/models"]\nserver_url = "https://v.example:8443"\n'
        'check_in_interval = "30s"\nreport_interval = "15m"\n'
        f'state_dir = "{tmp_path}"\n'
    )
    config = load_config(cfg, {"site_id": "site-b", "weight_roots": []})
    assert config.site_id == "site-b"
    assert config.weight_roots == [Path("/models")]
    assert config.check_in_interval == 30.0 and config.report_interval == 900.0
    assert config.state_dir == tmp_path


def test_unknown_config_key_is_an_error_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('site = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, {})
    assert err.value.code == "config_unknown_key" and "site" in err.value.detail


def test_malformed_toml_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("site_id = \n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, {})
    assert err.value.code == "config_malformed"


def test_plain_http_is_refused_except_to_loopback() -> None:
    check_server_url("http://127.0.0.1:8443", False)
    check_server_url("http://localhost:8443", False)
    check_server_url("https://verifier.example", False)
    with pytest.raises(ConfigError) as err:
        check_server_url("http://verifier.example", False)
    assert err.value.code == "insecure_http"
    check_server_url("http://verifier.example", True)


def test_init_without_a_tpm_writes_a_key_file_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent import tpm
    from agent.cli import main

    monkeypatch.delenv("VEU_TPM_TCTI", raising=False)
    monkeypatch.setattr(tpm, "DEVICE", tmp_path / "no-tpmrm0")
    assert main(["init", "--state-dir", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "no TPM found" in err and "self-reported" in err
    assert main(["init", "--tpm", "--state-dir", str(tmp_path / "t")]) != 0
    err = capsys.readouterr().err
    assert "no_tpm" in err and "Traceback" not in err
