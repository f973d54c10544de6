"""Builders for real (and deliberately broken) weight files used by the storage tests.

Good files come from the formats' own writers (``safetensors``, ``gguf``); broken ones are
written byte by byte so each test names exactly what is wrong.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "storage"
TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def write_safetensors(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Two tensors: 4x8 float32 and 3 float16 (35 parameters)."""
    tensors = {
        "embed": np.arange(32, dtype=np.float32).reshape(4, 8),
        "bias": np.ones(3, dtype=np.float16),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_gguf(path: Path) -> Path:
    """A llama-style GGUF v3: a name, a scalar, a string array, two tensors (35 parameters)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello"])
    writer.add_tensor("tok_embd", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("out_norm", np.ones((3,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def safetensors_bytes(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file with an arbitrary header (and a header length that may lie)."""
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def safetensors_header(tensors: dict[str, object]) -> bytes:
    return json.dumps(tensors).encode()


def gguf_bytes(n_tensors: int, n_kv: int, body: bytes = b"", version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def torch_zip(path: Path, inner: str = "archive/data.pkl") -> Path:
    """The layout ``torch.save`` writes: a zip with ``<name>/data.pkl`` and ``<name>/version``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(inner, pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return path


def torch_legacy_pickle(protocol: int = 2) -> bytes:
    """The start of a legacy ``torch.save`` file: the magic number, pickled first."""
    return pickle.dumps(TORCH_MAGIC, protocol=protocol) + pickle.dumps(1001, protocol=protocol)


def onnx_bytes() -> bytes:
    """ModelProto: ir_version=8, producer_name="pytorch", then a tiny graph field."""
    producer = b"pytorch"
    graph = b"\x0a\x01x"
    return (
        b"\x08\x08"
        + b"\x12"
        + bytes([len(producer)])
        + producer
        + b"\x3a"
        + bytes([len(graph)])
        + graph
    )
