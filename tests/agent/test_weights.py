"""Weight-file detection and header parsing, including hostile headers."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collect import weights
from agent.collect.weights import Inspection
from tests.agent.weights_fixtures import (
    gguf_bytes,
    gguf_string,
    onnx_bytes,
    safetensors_bytes,
    safetensors_header,
    torch_legacy_pickle,
    torch_zip,
    write_gguf,
    write_safetensors,
)


def inspect_file(path: Path) -> Inspection | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return weights.inspect(fd, os.fstat(fd).st_size, path.name.encode())
    finally:
        os.close(fd)


def inspect_bytes(tmp_path: Path, data: bytes, name: str = "blob") -> Inspection | None:
    path = tmp_path / name
    path.write_bytes(data)
    return inspect_file(path)


@pytest.fixture
def tensor_f32() -> Iterator[dict[str, object]]:
    yield {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


# --------------------------------------------------------------------------- safetensors


def test_safetensors_header_facts_are_read(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "model.safetensors", {"format": "pt", "license": "mit"})
    found = inspect_file(path)
    assert found is not None and found.format == "safetensors" and found.error is None
    assert found.header is not None
    assert found.header.tensor_count == 2
    assert found.header.parameter_count == 4 * 8 + 3
    assert found.header.dtypes == ["F16", "F32"]
    assert found.header.metadata == {"format": "pt", "license": "mit"}


def test_safetensors_is_found_by_content_without_extension(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "model.safetensors")
    blob = tmp_path / "0f3a9c"  # a Hugging Face blob name
    path.rename(blob)
    found = inspect_file(blob)
    assert found is not None and found.format == "safetensors"


def test_safetensors_metadata_values_are_truncated(tmp_path: Path) -> None:
    many = {f"k{i}": "v" * 5000 for i in range(100)}
    found = inspect_file(write_safetensors(tmp_path / "m.safetensors", many))
    assert found is not None and found.header is not None
    assert len(found.header.metadata) == weights.MAX_METADATA_KEYS
    assert all(len(v) <= weights.MAX_METADATA_VALUE_LEN for v in found.header.metadata.values())


def test_safetensors_header_length_2_pow_63_is_a_file_error(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, safetensors_bytes(b'{"a":1}', length=2**63))
    assert found is not None and found.format == "safetensors"
    assert found.error is not None and found.error.code == "header_too_large"
    assert found.header is None


def test_safetensors_header_length_past_end_of_file_is_truncated(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, safetensors_bytes(b'{"__metadata__":{}}', length=5000))
    assert found is not None and found.error is not None
    assert found.error.code == "truncated"


def test_safetensors_invalid_json_is_a_file_error(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, safetensors_bytes(b'{"w": {"dtype": '))
    assert found is not None and found.error is not None
    assert found.error.code == "invalid_json"


def test_safetensors_duplicate_keys_are_invalid_json(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, safetensors_bytes(b'{"a":{},"a":{}}'))
    assert found is not None and found.error is not None
    assert found.error.code == "invalid_json"


def test_safetensors_offsets_past_end_are_a_file_error(
    tmp_path: Path, tensor_f32: dict[str, object]
) -> None:
    header = safetensors_header(tensor_f32)
    found = inspect_bytes(tmp_path, safetensors_bytes(header, data=b"\0" * 8))
    assert found is not None and found.error is not None
    assert found.error.code == "offsets_past_end"


def test_safetensors_offsets_not_matching_shape_are_a_file_error(tmp_path: Path) -> None:
    header = safetensors_header({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})
    found = inspect_bytes(tmp_path, safetensors_bytes(header, data=b"\0" * 16))
    assert found is not None and found.error is not None
    assert found.error.code == "tensor_size_mismatch"


@pytest.mark.parametrize(
    "tensor",
    [
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": 7, "shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]},
        {"dtype": "F32", "shape": [1]},
        "not an object",
    ],
)
def test_safetensors_malformed_tensor_entries_are_invalid_header(
    tmp_path: Path, tensor: object
) -> None:
    header = safetensors_header({"w": tensor})
    found = inspect_bytes(tmp_path, safetensors_bytes(header, data=b"\0" * 4))
    assert found is not None and found.error is not None
    assert found.error.code == "invalid_header"


def test_safetensors_file_shorter_than_length_field_is_not_claimed(tmp_path: Path) -> None:
    assert inspect_bytes(tmp_path, b"\x02\x00\x00") is None


# --------------------------------------------------------------------------- GGUF


def test_gguf_header_facts_are_read(tmp_path: Path) -> None:
    found = inspect_file(write_gguf(tmp_path / "tiny.gguf"))
    assert found is not None and found.format == "gguf" and found.error is None
    assert found.header is not None
    assert found.header.tensor_count == 2
    assert found.header.parameter_count == 35
    assert found.header.dtypes == ["F16", "F32"]
    assert found.header.metadata["general.name"] == "tiny-llama"
    assert found.header.metadata["llama.block_count"] == "2"
    assert "tokenizer.ggml.tokens" not in found.header.metadata  # arrays are skipped


def test_gguf_absurd_tensor_count_is_a_file_error(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, gguf_bytes(2**62, 0))
    assert found is not None and found.format == "gguf"
    assert found.error is not None and found.error.code == "absurd_count"


def test_gguf_absurd_kv_count_is_a_file_error(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, gguf_bytes(0, 2**40))
    assert found is not None and found.error is not None
    assert found.error.code == "absurd_count"


def test_gguf_string_longer_than_file_is_truncated(tmp_path: Path) -> None:
    body = struct.pack("<Q", 2**40) + b"general.name"
    found = inspect_bytes(tmp_path, gguf_bytes(0, 1, body))
    assert found is not None and found.error is not None
    assert found.error.code in {"absurd_count", "truncated"}


def test_gguf_header_cut_short_is_truncated(tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "whole.gguf").read_bytes()
    found = inspect_bytes(tmp_path, data[:60], name="cut.gguf")
    assert found is not None and found.error is not None
    assert found.error.code == "truncated"


def test_gguf_array_with_absurd_count_is_a_file_error(tmp_path: Path) -> None:
    body = gguf_string("tokens") + struct.pack("<IIQ", 9, 8, 2**50)
    found = inspect_bytes(tmp_path, gguf_bytes(0, 1, body))
    assert found is not None and found.error is not None
    assert found.error.code == "absurd_count"


def test_gguf_tensor_offset_past_end_is_a_file_error(tmp_path: Path) -> None:
    tensor = gguf_string("w") + struct.pack("<IQIQ", 1, 4, 0, 2**40)
    found = inspect_bytes(tmp_path, gguf_bytes(1, 0, tensor))
    assert found is not None and found.error is not None
    assert found.error.code == "offsets_past_end"


def test_gguf_unknown_value_type_is_a_file_error(tmp_path: Path) -> None:
    body = gguf_string("k") + struct.pack("<I", 99)
    found = inspect_bytes(tmp_path, gguf_bytes(0, 1, body))
    assert found is not None and found.error is not None
    assert found.error.code == "invalid_header"


def test_gguf_version_1_is_unsupported(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, gguf_bytes(0, 0, version=1))
    assert found is not None and found.error is not None
    assert found.error.code == "unsupported_version"


# --------------------------------------------------------------------------- PyTorch, ONNX


def test_pytorch_zip_with_data_pkl_is_found_without_extension(tmp_path: Path) -> None:
    found = inspect_file(torch_zip(tmp_path / "weights"))
    assert found == Inspection("pytorch-zip")


def test_ordinary_zip_is_not_a_weight_file(tmp_path: Path) -> None:
    assert inspect_file(torch_zip(tmp_path / "docs.zip", inner="readme.txt")) is None


def test_broken_zip_named_like_a_checkpoint_is_a_file_error(tmp_path: Path) -> None:
    found = inspect_bytes(tmp_path, b"PK\x03\x04" + b"\0" * 40, name="model.pt")
    assert found is not None and found.format == "pytorch-zip"
    assert found.error is not None and found.error.code == "bad_zip"


def test_broken_zip_with_other_name_is_ignored(tmp_path: Path) -> None:
    assert inspect_bytes(tmp_path, b"PK\x03\x04" + b"\0" * 40, name="x.docx") is None


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_legacy_torch_pickle_is_found_by_magic_number(tmp_path: Path, protocol: int) -> None:
    found = inspect_bytes(tmp_path, torch_legacy_pickle(protocol), name="old.bin")
    assert found == Inspection("pytorch-pickle")


def test_ordinary_pickle_is_not_claimed(tmp_path: Path) -> None:
    assert inspect_bytes(tmp_path, pickle.dumps({"a": 1}, protocol=2), name="x.pkl") is None


def test_onnx_needs_extension_and_protobuf_shape(tmp_path: Path) -> None:
    assert inspect_bytes(tmp_path, onnx_bytes(), name="model.onnx") == Inspection("onnx")
    assert inspect_bytes(tmp_path, onnx_bytes(), name="model.dat") is None
    assert inspect_bytes(tmp_path, b"hello world", name="fake.onnx") is None
    assert inspect_bytes(tmp_path, b"\x08\xff\xff\xff\xff\x0f", name="big.onnx") is None


@pytest.mark.parametrize(
    "data", [b"", b"#!/bin/sh\necho hi\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b'{"a": 1}']
)
def test_non_weight_files_are_ignored(tmp_path: Path, data: bytes) -> None:
    assert inspect_bytes(tmp_path, data, name="file.safetensors") is None
