"""Signed notes and checkpoints: Go's sumdb/note reference note byte for byte, strict parsing,
signatures of the right key only, and the log key file (0600, refused when others can read it)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.errors import ResultError
from contract.tlog import (
    Checkpoint,
    CheckpointError,
    NoteKey,
    note_key_id,
    open_note,
    parse_checkpoint,
    parse_note,
    parse_verifier_key,
    verifier_key,
    verify_checkpoint,
)
from server.log.note import LogKey, load_log_key, sign_note

# The example of golang.org/x/mod/sumdb/note (note.go's package documentation and note_test.go):
# the private key's base64 is 0x01 followed by the Ed25519 seed.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY_B64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def go_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(GO_SKEY_B64)[1:])


def test_go_reference_note() -> None:
    key = parse_verifier_key(GO_VKEY)
    assert key.key_id.hex() == "c74f20a3"
    # The key id is SHA-256(name || 0x0A || 0x01 || key)[:4], computed here independently.
    raw = base64.b64decode(GO_VKEY.split("+")[2])
    assert hashlib.sha256(b"PeterNeumann\n" + raw).digest()[:4] == key.key_id
    assert verifier_key("PeterNeumann", go_key().public_key()) == GO_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", go_key()) == GO_NOTE
    assert open_note(GO_NOTE, key) == GO_TEXT
    with pytest.raises(CheckpointError) as err:
        open_note(GO_NOTE.replace("problem,", "problem;"), key)
    assert err.value.code == "checkpoint_bad_signature"


def log_key() -> LogKey:
    return LogKey(Ed25519PrivateKey.generate(), "veu.example/log")


def test_checkpoint_round_trip() -> None:
    key = log_key()
    root = hashlib.sha256(b"root").digest()
    note = key.sign(12345, root)
    lines = note.split("\n")
    assert lines[:3] == ["veu.example/log", "12345", base64.b64encode(root).decode()]
    assert lines[3] == "" and lines[4].startswith("\u2014 veu.example/log ")
    cp = verify_checkpoint(note, key.note_key)
    assert (cp.origin, cp.size, cp.root) == ("veu.example/log", 12345, root)
    pinned = parse_verifier_key(key.verifier_key)
    assert (pinned.name, pinned.key_id) == (key.origin, key.note_key.key_id)
    assert verify_checkpoint(note, pinned).size == 12345


def test_verifier_key_with_a_plus_in_its_base64() -> None:
    # transparency-dev/formats' note tests use this key because its base64 holds a "+".
    key = parse_verifier_key("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert key.key_id.hex() == "7997405c"


def test_other_keys_signatures_are_ignored_but_one_of_ours_is_needed() -> None:
    key, other = log_key(), LogKey(Ed25519PrivateKey.generate(), "witness.example")
    note = key.sign(3, bytes(32))
    body = note.split("\n\n")[0] + "\n"
    cosigned = note + sign_note(body, other.origin, other.private).split("\n\n")[1]
    assert verify_checkpoint(cosigned, key.note_key).size == 3
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(sign_note(body, other.origin, other.private), key.note_key)
    assert err.value.code == "checkpoint_unsigned"
    # Same name, different key: the key id differs, so it is not ours.
    impostor = LogKey(Ed25519PrivateKey.generate(), key.origin)
    with pytest.raises(CheckpointError):
        verify_checkpoint(impostor.sign(3, bytes(32)), key.note_key)
    # Our name and key id, but a forged signature.
    forged = NoteKey(key.origin, key.note_key.key_id, impostor.private.public_key())
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(note, forged)
    assert err.value.code == "checkpoint_bad_signature"


def test_wrong_origin() -> None:
    key = log_key()
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(key.sign(1, bytes(32)), key.note_key, origin="another/log")
    assert err.value.code == "checkpoint_wrong_origin"


ROOT64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"o\n012\n{ROOT64}\n",  # leading zero
        f"o\n-1\n{ROOT64}\n",
        f"o\n{1 << 63}\n{ROOT64}\n",  # past 2^63-1
        f"o\n99999999999999999999999\n{ROOT64}\n",
        "o\n1\nAAAA\n",  # not 32 bytes
        f"o\n1\n{ROOT64[:-1]}!\n",  # not base64
        f"o\n1\n{ROOT64}",  # no final newline
        "o\n1\n",  # no root
        f"\n1\n{ROOT64}\n",  # empty origin
        f"o\n1\n{ROOT64}\n\nextension\n",  # an empty line
        f"o\n1\n{ROOT64}\n" + "e\n" * 17,  # too many extension lines
        f"o\n 1\n{ROOT64}\n",
    ],
)
def test_checkpoint_grammar(text: str) -> None:
    with pytest.raises(CheckpointError) as err:
        parse_checkpoint(text)
    assert err.value.code == "bad_checkpoint"


def test_checkpoint_extensions_kept() -> None:
    cp = parse_checkpoint(f"o\n7\n{ROOT64}\nTimestamp: 1\n")
    assert cp == Checkpoint("o", 7, bytes(32), ("Timestamp: 1",))
    assert cp.body() == f"o\n7\n{ROOT64}\nTimestamp: 1\n"


@pytest.mark.parametrize(
    "note",
    [
        b"\xff\xfe",  # not UTF-8
        b"a" * (16 * 1024 + 1),  # too large
        b"text\n\x00\n\n\xe2\x80\x94 n AAAAAAA=\n",  # control character
        b"text\n",  # no signatures
        b"text\n\n",  # no signature lines
        "text\n\n\u2014 n AAAA\n".encode(),  # too short a signature
        "text\n\n\u2014 n AAAAAAA=".encode(),  # no final newline
        b"text\n\n- n AAAAAAAA\n",  # not an em dash
        "text\n\n\u2014 n !!!!!!!!\n".encode(),  # not base64
        ("text\n\n" + "\u2014 n AAAAAAAA\n" * 33).encode(),  # too many signatures
        "text\r\n\n\u2014 n AAAAAAAA\n".encode(),
    ],
)
def test_note_grammar(note: bytes) -> None:
    with pytest.raises(CheckpointError) as err:
        parse_note(note)
    assert err.value.code == "bad_note"


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong type
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",  # short
        "PeterNeumann+c74f20a3+!!!",
    ],
)
def test_bad_verifier_keys(text: str) -> None:
    with pytest.raises(CheckpointError) as err:
        parse_verifier_key(text)
    assert err.value.code == "bad_log_key"


def test_log_key_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "log.key"
    key = load_log_key(path, "veu.example/log")
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_log_key(path, "veu.example/log")
    assert again.verifier_key == key.verifier_key
    assert note_key_id("veu.example/log", key.private.public_key()) == key.note_key.key_id
    assert "PRIVATE" not in repr(key)
    os.chmod(path, 0o644)
    with pytest.raises(ResultError) as err:
        load_log_key(path, "veu.example/log")
    assert err.value.code == "log_key_permissions"
