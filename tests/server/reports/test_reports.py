"""Semi-annual reports: contents, formats, detached signatures, and the CLI."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server import reports
from server.cli import main
from server.errors import VeuError
from server.policy import PolicySet
from tests.server.api.dashboard.conftest import Env, make_env

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path, policy: PolicySet) -> Env:
    e = make_env(tmp_path, policy)
    yield e  # type: ignore[misc]
    e.svc.db.dispose()


def _report(env: Env, period: str) -> dict:  # type: ignore[type-arg]
    with env.svc.db.read() as s:
        return reports.build_report(
            s, env.policy, env.fleet.org_id, reports.Period.parse(period), NOW
        )


def test_period_labels_map_to_half_years() -> None:
    h1 = reports.Period.parse("2026H1")
    assert (h1.start.isoformat(), h1.end.isoformat()) == ("2026-01-01", "2026-06-30")
    assert reports.Period.parse("2026h2").previous().label == "2026H1"
    assert h1.previous().label == "2025H2"
    with pytest.raises(VeuError):
        reports.Period.parse("2026Q1")


def test_report_lists_installed_chips_per_site_and_country(env: Env) -> None:
    data = _report(env, "2026H2")
    by_site = {(x["site_name"], x["chip"]): (x["count"], x["tpp"]) for x in data["installed"]}
    assert by_site[("us-east", "nvidia-h100-sxm")] == (24, 3 * 126_656)
    assert by_site[("over-ams", "nvidia-h100-sxm")] == (8, 126_656)
    countries = {x["country"]: x["tpp"] for x in data["installed_by_country"]}
    assert countries == {"US": 379_968, "DE": 253_312, "NL": 126_656, "AE": 126_656}
    assert data["hosts_counted"] == 7


def test_report_states_distribution_with_its_denominator(env: Env) -> None:
    d = _report(env, "2026H2")["distribution"]
    assert d["total_tpp"] == 886_592
    assert "886,592 TPP" in d["denominator"]
    assert (d["tier1_min"], d["us_min"], d["non_tier1_max"]) == (0.75, 0.5, 0.07)
    ae = next(c for c in d["countries"] if c["country"] == "AE")
    assert ae["tier1"] is False and ae["within"] is False and ae["share"] > 0.07
    assert d["us_ok"] is False  # 42.9% < 50% with U.S. headquarters


def test_report_changes_since_the_previous_period(env: Env) -> None:
    # Every host reported first on 2026-03-01: all of 2026H1 is new against 2025H2.
    changes = _report(env, "2026H1")["changes_since_previous_period"]
    assert {c["site_name"] for c in changes} == {"us-east", "de-fra", "over-ams", "ae-dxb"}
    assert all(c["previous_count"] == 0 and c["delta_count"] > 0 for c in changes)
    assert _report(env, "2026H2")["changes_since_previous_period"] == []


def test_report_lists_findings_open_during_the_period_and_unconfirmed_figures(env: Env) -> None:
    h1 = _report(env, "2026H1")
    conditions = {f["condition_id"] for f in h1["findings"]}
    assert "ai-diffusion-2025/site.authorized-tpp" in conditions  # opened 2026-05-02
    assert "ai-diffusion-2025/site.hosts-fresh" not in conditions  # closed 2025-10-03
    earlier = _report(env, "2025H2")
    assert "ai-diffusion-2025/site.hosts-fresh" in {f["condition_id"] for f in earlier["findings"]}
    tpp = next(f for f in h1["findings"] if f["condition_id"].endswith("site.authorized-tpp"))
    assert tpp["unconfirmed_figures"] is True and tpp["citation"]
    assert h1["findings_on_unconfirmed_figures"] >= 1


def test_report_names_policy_packs_and_says_the_rescinded_pack_is_not_enforced(env: Env) -> None:
    packs = _report(env, "2026H2")["policy"]["packs"]
    pack = next(p for p in packs if p["id"] == "ai-diffusion-2025")
    assert pack["version"] and pack["status"] == "rescinded-not-enforced"
    assert pack["enforced"] is False and "rescind" in pack["status_note"]


def test_future_period_and_unknown_org_are_refused(env: Env) -> None:
    with pytest.raises(VeuError) as exc:
        _report(env, "2027H2")
    assert exc.value.code == "future_period"
    with env.svc.db.read() as s, pytest.raises(VeuError) as exc:
        reports.build_report(s, env.policy, "nope", reports.Period.parse("2026H1"), NOW)
    assert exc.value.code == "not_found"


@pytest.mark.parametrize("fmt", ["pdf", "csv", "json"])
def test_each_format_is_signed_and_verifies_and_tampering_fails(
    env: Env, fmt: str, tmp_path: Path
) -> None:
    written = reports.write_signed(
        env.svc.db, env.policy, env.svc.key, env.fleet.org_id, "2026H1", fmt, tmp_path, NOW
    )
    body, sig = written.path.read_bytes(), written.signature.read_bytes()
    assert reports.verify_report(body, sig, env.svc.key.public)
    assert not reports.verify_report(body[:-1] + bytes([body[-1] ^ 1]), sig, env.svc.key.public)
    other = Ed25519PrivateKey.generate().public_key()
    assert not reports.verify_report(body, sig, other)
    assert not reports.verify_report(body, b"not a signature", env.svc.key.public)
    if fmt == "pdf":
        assert body.startswith(b"%PDF-")
        assert b"rescinded-not-enforced" in body or len(body) > 2000
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        sections = [r[0] for r in rows if r and r[0].startswith("# ")]
        assert sections[1:] == [
            "# installed",
            "# installed_by_country",
            "# changes_since_previous_period",
            "# distribution",
            "# findings_by_condition",
            "# findings",
            "# assurance",
        ]
        assert any(r[:1] == ["denominator"] for r in rows)
    else:
        assert json.loads(body)["organization"]["name"] == "Acme AI"


def test_bare_64_byte_signature_over_the_digest_also_verifies(env: Env) -> None:
    import hashlib

    body = b"report"
    sig = env.svc.key.private.sign(hashlib.sha256(body).digest())
    assert reports.verify_report(body, sig, env.svc.key.public)


def _cli(*argv: str) -> int:
    return main(list(argv))


def test_cli_writes_a_report_and_verifies_it(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "acme-2026H1.pdf"
    data_dir = str(env.data_dir)
    assert (
        _cli(
            "report",
            "--data-dir",
            data_dir,
            "--org",
            "Acme AI",
            "--period",
            "2026H1",
            "--format",
            "pdf",
            "--out",
            str(out),
        )
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    sig = Path(f"{out}.sig")
    assert _cli("report", "verify", str(out), str(sig), "--data-dir", data_dir) == 0
    pem = tmp_path / "verifier.pub"
    pem.write_text(env.svc.key.public_pem())
    assert _cli("report", "verify", str(out), str(sig), "--pubkey", str(pem)) == 0
    out.write_bytes(out.read_bytes() + b"\n")
    assert _cli("report", "verify", str(out), str(sig), "--pubkey", str(pem)) == 1


def test_cli_usage_errors_have_codes(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = str(env.data_dir)
    assert _cli("report", "--data-dir", data_dir, "--org", "Acme AI") == 4
    assert _cli("report", "--data-dir", data_dir, "--org", "nope", "--period", "2026H1") == 3
    assert _cli("report", "--data-dir", data_dir, "--org", "Acme AI", "--period", "26H1") == 4
    assert _cli("report", "verify", "/nonexistent", "/nonexistent.sig") == 3
    assert "error[" in capsys.readouterr().err


def test_csv_and_json_reports_show_control_characters_and_neutralize_formulas(env: Env) -> None:
    data = _report(env, "2026H1")
    hostile = '=HYPERLINK("http://x")\u202egnp.exe\x1b]52;c;QUFB\x07'
    data["findings"][0]["subject"] = hostile
    data["findings"][0]["message"] = "@SUM(A1)"
    data["installed"][0]["site_name"] = "-2+3"
    text = reports.render_csv(data).decode()
    assert "\u202e" not in text and "\x1b" not in text and "\x07" not in text
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    assert '\'=HYPERLINK("http://x")\\u202egnp.exe\\x1b]52;c;QUFB\\x07' in cells
    assert "'@SUM(A1)" in cells and "'-2+3" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    raw = reports.render_json(data).decode()
    assert "\u202e" not in raw and "\x1b" not in raw and "\\u202e" in raw
    assert json.loads(raw)["findings"][0]["subject"] == hostile  # the same data, shown safely


def test_a_report_lists_findings_up_to_its_limit_and_counts_them_all(env: Env) -> None:
    full = _report(env, "2026H1")
    assert full["findings_total"] == len(full["findings"]) >= 1
    with env.svc.db.read() as s:
        capped = reports.build_report(
            s, env.policy, env.fleet.org_id, reports.Period.parse("2026H1"), NOW, max_findings=0
        )
    assert capped["findings"] == []
    assert capped["findings_total"] == full["findings_total"]
    assert sum(c["count"] for c in capped["findings_by_condition"]) == full["findings_total"]
    assert "# findings_by_condition" in reports.render_csv(capped).decode()
    assert reports.render_pdf(capped).startswith(b"%PDF")
