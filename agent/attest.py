"""``veu-agent attest``: a fresh, nonce-bound attestation and the verifier's signed verdict.

Steps: ask the verifier for a nonce; take a snapshot bound to it, through the same spool the
daemon uses (so the chain stays in order even while the daemon runs); deliver anything older
still waiting in the spool, then this snapshot; check the signed result with the verifier key
stored at enrollment, and that it is about *this* envelope and *this* nonce; print the verdict.

An envelope leaves the spool only once a result that verifies with that key and names its digest
has come back (:func:`agent.client.verified_result`); a verifier that answers 2xx without one is
reported (exit 3) and the envelope stays for the daemon or the next attest to resend. The whole
command, every call to the verifier included, ends by ``--timeout``.

Exit codes: 0 affirming, 1 warning, 2 contraindicated, 3 could not attest.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from agent import keys
from agent.client import ClientError, VerifierClient, verified_result
from agent.config import AgentConfig
from agent.enrollment import load as load_enrollment
from agent.snapshot import take_snapshot
from agent.spool import CORRUPT, REJECTED, Spool, SpoolCorrupt
from contract import EvidenceError, envelope_digest, parse_envelope
from contract.keys import key_id as compute_key_id
from contract.results import SUBMOD, result_status

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
EXIT_BY_STATUS = {"affirming": 0, "warning": 1, "contraindicated": 2, "none": 3}
SEVERITY_LABEL = {
    "violation": "VIOLATION",
    "cannot_attest": "CANNOT ATTEST",
    "warning": "WARNING",
    "info": "info",
}


class AttestError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _deliver_backlog(client: VerifierClient, spool: Spool, upto: int, verifier_key: str) -> None:
    """Send older spooled envelopes first, so the verifier sees the chain in order."""
    for seq in spool.pending():
        if seq >= upto:
            break
        try:
            data = spool.read(seq)
        except SpoolCorrupt as exc:
            spool.quarantine(seq, str(exc), folder=CORRUPT, code="corrupt")
            continue
        except FileNotFoundError:
            continue  # the daemon delivered it meanwhile
        try:
            digest = envelope_digest(parse_envelope(data))
        except EvidenceError as exc:
            spool.quarantine(seq, exc.detail, folder=CORRUPT, code="corrupt")
            continue
        try:
            verified_result(client.submit(data), digest, verifier_key)
        except ClientError as exc:
            if exc.transient:
                raise
            spool.quarantine(seq, exc.detail, folder=REJECTED, code=exc.code)
            continue
        spool.remove(seq)


def attest(config: AgentConfig, *, as_json: bool, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    enrollment = load_enrollment(config.state_dir)
    if enrollment is None:
        raise AttestError(
            "not_enrolled",
            f"no enrollment in {config.state_dir}; run `veu-agent enroll --server URL --token T`",
        )
    key = keys.load_signer(config.state_dir)
    kid = compute_key_id(key.public_key())
    verify: bool | str = str(config.ca_file) if config.ca_file else True
    config.scan_timeout = min(config.scan_timeout, max(1.0, timeout * 0.8))
    spool = Spool(
        config.state_dir / SPOOL_DIR,
        config.spool_max_bytes,
        public_key=key.public_key(),
        key_id=kid,
    )
    with VerifierClient(
        enrollment.server_url,
        verify=verify,
        timeout=max(1.0, min(30.0, timeout)),
        allow_insecure_http=config.allow_insecure_http,
        deadline=deadline,
    ) as client:
        nonce = str(client.challenge(key, kid)["nonce"])  # its form checked by the client
        taken = take_snapshot(
            config,
            key,
            nonce=nonce,
            outbox=spool,
            progress=sys.stderr.isatty() and not as_json,
            site_id=enrollment.site_id,
        )
        _deliver_backlog(client, spool, taken.snapshot.seq, enrollment.verifier_key)
        if time.monotonic() > deadline:
            raise AttestError("timeout", f"no verdict within {timeout:g}s")
        answer = client.submit(taken.raw)
        try:
            claims = verified_result(answer, taken.digest, enrollment.verifier_key)
        except ClientError as exc:
            raise AttestError(
                exc.code,
                f"{exc.detail}; seq {taken.snapshot.seq} stays in the spool to be sent again",
            ) from exc
        spool.remove(taken.snapshot.seq)
    token = str(answer.result)
    sub: dict[str, Any] = claims["submods"][SUBMOD]
    if sub.get("nonce") != nonce:
        raise AttestError(
            "result_mismatch", "the signed result is not about this snapshot and nonce"
        )
    status = result_status(claims)
    if as_json:
        print(
            json.dumps(
                {"status": status, "digest": taken.digest, "result": token, "claims": claims},
                indent=2,
            )
        )
    else:
        print(render_verdict(status, sub))
    return EXIT_BY_STATUS.get(status, 3)


def render_verdict(status: str, sub: dict[str, Any]) -> str:
    lines = [
        f"Verdict: {status.upper()}",
        f"  snapshot seq {sub.get('seq')}  digest {sub.get('digest')}",
    ]
    if sub.get("policy_digest"):
        lines.append(f"  policy {sub['policy_digest']}")
    findings = sub.get("findings") or []
    if not findings:
        lines.append("No findings.")
    for f in findings:
        lines.append(
            f"- [{SEVERITY_LABEL.get(f.get('severity'), f.get('severity'))}] "
            f"{f.get('condition_id')}: {f.get('message')}"
        )
        if f.get("expected") or f.get("seen"):
            lines.append(f"    expected {f.get('expected')}; seen {f.get('seen')}")
        if f.get("citation"):
            lines.append(f"    citation: {f.get('citation')}")
    return "\n".join(lines)
