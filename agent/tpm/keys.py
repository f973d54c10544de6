"""TPM-resident host keys: the attestation key, the snapshot-signing key it certifies, and
signing with it.

``create`` makes, in the endorsement hierarchy under the TPM's RSA 2048 endorsement key (the TCG
EK Credential Profile's template, so its certificate in NV names it):

- the **attestation key (AK)**: restricted, ECDSA P-256 with SHA-256. Restricted keys sign only
  what the TPM itself produced (quotes, certifications), never an outside digest that looks like
  one. In the endorsement hierarchy, unlike the owner hierarchy, its quotes show the real reset
  and restart counters.
- the **snapshot-signing key**: unrestricted ECDSA P-256, ``fixedTPM | fixedParent``: the TPM
  generated it and its private part never leaves the TPM in the clear (the blob kept on disk is
  wrapped by the EK, loadable only in this TPM);
- ``TPM2_Certify`` of the signing key by the AK (qualifying data: SHA-256 of the signing key's
  TPM name), which the verifier checks at enrollment.

Both keys are kept as their TPM2B_PUBLIC and wrapped TPM2B_PRIVATE in ``tpm-keys.json`` (mode
0600) in the state directory, with the EK's public area and certificate. Using the EK as a parent
needs the endorsement hierarchy's authorization through a policy session (PolicySecret), as its
template's policy demands; the hierarchy's auth value is the empty default.

:class:`TpmSigner` signs for the host: SHA-256 of the message, TPM2_Sign with ECDSA, and the
(r, s) pair DER-encoded, which :func:`contract.keys.verify_signature` checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.tpm import TpmError, pytss_missing
from contract.fsutil import atomic_write

KEYS_NAME = "tpm-keys.json"
_FORMAT = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _require_pytss() -> None:
    why = pytss_missing()
    if why is not None:
        raise TpmError("tpm_unavailable", why)


@dataclass(frozen=True)
class TpmKeys:
    """What ``create`` made, as stored (every TPM structure marshalled, base64)."""

    tcti: str
    ek_public: str
    ek_certificate: str | None
    ak_public: str
    ak_private: str
    key_public: str
    key_private: str
    certify_info: str
    certify_signature: str

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TpmKeys:
        if data.get("format") != _FORMAT:
            raise TpmError("bad_key", f"{KEYS_NAME} has an unknown format {data.get('format')!r}")
        fields: dict[str, str] = {}
        for name in cls.__dataclass_fields__:
            value = data.get(name)
            if isinstance(value, str):
                fields[name] = value
            elif name != "ek_certificate" or value is not None:
                raise TpmError("bad_key", f"{KEYS_NAME} is incomplete: {name} is missing")
        return cls(ek_certificate=fields.pop("ek_certificate", None), **fields)


def _ecc_template(*, restricted: bool) -> Any:
    from tpm2_pytss import TPM2B_PUBLIC, TPMA_OBJECT

    attrs = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.SIGN_ENCRYPT
    )
    if restricted:
        attrs |= TPMA_OBJECT.RESTRICTED
    return TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)


class _Session:
    """An open ESAPI context with the EK loaded (or found persistent)."""

    def __init__(self, tcti: str) -> None:
        _require_pytss()
        from tpm2_pytss import ESAPI, TSS2_Exception

        try:
            self.ectx = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmError("tpm_unreachable", f"cannot open the TPM at {tcti!r}: {exc}") from exc
        self.flush: list[Any] = []
        self.ek, self.ek_public, self.ek_certificate = self._endorsement_key()

    def _endorsement_key(self) -> tuple[Any, Any, bytes | None]:
        from tpm2_pytss import ESYS_TR, TPM2B_SENSITIVE_CREATE
        from tpm2_pytss.utils import NVReadEK, create_ek_template

        cert, template = create_ek_template("EK-RSA2048", NVReadEK(self.ectx))
        handle, public, _, _, _ = self.ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
        )
        self.flush.append(handle)
        return handle, public, cert

    def under_ek(self, command: Callable[[Any], Any]) -> Any:
        """Run one command that uses the EK as parent, authorized by a policy session that
        satisfies the EK's policy (PolicySecret of the endorsement hierarchy); the session is
        flushed after it (a TPM has only a few session slots)."""
        from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPMT_SYM_DEF

        session = self.ectx.start_auth_session(
            tpm_key=ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            auth_hash=TPM2_ALG.SHA256,
        )
        try:
            self.ectx.policy_secret(ESYS_TR.ENDORSEMENT, session)
            return command(session)
        finally:
            self.ectx.flush_context(session)

    def load(self, public_b64: str, private_b64: str) -> Any:
        from tpm2_pytss import TPM2B_PRIVATE, TPM2B_PUBLIC

        public, _ = TPM2B_PUBLIC.unmarshal(_unb64(public_b64))
        private, _ = TPM2B_PRIVATE.unmarshal(_unb64(private_b64))
        handle = self.under_ek(lambda s: self.ectx.load(self.ek, private, public, session1=s))
        self.flush.append(handle)
        return handle

    def close(self) -> None:
        for handle in reversed(self.flush):
            self.ectx.flush_context(handle)
        self.ectx.close()

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def create(state_dir: Path, tcti: str, *, force: bool = False) -> TpmKeys:
    """Create the AK and the certified snapshot-signing key in the TPM at ``tcti``; store them
    in ``state_dir`` (refusing to replace stored ones unless ``force``)."""
    from tpm2_pytss import TPM2_ALG, TPM2B_SENSITIVE_CREATE, TPMT_SIG_SCHEME, TSS2_Exception

    path = state_dir / KEYS_NAME
    if path.exists() and not force:
        raise TpmError(
            "key_exists",
            f"{path} already exists; pass --force to replace it (the host will need to enroll "
            "again, and its evidence chain starts over)",
        )
    try:
        with _Session(tcti) as tpm:
            ak_private, ak_public, _, _, _ = tpm.under_ek(
                lambda s: tpm.ectx.create(
                    tpm.ek, TPM2B_SENSITIVE_CREATE(), _ecc_template(restricted=True), session1=s
                )
            )
            key_private, key_public, _, _, _ = tpm.under_ek(
                lambda s: tpm.ectx.create(
                    tpm.ek, TPM2B_SENSITIVE_CREATE(), _ecc_template(restricted=False), session1=s
                )
            )
            keys_b64 = {
                "ak_public": _b64(ak_public.marshal()),
                "ak_private": _b64(ak_private.marshal()),
                "key_public": _b64(key_public.marshal()),
                "key_private": _b64(key_private.marshal()),
            }
            ak = tpm.load(keys_b64["ak_public"], keys_b64["ak_private"])
            key = tpm.load(keys_b64["key_public"], keys_b64["key_private"])
            name = bytes(key_public.get_name())
            info, signature = tpm.ectx.certify(
                key, ak, hashlib.sha256(name).digest(), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
            made = TpmKeys(
                tcti=tcti,
                ek_public=_b64(tpm.ek_public.marshal()),
                ek_certificate=_b64(tpm.ek_certificate) if tpm.ek_certificate else None,
                certify_info=_b64(info.marshal()),
                certify_signature=_b64(signature.marshal()),
                **keys_b64,
            )
    except TSS2_Exception as exc:
        raise TpmError("tpm_error", f"the TPM refused to create the host keys: {exc}") from exc
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(made.to_json(), indent=1).encode("utf-8"), mode=0o600)
    return made


def stored(state_dir: Path) -> TpmKeys | None:
    """The stored TPM keys (None: this host's key is a file)."""
    path = state_dir / KEYS_NAME
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise TpmError("bad_key", f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TpmError("bad_key", f"{path} is not a JSON object")
    return TpmKeys.from_json(data)


def ecc_public_key(public_b64: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a marshalled TPM2B_PUBLIC."""
    _require_pytss()
    from tpm2_pytss import TPM2B_PUBLIC

    public, _ = TPM2B_PUBLIC.unmarshal(_unb64(public_b64))
    point = public.publicArea.unique.ecc
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(bytes(point.x), "big"), int.from_bytes(bytes(point.y), "big"), ec.SECP256R1()
    ).public_key()


class TpmSigner:
    """Signs for the host with its TPM-resident key (contract.keys.Signer)."""

    def __init__(self, keys: TpmKeys, tcti: str | None = None) -> None:
        self.keys = keys
        self.tcti = tcti or keys.tcti
        self._public = ecc_public_key(keys.key_public)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        from tpm2_pytss import (
            TPM2_ALG,
            TPM2_RH,
            TPM2_ST,
            TPMT_SIG_SCHEME,
            TPMT_TK_HASHCHECK,
            TSS2_Exception,
        )

        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        try:
            with _Session(self.tcti) as tpm:
                key = tpm.load(self.keys.key_public, self.keys.key_private)
                signature = tpm.ectx.sign(key, hashlib.sha256(data).digest(), scheme, ticket)
        except TSS2_Exception as exc:
            raise TpmError("tpm_error", f"the TPM refused to sign: {exc}") from exc
        ecdsa = signature.signature.ecdsa
        return encode_dss_signature(
            int.from_bytes(bytes(ecdsa.signatureR), "big"),
            int.from_bytes(bytes(ecdsa.signatureS), "big"),
        )


def activate_credential(
    keys: TpmKeys, blob: bytes, secret: bytes, tcti: str | None = None
) -> bytes:
    """TPM2_ActivateCredential: the credential the verifier wrapped for this TPM's EK and this
    AK (TPM2B_ID_OBJECT ``blob``, TPM2B_ENCRYPTED_SECRET ``secret``). Only the TPM that holds
    the EK, with this AK loaded, recovers it; anything else is ``activation_failed``."""
    _require_pytss()
    from tpm2_pytss import ESYS_TR, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TSS2_Exception

    try:
        id_object, _ = TPM2B_ID_OBJECT.unmarshal(blob)
        encrypted, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
    except Exception as exc:  # the TSS's unmarshal raises several kinds
        raise TpmError("activation_failed", f"the credential is malformed: {exc}") from exc
    try:
        with _Session(tcti or keys.tcti) as tpm:
            ak = tpm.load(keys.ak_public, keys.ak_private)
            credential = tpm.under_ek(
                lambda s: tpm.ectx.activate_credential(
                    ak, tpm.ek, id_object, encrypted, session1=ESYS_TR.PASSWORD, session2=s
                )
            )
    except TSS2_Exception as exc:
        raise TpmError(
            "activation_failed", f"the TPM could not activate the credential: {exc}"
        ) from exc
    return bytes(credential)


#: PCRs quoted by default: the firmware and boot loader (0-7) and the agent's own data PCR.
DATA_PCR = 16
DEFAULT_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, DATA_PCR)


@dataclass(frozen=True)
class Quote:
    """A TPM2_Quote by the AK, as snapshot v2 carries it (contract.TpmQuote)."""

    quoted: str  # TPM2B_ATTEST, base64
    signature: str  # TPMT_SIGNATURE, base64
    bank: str
    pcrs: dict[str, str]  # index -> lowercase hex


def quote(
    keys: TpmKeys,
    qualifying_data: bytes,
    pcrs: tuple[int, ...] = DEFAULT_PCRS,
    tcti: str | None = None,
) -> Quote:
    """Quote ``pcrs`` of the SHA-256 bank with the AK over ``qualifying_data``, and read their
    values (the verifier recomputes the quote's PCR digest from them)."""
    _require_pytss()
    from tpm2_pytss import TPM2_ALG, TPML_PCR_SELECTION, TPMT_SIG_SCHEME, TSS2_Exception

    selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(i) for i in sorted(pcrs)))
    try:
        with _Session(tcti or keys.tcti) as tpm:
            ak = tpm.load(keys.ak_public, keys.ak_private)
            quoted, signature = tpm.ectx.quote(
                ak, selection, qualifying_data, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
            values: dict[str, str] = {}
            wanted = sorted(pcrs)
            while len(values) < len(wanted):  # a TPM answers at most 8 PCRs a read
                rest = [i for i in wanted if str(i) not in values]
                _, read, digests = tpm.ectx.pcr_read(
                    TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(i) for i in rest[:8]))
                )
                got = [
                    i
                    for sel in read.pcrSelections[: read.count]
                    for i in range(sel.sizeofSelect * 8)
                    if sel.pcrSelect[i // 8] >> (i % 8) & 1
                ]
                if not got:
                    raise TpmError("tpm_error", "the TPM read no PCR values")
                for index, digest in zip(got, list(digests), strict=True):
                    values[str(index)] = bytes(digest).hex()
    except TSS2_Exception as exc:
        raise TpmError("tpm_error", f"the TPM refused to quote: {exc}") from exc
    return Quote(_b64(quoted.marshal()), _b64(signature.marshal()), "sha256", values)
