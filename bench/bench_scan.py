#!/usr/bin/env python3
"""Benchmarks for the weight scan (issue 2, "Speed and memory"); results go to stdout as Markdown.

1. Cold scan (empty cache, page cache warm) of a tree of weight files against
   ``openssl dgst -sha256`` over the same files, one after another, in the same run.
2. Rescan of an unchanged tree of many small, distinct weight files (cache warm) against a bare
   ``os.scandir`` + ``stat`` walk of the same tree, in the same run. Both are timed from a swept
   heap and include the young-generation GC sweep of what they leave behind (:func:`timed`).
3. Peak RSS (``ru_maxrss``) of a subprocess that scans one large file.

``--smoke`` uses tiny sizes so CI can run it in seconds; the default sizes are the issue's
(2 GiB in 128 files, 10,000 files, one 4 GiB file). Data is generated under ``bench/.data/``
(gitignored) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collect.storage import scan_weight_roots  # noqa: E402

MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    cold_files: int
    cold_file_bytes: int
    rescan_files: int
    big_file_bytes: int
    repeats: int


FULL = Sizes(cold_files=128, cold_file_bytes=16 * MiB, rescan_files=10_000,
             big_file_bytes=4096 * MiB, repeats=5)  # fmt: skip
SMOKE = Sizes(cold_files=8, cold_file_bytes=1 * MiB, rescan_files=300,
              big_file_bytes=16 * MiB, repeats=1)  # fmt: skip


def safetensors_prefix(data_bytes: int) -> bytes:
    """A safetensors header for one U8 tensor of ``data_bytes`` bytes (so the scan claims it)."""
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}},
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def write_weight(path: Path, data_bytes: int, block: bytes, salt: int) -> None:
    with open(path, "wb") as fh:
        fh.write(safetensors_prefix(data_bytes))
        left = data_bytes
        first = True
        while left:
            chunk = block[: min(left, len(block))]
            if first:  # every file distinct, so no digest can be shared by accident
                chunk = salt.to_bytes(8, "little") + chunk[8:]
                first = False
            fh.write(chunk)
            left -= len(chunk)


def warm(paths: list[Path]) -> None:
    buf = bytearray(8 * MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def bench_cold(data: Path, sizes: Sizes) -> dict[str, float]:
    tree = data / "cold"
    tree.mkdir(parents=True)
    block = os.urandom(min(sizes.cold_file_bytes, 16 * MiB))
    paths = []
    for i in range(sizes.cold_files):
        sub = tree / f"shard-{i // 32:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"model-{i:05d}.safetensors"
        write_weight(path, sizes.cold_file_bytes, block, i)
        paths.append(path)
    total = sum(p.stat().st_size for p in paths)
    warm(paths)
    best_openssl = best_scan = float("inf")
    for rep in range(sizes.repeats):
        start = time.perf_counter()
        subprocess.run(
            ["openssl", "dgst", "-sha256", *map(str, paths)], check=True, stdout=subprocess.DEVNULL
        )
        best_openssl = min(best_openssl, time.perf_counter() - start)
        cache = data / f"cold-cache-{rep}.json"
        start = time.perf_counter()
        roots, errors = scan_weight_roots([tree], cache_path=cache)
        best_scan = min(best_scan, time.perf_counter() - start)
        assert not errors and roots[0].file_count == len(paths), errors
        assert all(f.sha256 for f in roots[0].files)
    shutil.rmtree(tree)
    return {
        "bytes": total,
        "files": len(paths),
        "openssl_s": best_openssl,
        "scan_s": best_scan,
        "openssl_mib_s": total / MiB / best_openssl,
        "scan_mib_s": total / MiB / best_scan,
        "ratio": best_openssl / best_scan,
    }


def bare_walk(top: Path) -> int:
    count = 0
    stack = [os.fsencode(top)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    entry.stat(follow_symlinks=False)
                    count += 1
    return count


def make_many(tree: Path, count: int) -> None:
    """``count`` small weight files, 100 per directory, every one distinct in digest, size and
    header (parameter count), so no work can be shared between files by accident."""
    block = os.urandom(256)
    for i in range(count):
        sub = tree / f"d{i // 100:03d}"
        if i % 100 == 0:
            sub.mkdir(parents=True)
        data_bytes = 64 + i % 128
        data = i.to_bytes(8, "little") + block[: data_bytes - 8]
        (sub / f"w{i:05d}.safetensors").write_bytes(safetensors_prefix(data_bytes) + data)


def timed(step: Callable[[], object]) -> tuple[float, object]:
    """Seconds for ``step`` from a swept heap, including the one young-generation sweep of
    what it leaves behind (a scan returns thousands of objects; the cyclic GC must visit them
    once, whoever allocates next)."""
    gc.collect()
    start = time.perf_counter()
    result = step()
    gc.collect(0)
    return time.perf_counter() - start, result


def bench_rescan(data: Path, sizes: Sizes) -> dict[str, float]:
    tree = data / "many"
    make_many(tree, sizes.rescan_files)
    cache = data / "rescan-cache"
    start = time.perf_counter()
    first, errors = scan_weight_roots([tree], cache_path=cache)
    cold_s = time.perf_counter() - start
    assert not errors and first[0].file_count == sizes.rescan_files, errors
    assert len({f.sha256 for f in first[0].files}) == sizes.rescan_files
    best_walk = best_scan = float("inf")
    for _ in range(max(3, sizes.repeats)):
        walk_s, count = timed(lambda: bare_walk(tree))
        assert count == sizes.rescan_files
        best_walk = min(best_walk, walk_s)
        scan_s, result = timed(lambda: scan_weight_roots([tree], cache_path=cache))
        best_scan = min(best_scan, scan_s)
        assert result == (first, [])
    shutil.rmtree(tree)
    return {
        "files": sizes.rescan_files,
        "first_scan_s": cold_s,
        "walk_s": best_walk,
        "rescan_s": best_scan,
        "ratio": best_scan / best_walk,
    }


# Peak RSS is VmHWM from /proc/self/status: ru_maxrss survives execve on Linux (the kernel folds
# the parent's high-water mark into the child's), so a child of this large process would report
# the parent's peak, not its own.
_RSS_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agent.collect.storage import scan_weight_roots
if sys.argv[3] == "scan":
    roots, errors = scan_weight_roots([Path(sys.argv[2])], cache_path=None)
    assert not errors and roots[0].files[0].sha256, errors
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(int(hwm.split()[1]))
"""


def bench_rss(data: Path, sizes: Sizes) -> dict[str, float]:
    tree = data / "big"
    tree.mkdir(parents=True)
    block = os.urandom(16 * MiB)
    write_weight(tree / "big.safetensors", sizes.big_file_bytes, block, 1)
    size = (tree / "big.safetensors").stat().st_size
    out = {}
    for mode in ("import", "scan"):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(REPO), str(tree), mode],
            check=True,
            capture_output=True,
            text=True,
        )
        out[f"{mode}_s"] = time.perf_counter() - start
        out[f"{mode}_peak_mib"] = int(result.stdout.split()[0]) / 1024
    shutil.rmtree(tree)
    return {"bytes": size, **out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds, for CI)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench" / ".data" / "scan")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    data: Path = args.data_dir
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    load_before = os.getloadavg()
    try:
        cold = bench_cold(data, sizes)
        rescan = bench_rescan(data, sizes)
        rss = bench_rss(data, sizes)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        with contextlib.suppress(OSError):
            data.parent.rmdir()  # bench/.data itself, when no other benchmark is using it
    load_after = os.getloadavg()
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout

    def met(ok: bool) -> str:
        return "(smoke: not judged)" if args.smoke else ("yes" if ok else "NO")

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"### {'Smoke run' if args.smoke else 'Full run'} ({when})")
    print()
    print(
        f"- Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}, {openssl.strip()}"
    )
    print(
        "- Load average (1/5/15 min) before: "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after: "
        + "/".join(f"{x:.2f}" for x in load_after)
        + " (the CPUs are shared with other engineers' test runs)"
    )
    print(f"- Best of {sizes.repeats} runs for each timed step.")
    print()
    print("| measurement | result | target | met |")
    print("| --- | --- | --- | --- |")
    print(
        f"| cold scan, {cold['files']} files, {cold['bytes'] / MiB:.0f} MiB, page cache warm "
        f"| scan {cold['scan_s']:.2f} s ({cold['scan_mib_s']:.0f} MiB/s) vs openssl "
        f"{cold['openssl_s']:.2f} s ({cold['openssl_mib_s']:.0f} MiB/s): **{cold['ratio']:.2f}x** "
        f"| >= 1.7x, never < 0.9x | {met(cold['ratio'] >= 1.7)} |"
    )
    print(
        f"| rescan, {rescan['files']} unchanged files, cache warm "
        f"| scan {rescan['rescan_s'] * 1000:.0f} ms vs bare walk {rescan['walk_s'] * 1000:.0f} ms:"
        f" **{rescan['ratio']:.2f}x** (first scan {rescan['first_scan_s']:.2f} s) "
        f"| <= 3x | {met(rescan['ratio'] <= 3.0)} |"
    )
    print(
        f"| peak RSS, one {rss['bytes'] / MiB:.0f} MiB file | **{rss['scan_peak_mib']:.1f} MiB** "
        f"(interpreter + imports alone: {rss['import_peak_mib']:.1f} MiB; scan took "
        f"{rss['scan_s']:.1f} s) | < 100 MB | {met(rss['scan_peak_mib'] < 100)} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
