"""The log on a real ``veu-server serve``: the background integrator signs accepted snapshots
into checkpoints without being asked, and the auditor's verification of README.md works over
HTTP with only the pinned log key."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

from contract.tlog import parse_verifier_key, verify_bundle, verify_checkpoint, verify_consistency
from tests.server.builders import HostKit, digest_of
from tests.server.conftest import Fleet


def _bundle(fleet: Fleet, api: httpx.Client, digest: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = api.get(f"/v1/results/{digest}").json()
        if body["log"] is not None:
            assert isinstance(body, dict)
            return body
        time.sleep(0.05)
    raise AssertionError("the snapshot was never integrated")


def test_an_auditor_verifies_a_verdict_and_the_logs_growth(fleet: Fleet) -> None:
    server = fleet.server
    pinned = server.cli("log", "key").stdout.strip()  # out of band, on the verifier
    key = parse_verifier_key(pinned)
    assert httpx.get(f"{server.url}/v1/log/key").json()["verifier_key"] == pinned
    kit = HostKit(fleet.site_id)
    fleet.enroll(kit)
    digests = []
    for _ in range(3):
        data = kit.next_envelope()
        r = httpx.post(
            f"{server.url}/v1/snapshots", content=data, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 200, r.text
        digests.append(digest_of(data))
    b64 = base64.b64decode
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {fleet.auditor_key}"}
    ) as api:
        first = _bundle(fleet, api, digests[0])["log"]
        cp = verify_bundle(
            b64(first["entry"]), first["index"], [b64(h) for h in first["proof"]],
            first["checkpoint"], key,
        )  # fmt: skip
        old = cp
        last = _bundle(fleet, api, digests[-1])["log"]
        new = verify_checkpoint(api.get("/log/checkpoint").text, key)
        assert new.size >= 3 and last["index"] < new.size
        p = api.get(
            "/v1/log/proof/consistency", params={"size1": old.size, "size2": new.size}
        ).json()
        verify_consistency(old.size, new.size, [b64(h) for h in p["proof"]], old.root, new.root)
    assert server.cli("log", "verify").stdout.startswith("log intact: 3 leaves")
