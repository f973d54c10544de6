"""Test-only builders: realistic 8-GPU H100 host snapshots, signed with the contract package.

``HostKit`` is one simulated host (its key and chain); ``next_envelope`` makes the next link of its
chain, and keyword overrides build the hostile variants (wrong seq, wrong prev, a stale clock...).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import (
    Accelerator,
    AgentInfo,
    CollectorError,
    Encryption,
    HeaderFacts,
    HostInfo,
    Posture,
    SnapshotV1,
    Socket,
    StorageRoot,
    WeightFile,
    envelope_digest,
    format_timestamp,
    sign_envelope,
    statement_bytes,
)
from contract.keys import key_id, raw_public
from contract.reqsign import enroll_message, sign_request
from server.devtools.simulate import h100_board


def h100_accelerators(host_index: int = 0) -> list[Accelerator]:
    buses = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]
    return [
        h100_board(
            f"0000:{bus}:00.0",
            f"GPU-{host_index:08x}-{i:04x}-4a2b-9c3d-"
            + hashlib.sha256(f"{host_index}/{i}".encode()).hexdigest()[:12],
            f"16523{host_index:05d}{i:03d}",
        )
        for i, bus in enumerate(buses)
    ]


def weight_digests() -> list[str]:
    return [hashlib.sha256(f"shard{i}".encode()).hexdigest() for i in range(1, 5)]


def weights_root() -> StorageRoot:
    files = [
        WeightFile(
            path=f"/srv/models/llama-3-70b/model-0000{i}-of-00004.safetensors",
            size=4_900_000_000 + i,
            mtime="2026-01-10T08:00:00Z",
            mode="0640",
            uid=1000,
            gid=1000,
            owner="ml",
            sha256=hashlib.sha256(f"shard{i}".encode()).hexdigest(),
            format="safetensors",
            header=HeaderFacts(tensor_count=200, parameter_count=17_500_000_000, dtypes=["BF16"]),
        )
        for i in range(1, 5)
    ]
    return StorageRoot(
        root="/srv/models",
        mount_point="/srv",
        device="/dev/mapper/models",
        filesystem="xfs",
        encryption=Encryption(
            status="encrypted", method="dm-crypt/LUKS2", determined_by="/sys/block/dm-0/dm/uuid"
        ),
        file_count=len(files),
        total_bytes=sum(f.size for f in files),
        files=files,
    )


@dataclass
class HostKit:
    """One simulated host: key, site, machine id, and its chain state."""

    site_id: str
    index: int = 0
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    prev: str | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())

    @property
    def machine_id(self) -> str:
        return hashlib.md5(self.key_id.encode()).hexdigest()

    def enroll_body(self, token: str, **over: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "token": token,
            "public_key": base64.b64encode(raw_public(self.key.public_key())).decode(),
            "host": {"hostname": f"gpu-{self.index:04d}", "machine_id": self.machine_id},
            "proof": base64.b64encode(self.key.sign(enroll_message(token, self.key_id))).decode(),
            "chain_head": None,
        }
        body.update(over)
        return body

    def snapshot(self, *, now: datetime | None = None, **over: Any) -> SnapshotV1:
        fields: dict[str, Any] = {
            "agent": AgentInfo(key_id=self.key_id, version="0.1.0"),
            "site_id": self.site_id,
            "host": HostInfo(
                hostname=f"gpu-{self.index:04d}",
                machine_id=self.machine_id,
                boot_id="b" * 32,
                os="Ubuntu 22.04.4 LTS",
                kernel="5.15.0-105-generic",
                arch="x86_64",
                uptime_s=86400,
            ),
            "seq": self.seq + 1,
            "prev": self.prev,
            "nonce": None,
            "collected_at": format_timestamp(now or datetime.now(UTC)),
            "accelerators": h100_accelerators(self.index),
            "storage": [weights_root()],
            "posture": Posture(
                secure_boot=True,
                tpm_present=True,
                tpm_version="2.0",
                listening_sockets=[Socket(proto="tcp", address="0.0.0.0", port=22)],
            ),
            "errors": [],
        }
        fields.update(over)
        return SnapshotV1(**fields)

    def envelope(self, snapshot: SnapshotV1, *, key: Ed25519PrivateKey | None = None) -> bytes:
        payload = statement_bytes(snapshot)
        return sign_envelope(payload, key or self.key, self.key_id).to_bytes()

    def next_envelope(self, *, advance: bool = True, **over: Any) -> bytes:
        """The next link of this host's chain; ``advance`` moves the local head past it."""
        snap = self.snapshot(**over)
        data = self.envelope(snap)
        if advance:
            self.seq = snap.seq
            self.prev = digest_of(data)
        return data

    def signed_headers(
        self, method: str, path: str, body: bytes = b"", **over: str
    ) -> dict[str, str]:
        stamp = over.pop("timestamp", format_timestamp(datetime.now(UTC)))
        headers = sign_request(self.key, self.key_id, method, path, stamp, body)
        headers.update(over)
        return headers


def digest_of(envelope: bytes) -> str:
    from contract import parse_envelope

    return envelope_digest(parse_envelope(envelope))


def failed_collector() -> CollectorError:
    return CollectorError(collector="nvml", code="timeout", detail="nvml did not answer in 10s")


def ago(**kw: float) -> datetime:
    return datetime.now(UTC) - timedelta(**kw)
