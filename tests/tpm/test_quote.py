"""Quotes and measured boot for real: a recorded UEFI event log (Keylime's test data) replayed
into a software TPM's PCRs, quoted by the agent's attestation key over SHA-256(nonce || snapshot
digest), and verified in pure Python against the log's replay; and the ways a quote or a log can
be bad, each with its code."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.tpm.keys import TpmKeys, create, quote
from server.appraise.eventlog import (
    EV_NO_ACTION,
    EventLogError,
    parse_event_log,
    qualifying_data,
    replay_mismatches,
    verify_quote,
)
from server.appraise.tpm import TpmFormatError, parse_public
from tests.tpm.swtpm import Swtpm, require_pytss

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "tpm" / "event-logs"
UEFI_LOG = LOGS / "binary_bios_measurements"
DIGEST = hashlib.sha256(b"a snapshot").hexdigest()
NONCE = "ab" * 32


def _replay_into(tpm: Swtpm, log: bytes) -> None:
    """Extend every measured event of ``log`` into the TPM's SHA-256 bank, as firmware did."""
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES
    from tpm2_pytss.types import TPMT_HA, TPMU_HA

    with ESAPI(tpm.tcti) as ectx:
        for event in parse_event_log(log).events:
            if event.type == EV_NO_ACTION:
                continue
            value = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=event.digests["sha256"]))
            ectx.pcr_extend(ESYS_TR.PCR0 + event.pcr, TPML_DIGEST_VALUES([value]))


@pytest.fixture
def keys(swtpm: Swtpm, tmp_path: Path) -> TpmKeys:
    require_pytss()
    return create(tmp_path / "agent", swtpm.tcti)


def _pcrs(q: object) -> dict[int, bytes]:
    return {int(i): bytes.fromhex(v) for i, v in q.pcrs.items()}


def test_a_quote_of_the_replayed_uefi_log_verifies_against_the_logs_replay(
    swtpm: Swtpm, keys: TpmKeys
) -> None:
    log = UEFI_LOG.read_bytes()
    _replay_into(swtpm, log)
    made = quote(keys, qualifying_data(NONCE, DIGEST))
    ak = parse_public(base64.b64decode(keys.ak_public))
    facts = verify_quote(
        ak,
        base64.b64decode(made.quoted),
        base64.b64decode(made.signature),
        made.bank,
        _pcrs(made),
        qualifying_data(NONCE, DIGEST),
    )
    replay = parse_event_log(log)
    # PCRs 1-7 are exactly the log's replay. PCR 0 is not: this platform started its TPM at
    # locality 3 (the log's StartupLocality event), so its PCR 0 began at 00..03, while a
    # software TPM starts at locality 0; the replay follows the log, as the platform's TPM did.
    assert replay_mismatches(replay, "sha256", facts.pcrs) == [0]
    assert replay.value("sha256", 0)[:8].hex() == "0ee9a7feba8f4172"
    assert set(facts.pcrs) == {0, 1, 2, 3, 4, 5, 6, 7, 16}


def test_a_quote_over_another_snapshot_or_nonce_is_refused(keys: TpmKeys) -> None:
    made = quote(keys, qualifying_data(NONCE, DIGEST))
    ak = parse_public(base64.b64decode(keys.ak_public))
    args = (
        ak,
        base64.b64decode(made.quoted),
        base64.b64decode(made.signature),
        made.bank,
        _pcrs(made),
    )
    for other in (qualifying_data(NONCE, "00" * 32), qualifying_data(None, DIGEST)):
        with pytest.raises(TpmFormatError) as caught:
            verify_quote(*args, other)
        assert caught.value.code == "quote_wrong_data"


def test_pcrs_altered_after_the_quote_are_refused(keys: TpmKeys) -> None:
    made = quote(keys, qualifying_data(NONCE, DIGEST))
    ak = parse_public(base64.b64decode(keys.ak_public))
    altered = {**_pcrs(made), 7: b"\x01" * 32}
    with pytest.raises(TpmFormatError) as caught:
        verify_quote(ak, base64.b64decode(made.quoted), base64.b64decode(made.signature),
                     made.bank, altered, qualifying_data(NONCE, DIGEST))  # fmt: skip
    assert caught.value.code == "quote_pcr_mismatch"
    fewer = {i: v for i, v in _pcrs(made).items() if i != 16}
    with pytest.raises(TpmFormatError) as caught:
        verify_quote(ak, base64.b64decode(made.quoted), base64.b64decode(made.signature),
                     made.bank, fewer, qualifying_data(NONCE, DIGEST))  # fmt: skip
    assert caught.value.code == "quote_pcr_mismatch"


def test_a_quote_from_another_tpm_does_not_verify_with_this_hosts_ak(
    keys: TpmKeys, make_swtpm: Callable[..., Swtpm], tmp_path: Path
) -> None:
    theirs = create(tmp_path / "other", make_swtpm(fresh=True).tcti)
    made = quote(theirs, qualifying_data(NONCE, DIGEST))
    with pytest.raises(TpmFormatError) as caught:
        verify_quote(parse_public(base64.b64decode(keys.ak_public)),
                     base64.b64decode(made.quoted), base64.b64decode(made.signature), made.bank,
                     _pcrs(made), qualifying_data(NONCE, DIGEST))  # fmt: skip
    assert caught.value.code == "quote_bad_signature"


def test_a_reboot_shows_in_the_quote_and_an_unorderly_one_clears_safe(
    swtpm: Swtpm, keys: TpmKeys
) -> None:
    ak = parse_public(base64.b64decode(keys.ak_public))

    def facts() -> object:
        made = quote(keys, qualifying_data(NONCE, DIGEST))
        return verify_quote(ak, base64.b64decode(made.quoted), base64.b64decode(made.signature),
                            made.bank, _pcrs(made), qualifying_data(NONCE, DIGEST))  # fmt: skip

    before = facts()
    swtpm.reboot(orderly=False)
    after = facts()
    assert after.reset_count == before.reset_count + 1
    assert not after.safe


def _event(pcr: int, kind: int, digest: bytes, data: bytes, size: int | None = None) -> bytes:
    n = len(data) if size is None else size
    return (
        struct.pack("<III", pcr, kind, 1)
        + struct.pack("<H", 0x000B)
        + digest
        + struct.pack("<I", n)
        + data
    )


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda log: log[:-7], "event_log_truncated"),
        (lambda log: log + _event(4, 13, b"\0" * 32, b"", size=2**32 - 1), "event_log_truncated"),
        (lambda log: log + _event(24, 13, b"\0" * 32, b""), "event_log_bad_pcr"),
        (
            lambda log: log + struct.pack("<III", 4, 13, 1) + struct.pack("<H", 0x0099),
            "event_log_bad_algorithms",
        ),
        (lambda log: b"", "event_log_empty"),
        (lambda log: (LOGS / "binary_bios_measurements-bogus").read_bytes(), "event_log_bad_pcr"),
    ],
)
def test_truncated_or_hostile_event_logs_are_refused_with_a_code(
    mangle: Callable[[bytes], bytes], code: str
) -> None:
    with pytest.raises(EventLogError) as caught:
        parse_event_log(mangle(UEFI_LOG.read_bytes()))
    assert caught.value.code == code


def test_the_secure_boot_log_replays() -> None:
    replay = parse_event_log((LOGS / "binary_bios_measurements-secureboot").read_bytes())
    assert len(replay.events) == 98 and set(replay.pcrs) == {"sha256"}
    assert replay.value("sha256", 7)[:8].hex() == "2f96e1f1bf7f91b6"
