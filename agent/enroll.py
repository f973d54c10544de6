"""``veu-agent enroll``: register this host's key with a verifier using a one-time token.

The agent sends its public key, host facts, a proof of possession (a signature over the token's
hash and its key id, see :func:`contract.reqsign.enroll_message`) and its current chain head, so the
verifier knows which snapshot must come next. It stores what it learns — server URL, site, and the
verifier's result-signing key — in ``enrollment.json``. That key is trusted on first use, over a
TLS connection that is verified by default.

A host whose key is in its TPM also sends what proves it (agent.tpm.keys); a verifier that checks
TPMs answers with a credential wrapped for the TPM's endorsement key and attestation key
(MakeCredential), the TPM recovers it (ActivateCredential), and the enrollment is sent again with
it: the key then enrolls as ``tpm-bound-key``.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

from agent import keys
from agent.chain import Chain
from agent.client import ClientError, VerifierClient
from agent.collect.host import collect_host
from agent.config import AgentConfig, check_server_url
from agent.enrollment import Enrollment, EnrollmentError, save
from agent.tpm import TpmError
from agent.tpm.keys import TpmSigner, activate_credential
from contract.keys import Signer, load_public_pem
from contract.keys import key_id as compute_key_id

log = logging.getLogger(__name__)


def enroll(
    config: AgentConfig,
    *,
    server: str,
    token: str,
    ca_file: Path | None = None,
    allow_insecure_http: bool = False,
) -> Enrollment:
    check_server_url(server, allow_insecure_http or config.allow_insecure_http)
    try:
        key = keys.load_signer(config.state_dir)
    except keys.KeyFileError as exc:
        if exc.code != "no_key":
            raise
        key, said = keys.initialize(config.state_dir, tpm=None)
        log.warning("no host key in %s: created one. %s", config.state_dir, said)
    kid = compute_key_id(key.public_key())
    head = Chain(config.state_dir, key).head()
    host = collect_host(proc_root=config.proc_root, sys_root=config.sys_root)
    verify: bool | str = str(ca_file or config.ca_file) if (ca_file or config.ca_file) else True
    with VerifierClient(
        server,
        verify=verify,
        allow_insecure_http=allow_insecure_http or config.allow_insecure_http,
    ) as client:
        facts = host.model_dump(mode="json")
        chain_head = None if head is None else {"seq": head.seq, "digest": head.digest}
        tpm = _tpm_section(key)
        answer = client.enroll(token, key, host=facts, chain_head=chain_head, tpm=tpm)
        if answer.get("code") == "activation_required" and isinstance(key, TpmSigner):
            activation = _activate(key, answer)
            answer = client.enroll(
                token, key, host=facts, chain_head=chain_head, tpm=tpm, activation=activation
            )
    try:
        enrollment = Enrollment(
            server_url=server.rstrip("/"),
            site_id=str(answer["site_id"]),
            host_id=str(answer["host_id"]),
            key_id=str(answer["key_id"]),
            verifier_key=str(answer["verifier_key"]),
            verifier_key_id=str(answer["verifier_key_id"]),
        )
    except KeyError as exc:
        raise ClientError(
            "bad_response", f"verifier's enrollment answer lacks {exc}", transient=False
        ) from exc
    if enrollment.key_id != kid:
        raise EnrollmentError(
            "key_mismatch", "verifier enrolled a different key id than this host's"
        )
    load_public_pem(enrollment.verifier_key.encode())  # refuse garbage before storing it
    save(config.state_dir, enrollment)
    return enrollment


def _tpm_section(key: Signer) -> dict[str, str] | None:
    """What proves a TPM host's key is in its TPM (None for a key file)."""
    if not isinstance(key, TpmSigner):
        return None
    k = key.keys
    if k.ek_certificate is None:
        log.warning("the TPM holds no EK certificate: the verifier cannot check it")
        return None
    return {
        "ek_certificate": k.ek_certificate,
        "ek_public": k.ek_public,
        "ak_public": k.ak_public,
        "key_public": k.key_public,
        "certify_info": k.certify_info,
        "certify_signature": k.certify_signature,
    }


def _activate(key: TpmSigner, answer: dict[str, Any]) -> dict[str, str]:
    """The TPM's answer to the verifier's credential (TPM2_ActivateCredential)."""
    try:
        blob = base64.b64decode(str(answer["credential_blob"]), validate=True)
        secret = base64.b64decode(str(answer["secret"]), validate=True)
        ticket = str(answer["ticket"])
    except (KeyError, ValueError) as exc:
        raise ClientError(
            "bad_response", f"verifier's activation request is malformed: {exc}", transient=False
        ) from exc
    try:
        credential = activate_credential(key.keys, blob, secret, key.tcti)
    except TpmError as exc:
        raise EnrollmentError(exc.code, exc.detail) from exc
    return {"ticket": ticket[:4000], "credential": base64.b64encode(credential).decode("ascii")}
