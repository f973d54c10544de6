"""The snapshot predicate (pydantic models, ``extra="forbid"``): what one host says about itself.

Versioning: the predicate type is a versioned URI. :data:`PREDICATE_MODELS` maps each known type to
its model, and envelopes of every listed version stay verifiable with their meaning.

- v1 (:class:`SnapshotV1`): the inventory, signed by the host key.
- v2 (:class:`SnapshotV2`): v1 plus an optional ``evidence`` section carrying what hardware
  vouches for (TPM: the attestation key's public area, the certified snapshot key, a quote with
  its PCR values, the measured-boot event log and the IMA log). A v2 without ``evidence`` means
  exactly what a v1 means. Every v1 field keeps its meaning in v2.

Each model's ``predicate_type()`` names its URI, so the statement of a snapshot is built with the
type it was made as. The ``assurance`` field of an accelerator is the agent's own statement; only
``declared`` is taken from it (a downgrade). The level a claim reaches is the verifier's
(:mod:`contract.assurance`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from contract._model import Strict as _Strict
from contract.timestamps import parse_timestamp

PREDICATE_TYPE_V1 = "https://veu-attest.dev/snapshot/v1"
PREDICATE_TYPE_V2 = "https://veu-attest.dev/snapshot/v2"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_HEX = re.compile(r"^(?:[0-9a-f]{2})+$")
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


#: An accelerator's own statement of its evidence (v1's vocabulary, kept as it was). The verifier
#: reads only ``declared`` from it; the ladder of levels reached is contract.assurance.Level.
Assurance = Literal[
    "declared",  # typed in by a person (inventory file): not probed at all
    "self-reported",  # probed by the host and signed with a key on its disk
    "tpm-bound",  # v1 reserved it; the verifier never credits an agent's claim of it
    "hardware-attested",  # v1 reserved it; the verifier never credits an agent's claim of it
]


class AgentInfo(_Strict):
    key_id: str
    version: str

    @field_validator("key_id")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("key_id must be 64 lowercase hex characters")
        return v


class HostInfo(_Strict):
    hostname: str | None = None
    machine_id: str | None = None
    boot_id: str | None = None
    os: str | None = None
    kernel: str | None = None
    arch: str | None = None
    uptime_s: int | None = None


class Accelerator(_Strict):
    """One device. Unknown values are null, never invented."""

    vendor: str | None = None
    model: str | None = None
    pci_vendor_id: str | None = None  # "0x10de"
    pci_device_id: str | None = None  # "0x2330"
    pci_class: str | None = None  # "0x030200"
    pci_bus_id: str | None = None  # "0000:18:00.0"
    uuid: str | None = None
    serial: str | None = None
    board_part_number: str | None = None
    vbios_version: str | None = None
    driver_version: str | None = None
    memory_mib: int | None = None
    architecture: str | None = None
    source: Literal["nvml", "pci", "inventory-file"]
    assurance: Assurance = "self-reported"


class Encryption(_Strict):
    status: Literal["encrypted", "unencrypted", "unknown"]
    method: str | None = None  # "dm-crypt/LUKS2", "dm-crypt", "fscrypt"
    determined_by: str | None = None  # what was read to decide
    reason: str | None = None  # why unknown


class HeaderFacts(_Strict):
    tensor_count: int | None = None
    parameter_count: int | None = None
    dtypes: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)


class FileError(_Strict):
    code: str
    detail: str


WeightFormat = Literal["safetensors", "gguf", "pytorch-zip", "pytorch-pickle", "onnx"]


class WeightFile(_Strict):
    path: str  # UTF-8; undecodable bytes appear as \\xNN and path_b64 holds the raw name
    path_b64: str | None = None
    size: int
    mtime: str
    mode: str  # octal permission bits, e.g. "0640"
    uid: int
    gid: int
    owner: str | None = None
    sha256: str | None = None  # null when the file could not be hashed (see error)
    format: WeightFormat
    header: HeaderFacts | None = None
    error: FileError | None = None


def _absent(value: object) -> bool:
    """A field added to snapshot v1 after its first release, with nothing to report."""
    return value is None or value == []


class UnidentifiedFile(_Strict):
    """A regular file under a weight root whose bytes match no weight format and whose name
    suggests none: listed (with its digest, so it can be registered) when it is large."""

    path: str
    path_b64: str | None = None
    size: int
    mtime: str
    sha256: str | None = None  # null when the file could not be read (see error)
    error: FileError | None = None


class StorageRoot(_Strict):
    root: str
    mount_point: str | None = None
    device: str | None = None
    filesystem: str | None = None
    encryption: Encryption
    file_count: int
    total_bytes: int
    files: list[WeightFile]
    #: Every other regular file under the root, counted. None (not 0): an agent from before
    #: this count existed, which said nothing about such files. Left out of the JSON when not
    #: reported, so an envelope with nothing new to say is one an older verifier accepts too.
    unidentified_count: int | None = Field(None, exclude_if=_absent)
    unidentified_bytes: int | None = Field(None, exclude_if=_absent)
    #: The unidentified files of at least ``unidentified_listed_from`` bytes, with digests.
    unidentified_listed_from: int | None = Field(None, exclude_if=_absent)
    unidentified: list[UnidentifiedFile] = Field(default_factory=list, exclude_if=_absent)


class Socket(_Strict):
    proto: Literal["tcp", "tcp6", "udp", "udp6"]
    address: str
    port: int


class Posture(_Strict):
    secure_boot: bool | None = None
    tpm_present: bool | None = None
    tpm_version: str | None = None
    listening_sockets: list[Socket] | None = None


class CollectorError(_Strict):
    collector: str
    code: str
    detail: str


class SnapshotV1(_Strict):
    """The predicate of a snapshot statement, version 1."""

    @classmethod
    def predicate_type(cls) -> str:
        return PREDICATE_TYPE_V1

    agent: AgentInfo
    site_id: str | None
    host: HostInfo
    seq: int = Field(ge=1)
    prev: str | None
    nonce: str | None
    collected_at: str
    accelerators: list[Accelerator]
    storage: list[StorageRoot]
    posture: Posture
    errors: list[CollectorError]
    key_protection: Literal["file", "tpm"] = "file"
    #: Reserved for evidence this version does not produce yet (TPM quote, GPU reports, RTT
    #: location bounds). Always empty in v1 agents; the verifier ignores unknown sections.
    extensions: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prev")
    @classmethod
    def _prev_hex(cls, v: str | None) -> str | None:
        if v is not None and not _HEX64.match(v):
            raise ValueError("prev must be 64 lowercase hex characters or null")
        return v

    @field_validator("collected_at")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        if not _RFC3339_UTC.match(v):
            raise ValueError("collected_at must be RFC 3339 UTC, e.g. 2026-01-01T00:00:00Z")
        return v

    def collected_at_datetime(self) -> datetime:
        return parse_timestamp(self.collected_at)


def _b64(value: str, what: str) -> str:
    if not _B64.match(value) or len(value) % 4:
        raise ValueError(f"{what} must be standard base64")
    return value


class TpmCertifiedKey(_Strict):
    """The snapshot-signing key and the attestation key's TPM2_Certify of it."""

    #: TPM2B_PUBLIC of the key, base64.
    public: str
    #: TPM2B_ATTEST (TPMS_ATTEST of type certify), base64.
    certify_info: str
    #: TPMT_SIGNATURE by the attestation key over ``certify_info``, base64.
    signature: str

    @field_validator("public", "certify_info", "signature")
    @classmethod
    def _base64(cls, v: str) -> str:
        return _b64(v, "certified key fields")


class TpmQuote(_Strict):
    """A TPM2_Quote and the PCR values it covers."""

    #: TPM2B_ATTEST (TPMS_ATTEST of type quote), base64.
    quoted: str
    #: TPMT_SIGNATURE by the attestation key over ``quoted``, base64.
    signature: str
    #: The PCR bank the values are read from.
    bank: Literal["sha1", "sha256", "sha384", "sha512"]
    #: PCR index (decimal, "0".."23") to its value, lowercase hex.
    pcrs: dict[str, str]

    @field_validator("quoted", "signature")
    @classmethod
    def _base64(cls, v: str) -> str:
        return _b64(v, "quote fields")

    @field_validator("pcrs")
    @classmethod
    def _pcrs(cls, v: dict[str, str]) -> dict[str, str]:
        for index, value in v.items():
            if not index.isdigit() or int(index) > 23 or str(int(index)) != index:
                raise ValueError("PCR indexes are decimal 0 to 23")
            if not _HEX.match(value):
                raise ValueError("PCR values are lowercase hex")
        return v


class TpmEvidence(_Strict):
    #: TPM2B_PUBLIC of the attestation key, base64.
    ak_public: str
    certified_key: TpmCertifiedKey | None = None
    quote: TpmQuote | None = None
    #: The measured-boot event log (TCG PC Client binary format), base64.
    event_log: str | None = None
    #: The IMA measurement list (ASCII format), base64.
    ima_log: str | None = None

    @field_validator("ak_public", "event_log", "ima_log")
    @classmethod
    def _base64(cls, v: str | None) -> str | None:
        return None if v is None else _b64(v, "TPM evidence fields")


class Evidence(_Strict):
    """What hardware vouches for. Sections a verifier does not check earn no level."""

    tpm: TpmEvidence | None = None


class SnapshotV2(SnapshotV1):
    """The predicate of a snapshot statement, version 2: v1 and an optional evidence section."""

    evidence: Evidence | None = None

    @classmethod
    def predicate_type(cls) -> str:
        return PREDICATE_TYPE_V2


PREDICATE_MODELS: dict[str, type[SnapshotV1]] = {
    PREDICATE_TYPE_V1: SnapshotV1,
    PREDICATE_TYPE_V2: SnapshotV2,
}
