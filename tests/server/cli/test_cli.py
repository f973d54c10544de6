"""veu-server commands: records, secrets printed once, clear errors and exit codes, serve."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent.client import VerifierClient
from contract.results import verify_result
from tests.server.builders import HostKit
from tests.server.conftest import Fleet, run_cli


def test_db_upgrade_brings_a_fresh_data_dir_to_the_latest_revision(tmp_path: Path) -> None:
    out = run_cli("db", "upgrade", "--data-dir", str(tmp_path))
    from server.store.migrate import head_revision

    assert out.stdout.strip().endswith(str(head_revision()))
    assert (tmp_path / "veu.sqlite3").exists()


def test_org_and_site_commands_validate_country_codes(tmp_path: Path) -> None:
    bad = run_cli(
        "org",
        "add",
        "Acme",
        "--veu",
        "universal",
        "--hq",
        "ZZ",
        "--data-dir",
        str(tmp_path),
        check=False,
    )
    assert bad.returncode == 4 and "ISO 3166" in bad.stderr and "Traceback" not in bad.stderr
    run_cli("org", "add", "Acme", "--veu", "national", "--hq", "us", "--data-dir", str(tmp_path))
    dup = run_cli(
        "org",
        "add",
        "Acme",
        "--veu",
        "national",
        "--hq",
        "US",
        "--data-dir",
        str(tmp_path),
        check=False,
    )
    assert dup.returncode == 6 and "error[exists]" in dup.stderr
    listed = run_cli("org", "list", "--data-dir", str(tmp_path)).stdout
    assert "Acme\tnational\thq=US" in listed


def test_an_unknown_site_is_exit_code_3(tmp_path: Path) -> None:
    out = run_cli("enroll-token", "create", "nowhere", "--data-dir", str(tmp_path), check=False)
    assert out.returncode == 3 and "unknown_site" in out.stderr


def test_a_bad_ttl_is_a_usage_error(tmp_path: Path) -> None:
    out = run_cli(
        "enroll-token", "create", "x", "--ttl", "soon", "--data-dir", str(tmp_path), check=False
    )
    assert out.returncode == 4 and "duration" in out.stderr


def test_secrets_are_printed_once_as_the_last_line_and_work(fleet: Fleet) -> None:
    hosts = httpx.get(
        f"{fleet.server.url}/v1/hosts", headers={"Authorization": f"Bearer {fleet.auditor_key}"}
    )
    assert hosts.status_code == 200
    assert fleet.token().startswith("veu_et_")


def test_agent_enroll_and_attest_round_trip_through_the_client(fleet: Fleet) -> None:
    kit = HostKit(fleet.site_id)
    with VerifierClient(fleet.server.url) as client:
        enrolled = client.enroll(fleet.token(), kit.key, host=kit.enroll_body("x")["host"])
        assert enrolled["key_id"] == kit.key_id
        nonce = client.challenge(kit.key, kit.key_id)["nonce"]
        result = client.submit(kit.next_envelope(nonce=nonce))
        assert result.status_code == 200 and result.result is not None
        claims = verify_result(result.result, enrolled["verifier_key"])  # type: ignore[arg-type]
        assert claims["submods"]["veu-snapshot"]["nonce"] == nonce
        assert client.checkin(kit.key, kit.key_id)["pending_challenge"] is None


def test_agent_list_and_revoke(fleet: Fleet) -> None:
    kit = HostKit(fleet.site_id)
    fleet.enroll(kit)
    assert f"{kit.key_id}\tactive" in fleet.server.cli("agent", "list").stdout
    fleet.server.cli("agent", "revoke", kit.key_id)
    assert f"{kit.key_id}\trevoked" in fleet.server.cli("agent", "list").stdout
    response = httpx.post(
        f"{fleet.server.url}/v1/snapshots",
        content=kit.next_envelope(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 403 and response.json()["code"] == "revoked_key"


def test_audit_verify_passes_on_an_intact_log_and_fails_on_a_tampered_one(fleet: Fleet) -> None:
    fleet.enroll(HostKit(fleet.site_id))
    ok = fleet.server.cli("audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout
    from server.store.db import make_engine

    url = fleet.server.database_url
    engine = make_engine(url)
    with engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2"))
    engine.dispose()
    broken = fleet.server.cli("audit", "verify", check=False)
    assert broken.returncode == 1 and "row 2" in broken.stderr


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veu-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_serve_with_tls_answers_https_verified_by_the_given_ca(tmp_path: Path) -> None:
    from tests.server.conftest import start_server, stop_server

    cert, key = _self_signed(tmp_path)
    data = tmp_path / "data"
    server = start_server(
        data,
        f"sqlite:///{data / 'veu.sqlite3'}",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        ca_file=cert,
    )
    try:
        assert server.url.startswith("https://")
        with VerifierClient(server.url, verify=str(cert)) as client:
            assert client.verifier_key()["alg"] == "EdDSA"
        answer = httpx.get(f"{server.url}/healthz", verify=str(cert))
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
    finally:
        stop_server(server)


def test_serve_refuses_plain_http_on_a_public_address_without_the_explicit_flag(
    tmp_path: Path,
) -> None:
    out = run_cli("serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0", check=False)
    assert out.returncode == 4, out.stderr
    assert out.stderr.startswith("error[plain_http_public]: --host 0.0.0.0 is not a loopback")
    assert "Traceback" not in out.stderr


def test_serve_on_a_public_address_with_the_flag_warns_loudly(tmp_path: Path) -> None:
    from tests.server.conftest import start_server, stop_server

    data = tmp_path / "data"
    server = start_server(
        data, f"sqlite:///{data / 'veu.sqlite3'}", "--host", "0.0.0.0", "--allow-plain-http"
    )
    try:
        assert "WARNING: serving plain HTTP on 0.0.0.0" in server.log.read_text()
        assert "strict-transport-security" not in httpx.get(f"{server.url}/healthz").headers
    finally:
        stop_server(server)


def _sign_in_over_a_proxy(url: str, admin_key: str) -> httpx.Response:
    """Sign in as a browser behind a TLS-terminating proxy would (X-Forwarded-Proto: https)."""
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    form = httpx.get(f"{url}/dashboard/login", headers=proxied)
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    # The browser is on HTTPS and sends its Secure pre-session cookie back; httpx, on the
    # proxy's plain-HTTP side, would not, so it is sent by hand.
    nonce = form.cookies["veu_login"]
    return httpx.post(
        f"{url}/dashboard/login",
        data={"api_key": admin_key, "csrf": csrf},
        headers={**proxied, "Cookie": f"veu_login={nonce}"},
    )


@pytest.mark.parametrize(("trusted", "secure"), [(None, True), ("192.0.2.1", False)])
def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy(
    tmp_path: Path, trusted: str | None, secure: bool
) -> None:
    from tests.server.conftest import make_fleet, start_server, stop_server

    data = tmp_path / "data"
    extra = ("--trusted-proxy", trusted) if trusted else ()
    server = start_server(data, f"sqlite:///{data / 'veu.sqlite3'}", *extra)
    try:
        fleet = make_fleet(server)
        answer = _sign_in_over_a_proxy(server.url, fleet.admin_key)
        assert answer.status_code == 303, answer.text[:200]
        cookie = next(c for c in answer.headers.get_list("set-cookie") if "veu_session" in c)
        assert ("Secure" in cookie) is secure
        assert ("strict-transport-security" in answer.headers) is secure
    finally:
        stop_server(server)


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    out = run_cli("serve", "--data-dir", str(tmp_path), "--workers", "2", check=False)
    assert out.returncode == 4 and "PostgreSQL" in out.stderr


def test_a_bad_setting_in_the_environment_is_a_clear_error(tmp_path: Path) -> None:
    for name, value in (
        ("VEU_SETTLE_INTERVAL", "abc"),
        ("VEU_REFRESH_INTERVAL", "-1"),
        ("VEU_MAX_BODY_BYTES", "lots"),
        ("VEU_SETTLE_INTERVAL", "inf"),
    ):
        out = run_cli("site", "list", "--data-dir", str(tmp_path), check=False, env={name: value})
        assert out.returncode == 4, out.stderr
        assert out.stderr.startswith(f"error[bad_config]: {name} "), out.stderr
        assert "Traceback" not in out.stderr
    ok = run_cli("site", "list", "--data-dir", str(tmp_path), env={"VEU_SETTLE_INTERVAL": "0"})
    assert ok.returncode == 0
