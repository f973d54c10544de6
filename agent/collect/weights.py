"""Model-weight files: recognise them by their bytes and read their headers, safely.

This module owns format detection and header parsing; it does no walking and no hashing.

Detection looks at content, not names (a Hugging Face blob has no extension):

1. **safetensors**: an 8-byte little-endian header length, then a JSON object (``{`` followed by
   ``"`` or ``}``).
2. **GGUF**: the magic ``GGUF`` (version checked when the header is parsed).
3. **PyTorch zip** (``torch.save`` since 1.6): a zip archive (``PK\\x03\\x04``) whose central
   directory holds ``data.pkl`` or ``<dir>/data.pkl``.
4. **PyTorch legacy pickle**: a pickle (protocol 2-5, optionally framed) whose first object is
   torch's magic number ``0x1950a86a20f9469cfc6c``. Other pickles are not claimed: conservative.
5. **ONNX**: extension ``.onnx`` plus a protobuf sanity check (field 1 ``ir_version`` as a small
   varint followed by a well-formed field tag). ONNX has no magic, so the name is required.

Header facts (tensor count, parameter count, dtypes, string metadata) are read for safetensors and
GGUF. Both parsers are written here rather than borrowed: ``safetensors`` loads through Rust with
no header size limit we control, and ``gguf.GGUFReader`` memory-maps the whole file and builds
numpy arrays for every field with no bound on the counts a hostile header claims. Here every
length is checked against the bytes actually left in the file and against hard caps before
anything is allocated, so a hostile header costs at most :data:`MAX_SAFETENSORS_HEADER` bytes and
ends as a :class:`HeaderError` with a stable code.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

from contract import FileError, HeaderFacts, MalformedError, WeightFormat, parse_json_strict

#: Largest safetensors JSON header read (the format's own reference limit is 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 1000 * 1000
MAX_GGUF_TENSORS = 1 << 20
MAX_GGUF_KV = 1 << 16
MAX_GGUF_ARRAY = 1 << 26
MAX_GGUF_STRING = 64 * 1024 * 1024
MAX_GGUF_DIMS = 8
#: Metadata kept in the evidence, per file.
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_LEN = 128
MAX_METADATA_VALUE_LEN = 1024
#: Bytes read to decide whether a file is a weight file at all.
PREFIX_LEN = 64

_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

#: GGML tensor type ids (ggml.h ``enum ggml_type``); unknown ids are shown as ``ggml_type_<n>``.
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip


class HeaderError(Exception):
    """A weight file whose header is malformed or hostile. ``code`` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the bytes of one file say: its format and, where parsed, header facts or an error."""

    format: WeightFormat
    header: HeaderFacts | None = None
    error: FileError | None = None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _put_metadata(metadata: dict[str, str], key: str, value: str) -> None:
    if len(metadata) < MAX_METADATA_KEYS:
        metadata[_clip(key, MAX_METADATA_KEY_LEN)] = _clip(value, MAX_METADATA_VALUE_LEN)


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    chunks = []
    got = 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- detection


def sniff(prefix: bytes, name: bytes) -> WeightFormat | None:
    """The weight format suggested by a file's first bytes (and, for ONNX only, its name).

    ``pytorch-zip`` is only a candidate here: :func:`inspect` confirms it from the archive.
    """
    if len(prefix) >= 10 and prefix[8:9] == b"{" and prefix[9:10] in b'"} \t\r\n':
        return "safetensors"
    if prefix[:4] == b"GGUF":
        return "gguf"
    if prefix[:4] == b"PK\x03\x04":
        return "pytorch-zip"
    if _is_torch_pickle(prefix):
        return "pytorch-pickle"
    if name.lower().endswith(b".onnx") and _looks_like_onnx(prefix):
        return "onnx"
    return None


def _is_torch_pickle(prefix: bytes) -> bool:
    if len(prefix) < 2 or prefix[0] != 0x80 or not 2 <= prefix[1] <= 5:
        return False
    rest = prefix[2:]
    if rest[:1] == b"\x95":  # FRAME opcode (protocol 4+) with an 8-byte length
        rest = rest[9:]
    return rest[:12] == b"\x8a\x0a" + _TORCH_MAGIC


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = 0
    for shift in range(0, 64, 7):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    return None


def _looks_like_onnx(prefix: bytes) -> bool:
    if prefix[:1] != b"\x08":  # field 1 (ir_version), wire type 0
        return False
    parsed = _varint(prefix, 1)
    if parsed is None or not 1 <= parsed[0] <= 100:
        return False
    tag = _varint(prefix, parsed[1])
    if tag is None:
        return len(prefix) == parsed[1]  # the whole file is just ir_version: odd but sane
    field, wire = tag[0] >> 3, tag[0] & 7
    return 2 <= field <= 32 and wire in (0, 2)


def inspect(fd: int, size: int, name: bytes) -> Inspection | None:
    """Inspect an open regular file: None if it is not a weight file, else its format and facts.

    Never raises for bad content: a malformed header is returned as ``Inspection.error``.
    OSError from reading is left to the caller.
    """
    prefix = _pread_exact(fd, PREFIX_LEN, 0)
    fmt = sniff(prefix, name)
    if fmt is None:
        return None
    try:
        if fmt == "safetensors":
            return Inspection(fmt, header=parse_safetensors(fd, size))
        if fmt == "gguf":
            return Inspection(fmt, header=parse_gguf(fd, size))
        if fmt == "pytorch-zip":
            return _inspect_zip(fd, name)
    except HeaderError as exc:
        return Inspection(fmt, error=FileError(code=exc.code, detail=exc.detail))
    return Inspection(fmt)


_TORCH_SUFFIXES = (b".pt", b".pth", b".bin", b".ckpt", b".pt2")


def _inspect_zip(fd: int, name: bytes) -> Inspection | None:
    try:
        with os.fdopen(os.dup(fd), "rb") as fh, zipfile.ZipFile(fh) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        if name.lower().endswith(_TORCH_SUFFIXES):
            return Inspection(
                "pytorch-zip",
                error=FileError(code="bad_zip", detail=f"zip archive unreadable: {exc}"[:300]),
            )
        return None
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return Inspection("pytorch-zip")
    return None


# --------------------------------------------------------------------------- safetensors

# Bytes per element, for checking that offsets match shapes.
_SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64,
    "F64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64,
}  # fmt: skip


def parse_safetensors(fd: int, size: int) -> HeaderFacts:
    """Header facts of a safetensors file; raises :class:`HeaderError` for a bad header."""
    head = _pread_exact(fd, 8, 0)
    if len(head) < 8:
        raise HeaderError("truncated", "file ends inside the 8-byte header length")
    (length,) = struct.unpack("<Q", head)
    if length > MAX_SAFETENSORS_HEADER:
        raise HeaderError(
            "header_too_large",
            f"header length {length} exceeds the {MAX_SAFETENSORS_HEADER}-byte limit",
        )
    if length > size - 8:
        raise HeaderError(
            "truncated", f"header length {length} is past the end of a {size}-byte file"
        )
    raw = _pread_exact(fd, length, 8)
    if len(raw) < length:
        raise HeaderError("truncated", "file ended while reading the header")
    try:
        doc = parse_json_strict(raw.rstrip(b" "))
    except MalformedError as exc:
        raise HeaderError("invalid_json", f"header is not valid JSON: {exc.detail}") from exc
    if not isinstance(doc, dict):
        raise HeaderError("invalid_header", "header is not a JSON object")
    data_len = size - 8 - length
    metadata: dict[str, str] = {}
    dtypes: set[str] = set()
    params = 0
    tensors = 0
    for key, value in doc.items():
        if key == "__metadata__":
            if not isinstance(value, dict):
                raise HeaderError("invalid_header", "__metadata__ is not an object")
            for mk, mv in value.items():
                if isinstance(mv, str):
                    _put_metadata(metadata, mk, mv)
            continue
        numel = _check_tensor(key, value, data_len)
        tensors += 1
        params += numel
        dtypes.add(value["dtype"])
    return HeaderFacts(
        tensor_count=tensors, parameter_count=params, dtypes=sorted(dtypes), metadata=metadata
    )


def _check_tensor(name: str, info: Any, data_len: int) -> int:
    shown = _clip(name, 80)
    if not isinstance(info, dict):
        raise HeaderError("invalid_header", f"tensor {shown!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise HeaderError("invalid_header", f"tensor {shown!r} has no dtype string")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise HeaderError("invalid_header", f"tensor {shown!r} shape is not a list of sizes")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise HeaderError("invalid_header", f"tensor {shown!r} data_offsets are not [begin, end]")
    if offsets[1] > data_len:
        raise HeaderError(
            "offsets_past_end",
            f"tensor {shown!r} ends at data offset {offsets[1]}, past the {data_len} data bytes",
        )
    numel = 1
    for dim in shape:
        numel *= dim
    bits = _SAFETENSORS_DTYPE_BITS.get(dtype)
    if bits is not None and (numel * bits + 7) // 8 != offsets[1] - offsets[0]:
        raise HeaderError(
            "tensor_size_mismatch",
            f"tensor {shown!r}: {numel} x {dtype} does not fill {offsets[1] - offsets[0]} bytes",
        )
    return numel


# --------------------------------------------------------------------------- GGUF


class _Reader:
    """Sequential reads through ``pread`` with a bound: never past ``size``, never unbounded."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    def read(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise HeaderError(
                "truncated", f"{what} needs {n} bytes at offset {self.pos}; the file ends first"
            )
        start = self.pos - self._buf_at
        if start + n > len(self._buf):
            self._buf = _pread_exact(self.fd, max(n, 1 << 20), self.pos)
            self._buf_at = self.pos
            start = 0
            if len(self._buf) < n:
                raise HeaderError("truncated", f"file ended while reading {what}")
        self.pos += n
        return self._buf[start : start + n]

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise HeaderError(
                "truncated", f"{what} needs {n} bytes at offset {self.pos}; the file ends first"
            )
        self.pos += n

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.read(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.read(8, what))[0])

    def string(self, what: str, limit: int = MAX_GGUF_STRING) -> bytes:
        length = self.u64(f"{what} length")
        if length > limit:
            raise HeaderError("absurd_count", f"{what} claims {length} bytes (limit {limit})")
        return self.read(length, what)


# GGUF value types: id -> (struct format, size) for fixed-size scalars.
_GGUF_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def parse_gguf(fd: int, size: int) -> HeaderFacts:
    """Header facts of a GGUF v2/v3 file; raises :class:`HeaderError` for a bad header."""
    r = _Reader(fd, size)
    if r.read(4, "magic") != b"GGUF":
        raise HeaderError("bad_magic", "not a GGUF file")
    version = r.u32("version")
    if version not in (2, 3):
        raise HeaderError("unsupported_version", f"GGUF version {version}; this reads 2 and 3")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    if n_tensors > MAX_GGUF_TENSORS:
        raise HeaderError("absurd_count", f"header claims {n_tensors} tensors")
    if n_kv > MAX_GGUF_KV:
        raise HeaderError("absurd_count", f"header claims {n_kv} metadata entries")
    metadata: dict[str, str] = {}
    alignment = 32
    for _ in range(n_kv):
        key = _text(r.string("metadata key", 65535))
        vtype = r.u32(f"type of {key!r}")
        value = _gguf_value(r, vtype, key)
        if value is None:
            continue
        if key == "general.alignment" and isinstance(value, int) and not isinstance(value, bool):
            if value <= 0 or value & (value - 1):
                raise HeaderError("invalid_header", f"general.alignment {value} is not 2^n")
            alignment = value
        _put_metadata(metadata, key, value if isinstance(value, str) else str(value))
    dtypes: set[str] = set()
    params = 0
    offsets: list[int] = []
    for index in range(n_tensors):
        r.string(f"tensor {index} name", 65535)
        n_dims = r.u32(f"tensor {index} dimension count")
        if n_dims > MAX_GGUF_DIMS:
            raise HeaderError("absurd_count", f"tensor {index} claims {n_dims} dimensions")
        numel = 1
        for _dim in range(n_dims):
            numel *= r.u64(f"tensor {index} dimension")
        ggml_type = r.u32(f"tensor {index} type")
        offsets.append(r.u64(f"tensor {index} offset"))
        dtypes.add(GGML_TYPES.get(ggml_type, f"ggml_type_{ggml_type}"))
        params += numel
    data_start = -(-r.pos // alignment) * alignment
    for index, offset in enumerate(offsets):
        if data_start + offset > size:
            raise HeaderError(
                "offsets_past_end",
                f"tensor {index} data starts at {data_start + offset}, past the {size}-byte file",
            )
    return HeaderFacts(
        tensor_count=n_tensors, parameter_count=params, dtypes=sorted(dtypes), metadata=metadata
    )


def _gguf_value(r: _Reader, vtype: int, key: str) -> str | int | float | bool | None:
    """Read one metadata value; scalars and strings are returned, arrays skipped (None)."""
    if vtype in _GGUF_SCALARS:
        fmt, width = _GGUF_SCALARS[vtype]
        value: int | float | bool = struct.unpack(fmt, r.read(width, key))[0]
        return value
    if vtype == _GGUF_STRING:
        raw = r.string(key)
        return _text(raw[: MAX_METADATA_VALUE_LEN * 4])
    if vtype == _GGUF_ARRAY:
        item_type = r.u32(f"{key} item type")
        count = r.u64(f"{key} item count")
        if count > MAX_GGUF_ARRAY:
            raise HeaderError("absurd_count", f"array {key!r} claims {count} items")
        if item_type in _GGUF_SCALARS:
            r.skip(count * _GGUF_SCALARS[item_type][1], key)
        elif item_type == _GGUF_STRING:
            for _ in range(count):
                length = r.u64(f"{key} item length")
                if length > MAX_GGUF_STRING:
                    raise HeaderError("absurd_count", f"array {key!r} item claims {length} bytes")
                r.skip(length, key)
        else:  # nested arrays are not produced by any writer we know; refuse rather than recurse
            raise HeaderError("invalid_header", f"array {key!r} has item type {item_type}")
        return None
    raise HeaderError("invalid_header", f"metadata {key!r} has unknown type {vtype}")


__all__ = [
    "GGML_TYPES",
    "HeaderError",
    "Inspection",
    "inspect",
    "parse_gguf",
    "parse_safetensors",
    "sniff",
]
