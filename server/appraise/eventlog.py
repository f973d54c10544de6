"""The TCG PC Client measured-boot event log (crypto-agile format) parsed and replayed, and a
TPM2_Quote checked against PCR values, in pure Python.

Format (TCG PC Client Platform Firmware Profile, §10; little-endian): a first event in the SHA-1
layout (pcrIndex, eventType, a 20-byte digest, eventSize, event) whose event is the
``Spec ID Event03`` structure naming the digest algorithms and sizes; then TCG_PCR_EVENT2
records (pcrIndex, eventType, a count of {hashAlg, digest}, eventSize, event).

Replay: every PCR starts at zero, except that an ``EV_NO_ACTION`` ``StartupLocality`` event sets
PCR 0's last byte to the startup locality; ``EV_NO_ACTION`` events are not extended; each other
event extends ``PCR = H(PCR || digest)`` in each bank.

Bounded: at most :data:`MAX_LOG_BYTES` and :data:`MAX_EVENTS`; every length field is checked
against what is left before it is used (a 2^32 eventSize is ``event_log_truncated``); PCR
indexes above 23, unknown algorithms and digests that disagree with the Spec ID event's sizes are
refused. Each failure is :class:`EventLogError` with a stable code.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from contract.statement import quote_qualifying_data
from server.appraise.tpm import (
    ALG_SHA1,
    ALG_SHA256,
    ALG_SHA384,
    ALG_SHA512,
    ST_ATTEST_QUOTE,
    TpmFormatError,
    TpmPublic,
    parse_attest,
    verify_attest_signature,
)

MAX_LOG_BYTES = 16 * 1024 * 1024
MAX_EVENTS = 100_000
EV_NO_ACTION = 0x00000003
_SPEC_ID = b"Spec ID Event03\0"
_STARTUP_LOCALITY = b"StartupLocality\0"
_BANKS = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64}
BANK_IDS = {name: alg for alg, name in _BANKS.items()}


class EventLogError(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Event:
    pcr: int
    type: int
    #: Bank name to digest.
    digests: dict[str, bytes]
    data: bytes


@dataclass
class Replay:
    """The events and the PCR values they replay to, per bank (PCR index to value)."""

    events: list[Event] = field(default_factory=list)
    pcrs: dict[str, dict[int, bytes]] = field(default_factory=dict)

    def value(self, bank: str, pcr: int) -> bytes:
        return self.pcrs.get(bank, {}).get(pcr, b"\0" * _SIZES[BANK_IDS[bank]])


class _Le:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > len(self.data) - self.at:
            raise EventLogError(
                "event_log_truncated",
                f"{what} at offset {self.at} needs {n} bytes; {len(self.data) - self.at} left",
            )
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    def left(self) -> int:
        return len(self.data) - self.at


def _pcr_index(value: int) -> int:
    if value > 23:
        raise EventLogError("event_log_bad_pcr", f"an event names PCR {value}; PCRs are 0 to 23")
    return value


def parse_event_log(data: bytes) -> Replay:
    """Parse and replay a crypto-agile event log."""
    if len(data) > MAX_LOG_BYTES:
        raise EventLogError(
            "event_log_too_large", f"the event log is {len(data)} bytes; at most {MAX_LOG_BYTES}"
        )
    if not data:
        raise EventLogError("event_log_empty", "the event log is empty")
    r = _Le(data)
    _pcr_index(r.u32("first event PCR"))
    if r.u32("first event type") != EV_NO_ACTION:
        raise EventLogError("event_log_not_agile", "the first event is not the Spec ID event")
    r.take(20, "first event digest")
    spec = _Le(r.take(r.u32("first event size"), "Spec ID event"))
    if spec.take(16, "Spec ID signature") != _SPEC_ID:
        raise EventLogError("event_log_not_agile", "the log is not in the crypto-agile format")
    spec.take(8, "Spec ID header")  # platformClass, version, errata, uintnSize
    count = spec.u32("algorithm count")
    if count == 0 or count > len(_BANKS):
        raise EventLogError("event_log_bad_algorithms", f"the log names {count} algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, size = spec.u16("algorithm"), spec.u16("digest size")
        if _SIZES.get(alg) != size:
            raise EventLogError(
                "event_log_bad_algorithms", f"algorithm 0x{alg:04x} with digest size {size}"
            )
        sizes[alg] = size
    replay = Replay(pcrs={_BANKS[alg]: {} for alg in sizes})
    while r.left():
        if len(replay.events) >= MAX_EVENTS:
            raise EventLogError("event_log_too_large", f"more than {MAX_EVENTS} events")
        pcr = _pcr_index(r.u32("PCR index"))
        kind = r.u32("event type")
        n = r.u32("digest count")
        if n > len(sizes):
            raise EventLogError("event_log_bad_algorithms", f"an event carries {n} digests")
        digests: dict[str, bytes] = {}
        for _ in range(n):
            alg = r.u16("digest algorithm")
            if alg not in sizes:
                raise EventLogError(
                    "event_log_bad_algorithms", f"an event uses undeclared algorithm 0x{alg:04x}"
                )
            digests[_BANKS[alg]] = r.take(sizes[alg], "digest")
        payload = r.take(r.u32("event size"), "event data")
        event = Event(pcr, kind, digests, payload)
        replay.events.append(event)
        _apply(replay, event)
    return replay


@lru_cache(maxsize=256)
def replay_event_log(data: bytes) -> Replay:
    """:func:`parse_event_log`, remembered per log: a host sends the same boot log with every
    snapshot until it reboots, and replaying 100 events costs more than the rest of the quote
    check (bench/bench_tpm.py). Raises as parse_event_log does (failures are not kept). The
    replay returned is shared: callers only read it."""
    return parse_event_log(data)


def _apply(replay: Replay, event: Event) -> None:
    for bank, bank_pcrs in replay.pcrs.items():
        size = _SIZES[BANK_IDS[bank]]
        if event.type == EV_NO_ACTION:
            if event.pcr == 0 and event.data.startswith(_STARTUP_LOCALITY) and len(event.data) > 16:
                bank_pcrs[0] = b"\0" * (size - 1) + event.data[16:17]
            continue
        digest = event.digests.get(bank)
        if digest is None:
            raise EventLogError("event_log_bad_algorithms", f"an event has no {bank} digest")
        current = bank_pcrs.get(event.pcr, b"\0" * size)
        bank_pcrs[event.pcr] = hashlib.new(bank, current + digest).digest()


# --------------------------------------------------------------------------- quotes


@dataclass(frozen=True)
class QuoteFacts:
    """A verified quote's clock facts, for the caller's reset and restart rules."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    pcrs: dict[int, bytes]


def qualifying_data(nonce: str | None, inventory_digest: str) -> bytes:
    """SHA-256(nonce || inventory digest): binds a quote to one snapshot and one challenge
    (contract.statement.quote_qualifying_data)."""
    return quote_qualifying_data(nonce, inventory_digest)


def verify_quote(
    ak: TpmPublic,
    quoted: bytes,
    signature: bytes,
    bank: str,
    pcrs: dict[int, bytes],
    expected_qualifying_data: bytes,
) -> QuoteFacts:
    """The AK signed this quote; its qualifying data is the expected one; it selects exactly
    ``pcrs`` in ``bank``, and its PCR digest is SHA-256 of their values in index order.
    Raises :class:`TpmFormatError` (``quote_bad_signature``, ``quote_wrong_data``,
    ``quote_pcr_mismatch``)."""
    attest, body = parse_attest(quoted, "quote")
    if attest.type != ST_ATTEST_QUOTE:
        raise TpmFormatError("quote_malformed", "the quote is not a TPM2_Quote")
    try:
        verify_attest_signature(ak, body, signature)
    except TpmFormatError as exc:
        raise TpmFormatError("quote_bad_signature", exc.detail) from exc
    if not hmac.compare_digest(attest.extra_data, expected_qualifying_data):
        raise TpmFormatError(
            "quote_wrong_data", "the quote is not over this snapshot and nonce (qualifying data)"
        )
    selected = {s.bank: s.indexes for s in attest.pcr_selection}
    bank_id = BANK_IDS.get(bank)
    if bank_id is None or set(selected) != {bank_id} or set(selected[bank_id]) != set(pcrs):
        raise TpmFormatError(
            "quote_pcr_mismatch", "the quote selects other PCRs than the values sent"
        )
    recomputed = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
    if not hmac.compare_digest(recomputed, attest.pcr_digest):
        raise TpmFormatError(
            "quote_pcr_mismatch", "the PCR values sent are not the ones the TPM quoted"
        )
    return QuoteFacts(
        attest.clock, attest.reset_count, attest.restart_count, attest.safe, dict(pcrs)
    )


def replay_mismatches(replay: Replay, bank: str, pcrs: dict[int, bytes]) -> list[int]:
    """The quoted PCRs (among those the log measures into, 0-7 and any other it names) whose
    value is not what the log replays to."""
    measured = {e.pcr for e in replay.events}
    return sorted(i for i in pcrs if i in measured and replay.value(bank, i) != pcrs[i])
