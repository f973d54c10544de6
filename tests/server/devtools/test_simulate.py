"""The fleet simulator's fast envelope path produces exactly the bytes of the evidence models."""

from __future__ import annotations

import random

from contract import envelope_digest, open_envelope, sign_envelope, statement_bytes
from contract.keys import public_from_raw, raw_public
from server.devtools.simulate import SimHost


def _reference(host: SimHost, nonce: str | None, stamp: str) -> bytes:
    payload = statement_bytes(host.snapshot(nonce, stamp))
    return sign_envelope(payload, host.key, host.key_id).to_bytes()


def test_the_template_envelope_is_byte_identical_to_the_model_path() -> None:
    host = SimHost("site_x", 7)
    rng = random.Random(3)
    keys = {host.key_id: public_from_raw(raw_public(host.key.public_key()))}
    for step in range(6):
        stamp = f"2026-11-27T10:00:0{step}.000000Z"
        nonce = "n" * 43 if step == 2 else None
        data, digest = host.envelope(nonce, stamp)
        assert data == _reference(host, nonce, stamp)
        assert digest == envelope_digest(
            sign_envelope(statement_bytes(host.snapshot(nonce, stamp)), host.key, host.key_id)
        )
        opened = open_envelope(data, keys)
        assert opened is not None
        host.acknowledged(digest)
        if step % 2:
            host.change_inventory(rng)  # the template follows inventory changes
