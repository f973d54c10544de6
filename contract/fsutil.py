"""Crash-safe file writes: write a temporary file, fsync it, rename it over, fsync the directory.

After :func:`atomic_write` returns, either the old or the new content is on disk, never a mix,
even if the machine loses power. :func:`write_output` decides, for a path an operator names,
whether it may be replaced that way or must be written through (devices, FIFOs).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # umask must not widen or narrow what we asked for
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class OutputError(Exception):
    """An output path the agent will not write; ``code`` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _inside(path: Path, directory: Path) -> bool:
    try:
        Path(os.path.realpath(path.parent)).relative_to(os.path.realpath(directory))
    except ValueError:
        return False
    return True


def write_output(path: Path, data: bytes, *, state_dir: Path, mode: int = 0o644) -> None:
    """Write a command's output file without damaging what is there.

    A new path or a regular file is replaced atomically (:func:`atomic_write`); a character or
    block device or a FIFO is written through (opened for writing, never unlinked or renamed
    over: ``--out /dev/null`` must leave the device node alone). A symlink in the state
    directory is refused (nothing there is followed or replaced through a link); elsewhere it is
    followed and its target handled by these rules. Directories and sockets are refused.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        atomic_write(path, data, mode=mode)
        return
    if stat.S_ISLNK(st.st_mode):
        if _inside(path, state_dir):
            raise OutputError(
                "out_symlink",
                f"{path} is a symlink inside the state directory {state_dir}; "
                "refusing to follow or replace it",
            )
        write_output(Path(os.path.realpath(path)), data, state_dir=state_dir, mode=mode)
        return
    if stat.S_ISREG(st.st_mode):
        atomic_write(path, data, mode=mode)
        return
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return
    kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a file, device or FIFO"
    raise OutputError("out_not_writable", f"{path} is {kind}; give a file path or -")
