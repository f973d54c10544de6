"""`veu-agent` as an operator uses it: output paths, streams, bad --weights, pipes, summaries.

Every command runs as the installed console script (``veu-agent`` next to the interpreter), so
what is tested is what an operator types.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.cli import summarize
from contract import (
    AgentInfo,
    Encryption,
    FileError,
    HostInfo,
    Posture,
    SnapshotV1,
    StorageRoot,
    WeightFile,
    parse_envelope,
    parse_statement,
)
from tests.agent.weights_fixtures import write_safetensors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EMPTY_SYSFS = FIXTURES / "sysfs" / "empty"


def veu_agent() -> str:
    found = Path(sys.executable).with_name("veu-agent")
    return str(found) if found.exists() else (shutil.which("veu-agent") or "veu-agent")


def agent(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([veu_agent(), *args], capture_output=True, timeout=120, cwd=cwd)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    assert agent("init", "--state-dir", str(state_dir)).returncode == 0
    return state_dir


def snapshot_args(state_dir: Path, *extra: str) -> list[str]:
    return ["snapshot", "--state-dir", str(state_dir), "--sys-root", str(EMPTY_SYSFS), *extra]


def head_seq(state_dir: Path) -> int | None:
    try:
        return int(json.loads((state_dir / "head.json").read_text())["seq"])
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- --weights


@pytest.mark.parametrize("command", ["snapshot", "attest"])
def test_a_missing_weights_path_is_refused_before_anything_is_signed(
    state: Path, tmp_path: Path, command: str
) -> None:
    before = sorted(p.name for p in state.iterdir())
    missing = tmp_path / "no-such-models"
    result = agent(
        command,
        "--state-dir",
        str(state),
        "--sys-root",
        str(EMPTY_SYSFS),
        "--weights",
        str(missing),
    )
    assert result.returncode == 4, result.stderr
    assert b"error[weights_not_found]" in result.stderr and str(missing).encode() in result.stderr
    assert b"Traceback" not in result.stderr
    assert sorted(p.name for p in state.iterdir()) == before  # no chain advance


# --------------------------------------------------------------------------- --json


def test_json_without_out_is_one_document_on_stdout_holding_the_envelope(state: Path) -> None:
    result = agent(*snapshot_args(state, "--json"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # what `| jq` reads: exactly one JSON value
    assert document["seq"] == 1 and len(document["digest"]) == 64
    envelope = parse_envelope(json.dumps(document["envelope"]).encode())
    _, snapshot = parse_statement(envelope.payload_bytes())
    assert snapshot.seq == 1
    # What jq extracts verifies as it is.
    path = state.parent / "env.json"
    path.write_text(json.dumps(document["envelope"]))
    assert agent("verify", str(path), "--state-dir", str(state)).returncode == 0


# --------------------------------------------------------------------------- --out


def test_out_to_a_fifo_writes_through_and_leaves_the_fifo(state: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as reader:
            got.append(reader.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = agent(*snapshot_args(state, "--out", str(fifo)))
    reader.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert got, "nothing was written into the FIFO"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    parse_envelope(got[0])


def test_out_to_a_character_device_writes_through_and_never_unlinks_it(
    state: Path, tmp_path: Path
) -> None:
    if os.geteuid() == 0:  # a null device of our own: the host's /dev/null is never at risk
        device = tmp_path / "null"
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:  # without root /dev/null cannot be replaced, whatever the agent does
        device = Path("/dev/null")
    before = os.lstat(device)
    result = agent(*snapshot_args(state, "--out", str(device)))
    assert result.returncode == 0, result.stderr
    after = os.lstat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    assert after.st_rdev == before.st_rdev


def test_out_dash_is_stdout(state: Path, tmp_path: Path) -> None:
    result = agent(*snapshot_args(state, "--out", "-"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parse_envelope(result.stdout.strip())
    assert not (tmp_path / "-").exists()


def test_out_to_a_symlink_in_the_state_directory_is_refused(state: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    link = state / "latest.json"
    link.symlink_to(target)
    result = agent(*snapshot_args(state, "--out", str(link)))
    assert result.returncode == 1
    assert b"error[out_symlink]" in result.stderr and b"Traceback" not in result.stderr
    assert link.is_symlink() and target.read_bytes() == b"keep me"


def test_out_to_a_regular_file_is_replaced_atomically(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "snap.json"
    out.write_bytes(b"old")
    assert agent(*snapshot_args(state, "--out", str(out))).returncode == 0
    parse_envelope(out.read_bytes())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".snap")] == []


# --------------------------------------------------------------------------- --dry-run


def test_dry_run_signs_the_next_snapshot_but_leaves_the_chain(state: Path) -> None:
    # Never --out /dev/null in a test: run against an agent from before write-through, as root,
    # that replaced the host's device node.
    assert agent(*snapshot_args(state, "--out", str(state.parent / "first.json"))).returncode == 0
    head = (state / "head.json").read_bytes()
    result = agent(*snapshot_args(state, "--dry-run"))
    assert result.returncode == 0, result.stderr
    _, snapshot = parse_statement(parse_envelope(result.stdout.strip()).payload_bytes())
    assert snapshot.seq == 2 and snapshot.extensions["dry_run"] is True
    assert (state / "head.json").read_bytes() == head and head_seq(state) == 1
    assert b"dry run" in result.stderr


# --------------------------------------------------------------------------- pipes


def test_verify_into_a_pipe_closed_early_ends_quietly(state: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for i in range(400):  # enough files for --json output to overflow any pipe buffer
        write_safetensors(models / f"m{i:03}.safetensors", {"i": str(i)})
    out = tmp_path / "snap.json"
    assert agent(*snapshot_args(state, "--weights", str(models), "--out", str(out))).returncode == 0
    proc = subprocess.Popen(
        [veu_agent(), "verify", str(out), "--state-dir", str(state), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10)  # like `| head -c 10`: read a little, then go away
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=60)
    assert code == 141, err
    assert b"Traceback" not in err and b"Exception ignored" not in err and err == b""


# --------------------------------------------------------------------------- summaries


def _snapshot_with(files: list[WeightFile], unidentified_count: int | None) -> SnapshotV1:
    root = StorageRoot(
        root="/models",
        encryption=Encryption(status="encrypted", method="dm-crypt/LUKS2"),
        file_count=len(files),
        total_bytes=sum(f.size for f in files),
        files=files,
        unidentified_count=unidentified_count,
        unidentified_bytes=12_400_000_000 if unidentified_count else None,
    )
    return SnapshotV1(
        agent=AgentInfo(key_id="a" * 64, version="t"),
        site_id="s",
        host=HostInfo(),
        seq=1,
        prev=None,
        nonce=None,
        collected_at="2026-01-01T00:00:00Z",
        accelerators=[],
        storage=[root],
        posture=Posture(),
        errors=[],
    )


def test_an_unreadable_weight_file_is_never_summarized_as_no_errors(tmp_path: Path) -> None:
    from agent.cli import _print_summary

    unreadable = WeightFile(
        path="/models/q4.gguf",
        size=10,
        mtime="2026-01-01T00:00:00Z",
        mode="0600",
        uid=0,
        gid=0,
        format="gguf",
        error=FileError(code="unreadable", detail="Permission denied"),
    )
    summary = summarize(_snapshot_with([unreadable], 3))
    assert summary["unreadable_files"] == 1
    assert summary["unidentified_files"] == 3
    assert summary["weight_roots"][0]["encryption"] == "encrypted"
    path = tmp_path / "summary.txt"
    with path.open("w") as stream:
        _print_summary(summary, hashlib.sha256(b"").hexdigest(), stream)
    text = path.read_text()
    assert "collector errors: none" not in text
    assert "unreadable files: 1" in text and "/models/q4.gguf: unreadable" in text
    assert "3 unidentified files, 12.4 GB" in text
    assert "/models: encrypted (dm-crypt/LUKS2)" in text
