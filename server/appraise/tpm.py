"""TPM 2.0 structures and the verifier's half of enrollment with credential activation, in pure
Python with ``cryptography`` (no TSS, no tpm2-tools).

- Bounded parsing of the marshalled structures the agent sends (TPM 2.0 Part 2): TPM2B_PUBLIC
  (RSA and ECC), TPMS_ATTEST (certify and quote), TPMT_SIGNATURE (ECDSA, RSASSA). Every length
  is checked against what is left before anything is read, and every input is capped, so a
  hostile length field (up to 2^32) costs nothing; anything malformed is :class:`TpmFormatError`.
- A key's TPM name: nameAlg || H_nameAlg(TPMT_PUBLIC).
- :func:`verify_ek_certificate`: the EK certificate chains to a certificate in the configured
  vendor CA directory and certifies exactly the EK public area sent.
- :func:`verify_certification`: the attestation key is a restricted ECDSA P-256 signing key
  that TPM2_Certify'd the snapshot-signing key (fixedTPM, fixedParent, sensitiveDataOrigin),
  over qualifying data SHA-256(name of the signing key).
- :func:`make_credential`: TPM2_MakeCredential as TPM 2.0 Part 1 §24 defines it for an RSA
  EK: a random seed, RSA-OAEP(SHA-256) to the EK with label "IDENTITY", KDFa for the AES-128-CFB
  key ("STORAGE", context the AK's name) and the HMAC key ("INTEGRITY"), the outer HMAC over
  the encrypted credential and the AK's name. Only the TPM holding that EK's private key, with
  the AK of that name loaded, can recover the credential (TPM2_ActivateCredential).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Largest marshalled structure accepted (a TPM2B_PUBLIC of RSA 4096 is under 700 bytes).
MAX_STRUCTURE_BYTES = 4096
#: Largest EK certificate accepted.
MAX_CERTIFICATE_BYTES = 16384

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_RSASSA = 0x0014
ALG_ECDSA = 0x0018
ALG_ECC = 0x0023
ECC_NIST_P256 = 0x0003

ATTEST_MAGIC = 0xFF544347
ST_ATTEST_CERTIFY = 0x8017
ST_ATTEST_QUOTE = 0x8018

OBJ_FIXED_TPM = 0x00000002
OBJ_FIXED_PARENT = 0x00000010
OBJ_SENSITIVE_DATA_ORIGIN = 0x00000020
OBJ_RESTRICTED = 0x00010000
OBJ_DECRYPT = 0x00020000
OBJ_SIGN = 0x00040000

_HASHES: dict[int, tuple[str, int]] = {
    ALG_SHA1: ("sha1", 20),
    ALG_SHA256: ("sha256", 32),
    ALG_SHA384: ("sha384", 48),
    ALG_SHA512: ("sha512", 64),
}


class TpmFormatError(ValueError):
    """A TPM structure that is malformed, truncated, oversized or not what was asked for.
    ``code`` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        if len(data) > MAX_STRUCTURE_BYTES:
            raise TpmFormatError(
                "tpm_structure_too_large",
                f"{what} is {len(data)} bytes; the limit is {MAX_STRUCTURE_BYTES}",
            )
        self.data = data
        self.at = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or n > len(self.data) - self.at:
            raise TpmFormatError(
                "tpm_truncated",
                f"{self.what}: {n} bytes asked at offset {self.at}, "
                f"{len(self.data) - self.at} left",
            )
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self.at != len(self.data):
            raise TpmFormatError(
                "tpm_trailing_bytes", f"{self.what}: {len(self.data) - self.at} bytes left over"
            )


def _hash_of(alg: int, what: str) -> tuple[str, int]:
    found = _HASHES.get(alg)
    if found is None:
        raise TpmFormatError("tpm_bad_algorithm", f"{what}: unknown hash algorithm 0x{alg:04x}")
    return found


@dataclass(frozen=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    #: The TPMT_PUBLIC bytes exactly as marshalled (what the name is computed over).
    area: bytes
    #: RSA: modulus and exponent; ECC: curve and point.
    rsa_modulus: bytes = b""
    rsa_exponent: int = 0
    ecc_curve: int = 0
    ecc_x: bytes = b""
    ecc_y: bytes = b""
    #: The symmetric algorithm's key bits of a storage (parent) key, else 0.
    symmetric_bits: int = 0
    #: The signing scheme and its hash (ECC/RSA), ALG_NULL when none.
    scheme: int = ALG_NULL
    scheme_hash: int = ALG_NULL

    @property
    def name(self) -> bytes:
        """The TPM name: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
        algorithm, _ = _hash_of(self.name_alg, "name algorithm")
        return struct.pack(">H", self.name_alg) + hashlib.new(algorithm, self.area).digest()

    def has(self, attributes: int) -> bool:
        return self.attributes & attributes == attributes

    def ecc_public_key(self) -> ec.EllipticCurvePublicKey:
        if self.type != ALG_ECC or self.ecc_curve != ECC_NIST_P256:
            raise TpmFormatError("tpm_bad_key", "the key is not an ECC NIST P-256 key")
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(self.ecc_x, "big"), int.from_bytes(self.ecc_y, "big"), ec.SECP256R1()
            ).public_key()
        except ValueError as exc:
            raise TpmFormatError("tpm_bad_key", f"the ECC point is not on P-256: {exc}") from exc

    def rsa_public_key(self) -> rsa.RSAPublicKey:
        if self.type != ALG_RSA or not self.rsa_modulus:
            raise TpmFormatError("tpm_bad_key", "the key is not an RSA key")
        exponent = self.rsa_exponent or 65537
        try:
            return rsa.RSAPublicNumbers(
                exponent, int.from_bytes(self.rsa_modulus, "big")
            ).public_key()
        except ValueError as exc:
            raise TpmFormatError("tpm_bad_key", f"the RSA key is not valid: {exc}") from exc


def _symmetric(r: _Reader) -> int:
    algorithm = r.u16()
    if algorithm == ALG_NULL:
        return 0
    bits = r.u16()
    r.u16()  # mode
    return bits


def _scheme(r: _Reader) -> tuple[int, int]:
    scheme = r.u16()
    if scheme == ALG_NULL:
        return scheme, ALG_NULL
    return scheme, r.u16()


def parse_public(data: bytes, what: str = "public area") -> TpmPublic:
    """A TPM2B_PUBLIC (size, then TPMT_PUBLIC)."""
    outer = _Reader(data, what)
    area = outer.tpm2b()
    outer.end()
    r = _Reader(area, what)
    kind, name_alg, attributes = r.u16(), r.u16(), r.u32()
    policy = r.tpm2b()
    bits = _symmetric(r)
    scheme, scheme_hash = _scheme(r)
    if kind == ALG_RSA:
        r.u16()  # keyBits
        exponent = r.u32()
        modulus = r.tpm2b()
        r.end()
        return TpmPublic(
            kind, name_alg, attributes, policy, area,
            rsa_modulus=modulus, rsa_exponent=exponent, symmetric_bits=bits,
            scheme=scheme, scheme_hash=scheme_hash,
        )  # fmt: skip
    if kind == ALG_ECC:
        curve = r.u16()
        _scheme(r)  # kdf
        x, y = r.tpm2b(), r.tpm2b()
        r.end()
        return TpmPublic(
            kind, name_alg, attributes, policy, area,
            ecc_curve=curve, ecc_x=x, ecc_y=y, symmetric_bits=bits,
            scheme=scheme, scheme_hash=scheme_hash,
        )  # fmt: skip
    raise TpmFormatError("tpm_bad_key", f"{what}: unsupported key type 0x{kind:04x}")


@dataclass(frozen=True)
class PcrSelection:
    bank: int
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST (certify or quote)."""

    type: int
    signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    #: Certify: the certified object's name.
    certified_name: bytes = b""
    #: Quote: the PCR selection and the digest of the selected PCR values.
    pcr_selection: tuple[PcrSelection, ...] = ()
    pcr_digest: bytes = b""


def parse_attest(data: bytes, what: str = "attestation") -> tuple[Attest, bytes]:
    """A TPM2B_ATTEST; returns the parsed TPMS_ATTEST and its bytes (what the AK signed)."""
    outer = _Reader(data, what)
    body = outer.tpm2b()
    outer.end()
    r = _Reader(body, what)
    if r.u32() != ATTEST_MAGIC:
        raise TpmFormatError("tpm_not_generated", f"{what} was not generated by a TPM (magic)")
    kind = r.u16()
    signer, extra = r.tpm2b(), r.tpm2b()
    clock, resets, restarts, safe = r.u64(), r.u32(), r.u32(), r.u8()
    firmware = r.u64()
    if kind == ST_ATTEST_CERTIFY:
        name = r.tpm2b()
        r.tpm2b()  # qualifiedName
        r.end()
        return Attest(kind, signer, extra, clock, resets, restarts, safe == 1, firmware, name), body
    if kind == ST_ATTEST_QUOTE:
        count = r.u32()
        if count > 16:
            raise TpmFormatError("tpm_truncated", f"{what}: {count} PCR banks selected")
        selections = []
        for _ in range(count):
            bank, size = r.u16(), r.u8()
            bitmap = r.take(size)
            indexes = tuple(
                8 * i + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1
            )
            selections.append(PcrSelection(bank, indexes))
        digest = r.tpm2b()
        r.end()
        return (
            Attest(
                kind, signer, extra, clock, resets, restarts, safe == 1, firmware,
                pcr_selection=tuple(selections), pcr_digest=digest,
            ),
            body,
        )  # fmt: skip
    raise TpmFormatError("tpm_bad_attest", f"{what} is of type 0x{kind:04x}")


def parse_ecdsa_signature(data: bytes, what: str = "signature") -> bytes:
    """A TPMT_SIGNATURE of ECDSA with SHA-256, as a DER signature ``cryptography`` checks."""
    r = _Reader(data, what)
    algorithm = r.u16()
    if algorithm != ALG_ECDSA:
        raise TpmFormatError("tpm_bad_signature", f"{what} is not ECDSA (0x{algorithm:04x})")
    if r.u16() != ALG_SHA256:
        raise TpmFormatError("tpm_bad_signature", f"{what} is not over SHA-256")
    sig_r, sig_s = r.tpm2b(), r.tpm2b()
    r.end()
    return encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))


def verify_attest_signature(ak: TpmPublic, attest_bytes: bytes, signature: bytes) -> None:
    """Raise :class:`TpmFormatError` (``tpm_bad_signature``) unless the AK signed it."""
    der = parse_ecdsa_signature(signature)
    try:
        ak.ecc_public_key().verify(der, attest_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TpmFormatError(
            "tpm_bad_signature", "the attestation key's signature does not verify"
        ) from exc


# --------------------------------------------------------------------------- the EK


def load_vendor_cas(directory: Path) -> list[x509.Certificate]:
    """Every certificate in the PEM files of ``directory`` (the trusted TPM vendor CAs)."""
    found: list[x509.Certificate] = []
    for path in sorted(directory.glob("*.pem")) + sorted(directory.glob("*.crt")):
        try:
            found.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except ValueError as exc:
            raise TpmFormatError(
                "bad_vendor_ca", f"{path} holds no PEM certificate: {exc}"
            ) from exc
    return found


def verify_ek_certificate(
    certificate: bytes,
    ek: TpmPublic,
    cas: list[x509.Certificate],
    *,
    max_depth: int = 4,
) -> x509.Certificate:
    """The EK certificate (DER) chains, issuer by issuer, to one of ``cas``, and its key is
    ``ek``'s. Raises :class:`TpmFormatError`: ``ek_certificate_malformed``,
    ``ek_certificate_untrusted`` (no chain to a configured CA) or ``ek_mismatch``.

    Validity dates are not enforced: TPM makers issue EK certificates with fixed or far dates
    and the EK outlives them (as Keylime does)."""
    if len(certificate) > MAX_CERTIFICATE_BYTES:
        raise TpmFormatError("ek_certificate_malformed", "the EK certificate is too large")
    try:
        cert = x509.load_der_x509_certificate(certificate)
    except ValueError as exc:
        raise TpmFormatError("ek_certificate_malformed", f"not a DER certificate: {exc}") from exc
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.public_numbers() != (
        ek.rsa_public_key().public_numbers()
    ):
        raise TpmFormatError("ek_mismatch", "the EK certificate is for another key than the EK")
    current = cert
    for _ in range(max_depth):
        issuers = [ca for ca in cas if ca.subject == current.issuer]
        for issuer in issuers:
            try:
                current.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if issuer.subject == issuer.issuer or issuer in cas:
                return cert
        break
    raise TpmFormatError(
        "ek_certificate_untrusted",
        f"the EK certificate (issuer {current.issuer.rfc4514_string()[:120]}) does not chain to "
        "a configured TPM vendor CA",
    )


def verify_certification(
    ak_public: bytes, key_public: bytes, certify_info: bytes, certify_signature: bytes
) -> tuple[TpmPublic, TpmPublic]:
    """The AK is a restricted P-256 signing key that certified the snapshot-signing key, a
    TPM-generated, non-exportable P-256 signing key. Returns both parsed."""
    ak = parse_public(ak_public, "attestation key")
    key = parse_public(key_public, "signing key")
    if not ak.has(OBJ_RESTRICTED | OBJ_SIGN | OBJ_FIXED_TPM | OBJ_FIXED_PARENT):
        raise TpmFormatError(
            "tpm_bad_ak", "the attestation key is not a restricted TPM signing key"
        )
    ak.ecc_public_key()
    if not key.has(OBJ_SIGN | OBJ_FIXED_TPM | OBJ_FIXED_PARENT | OBJ_SENSITIVE_DATA_ORIGIN):
        raise TpmFormatError(
            "tpm_bad_key", "the signing key is not a TPM-generated, non-exportable signing key"
        )
    key.ecc_public_key()
    attest, body = parse_attest(certify_info, "certification")
    if attest.type != ST_ATTEST_CERTIFY:
        raise TpmFormatError("tpm_bad_attest", "the certification is not a TPM2_Certify")
    verify_attest_signature(ak, body, certify_signature)
    if attest.certified_name != key.name:
        raise TpmFormatError("tpm_certify_mismatch", "the certification names another key")
    if not hmac.compare_digest(attest.extra_data, hashlib.sha256(key.name).digest()):
        raise TpmFormatError("tpm_certify_mismatch", "the certification's qualifying data is wrong")
    return ak, key


# --------------------------------------------------------------------------- MakeCredential


def kdfa(
    algorithm: str, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa of TPM 2.0 Part 1 §11.4.10.2 (SP 800-108 counter mode with HMAC)."""
    out = b""
    counter = 0
    label = label if label.endswith(b"\0") else label + b"\0"
    while len(out) * 8 < bits:
        counter += 1
        out += hmac.new(
            key,
            struct.pack(">I", counter) + label + context_u + context_v + struct.pack(">I", bits),
            algorithm,
        ).digest()
    return out[: (bits + 7) // 8]


@dataclass(frozen=True)
class Credential:
    """TPM2_MakeCredential's output, marshalled as TPM2_ActivateCredential takes it."""

    #: TPM2B_ID_OBJECT.
    blob: bytes
    #: TPM2B_ENCRYPTED_SECRET.
    secret: bytes


def make_credential(ek: TpmPublic, ak_name: bytes, credential: bytes) -> Credential:
    """Wrap ``credential`` (at most the EK name algorithm's digest size) for the TPM holding
    ``ek``, bound to the key named ``ak_name`` (an RSA EK; TPM 2.0 Part 1 §24)."""
    algorithm, size = _hash_of(ek.name_alg, "EK name algorithm")
    if ek.type != ALG_RSA or not ek.has(OBJ_RESTRICTED | OBJ_DECRYPT) or ek.symmetric_bits != 128:
        raise TpmFormatError(
            "tpm_bad_ek", "the EK is not a restricted RSA decryption key (AES-128)"
        )
    if len(credential) > size:
        raise ValueError("the credential is longer than the EK's digest")
    oaep_hashes: dict[str, hashes.HashAlgorithm] = {
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }
    oaep_hash = oaep_hashes.get(algorithm)
    if oaep_hash is None:
        raise TpmFormatError("tpm_bad_ek", f"the EK's name algorithm {algorithm} is not accepted")
    seed = os.urandom(size)
    encrypted_seed = ek.rsa_public_key().encrypt(
        seed, padding.OAEP(mgf=padding.MGF1(oaep_hash), algorithm=oaep_hash, label=b"IDENTITY\0")
    )
    sym_key = kdfa(algorithm, seed, b"STORAGE", ak_name, b"", 128)
    plain = struct.pack(">H", len(credential)) + credential
    encryptor = Cipher(algorithms.AES(sym_key), modes.CFB(b"\0" * 16)).encryptor()
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    hmac_key = kdfa(algorithm, seed, b"INTEGRITY", b"", b"", size * 8)
    outer = hmac.new(hmac_key, enc_identity + ak_name, algorithm).digest()
    id_object = struct.pack(">H", len(outer)) + outer + enc_identity
    return Credential(
        blob=struct.pack(">H", len(id_object)) + id_object,
        secret=struct.pack(">H", len(encrypted_seed)) + encrypted_seed,
    )


# --------------------------------------------------------------------------- enrollment


@dataclass(frozen=True)
class TpmIdentity:
    """What enrollment proved about a host's TPM (kept with the host)."""

    ek_public: bytes
    ak_public: bytes
    ak_name: bytes
    #: SHA-256 of the EK certificate (DER).
    ek_certificate_sha256: str

    def digest_of(self) -> str:
        """Names this identity in an activation ticket."""
        return hashlib.sha256(self.ek_public + b"|" + self.ak_public).hexdigest()


def check_tpm_enrollment(
    *,
    host_public_raw: bytes,
    ek_certificate: bytes,
    ek_public: bytes,
    ak_public: bytes,
    key_public: bytes,
    certify_info: bytes,
    certify_signature: bytes,
    cas: list[x509.Certificate],
) -> TpmIdentity:
    """Everything enrollment checks before it asks the TPM to activate a credential: the EK
    certificate chains to a vendor CA and names the EK, the AK certified the signing key, and
    the signing key is the host key being enrolled (``tpm_key_mismatch`` otherwise)."""
    ek = parse_public(ek_public, "EK")
    verify_ek_certificate(ek_certificate, ek, cas)
    ak, key = verify_certification(ak_public, key_public, certify_info, certify_signature)
    point = key.ecc_public_key().public_numbers()
    raw = b"\x04" + point.x.to_bytes(32, "big") + point.y.to_bytes(32, "big")
    if not hmac.compare_digest(raw, host_public_raw):
        raise TpmFormatError(
            "tpm_key_mismatch", "the certified TPM key is not the host key being enrolled"
        )
    return TpmIdentity(ek_public, ak_public, ak.name, hashlib.sha256(ek_certificate).hexdigest())
