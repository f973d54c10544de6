#!/usr/bin/env python3
"""Ingest instructions per snapshot under callgrind, for one or more builds in the same run.

Instruction counts do not move with the machine's load the way times do (the CPUs of the
development box are shared), so this is the figure that says whether a change made ingest
cheaper or dearer (issue 17: "Ingest in process costs no more instructions per snapshot than
today"). Each ``--tree`` runs :mod:`bench.instructions_driver` under ``valgrind --tool=callgrind
--instr-atstart=no`` with that tree first on ``PYTHONPATH``; the driver switches instrumentation
on only around the ingest loop of bench_ingest's in-process run (appraise, group-commit write of
8, settle every 256 snapshots and at the end, on SQLite), so imports, set-up and enrollment are
not counted. Reported: the collected instructions (``Ir``) divided by the snapshots, per tree,
and each tree against the first one (the reference); the run fails when a tree costs more than
the reference by more than ``--tolerance``.

The same envelopes go to every tree: built once, before any driver starts, by this checkout's
test builders, from keys derived from fixed seeds, for one site id that each driver gives its
site. The drivers run side by side, so the envelopes are equally fresh for each (evidence older
than five minutes is judged late, which is more work). Python's hash seed is fixed.

Instrumentation is switched with ``CALLGRIND_START_INSTRUMENTATION`` /
``CALLGRIND_STOP_INSTRUMENTATION`` from ``valgrind/callgrind.h``. These are C macros (an inline
"client request" instruction sequence valgrind recognises), and no Python binding for them
exists, so a tiny C shim is compiled with ``gcc`` into a temporary folder at run time and loaded
with ctypes. Without valgrind, its header or gcc the benchmark says what is missing and exits 3.

``--smoke``: 2 hosts x 2 snapshots, batches of 2 (what
tests/bench/test_bench_instructions_smoke.py runs).
``--write`` puts the run first in the "## Ingest instructions (callgrind)" section of
bench/RESULTS.md and keeps the earlier runs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTION = "## Ingest instructions (callgrind)"
DRIVER = REPO / "bench" / "instructions_driver.py"
HEADER = Path("/usr/include/valgrind/callgrind.h")
#: Exit status when valgrind, its header or a C compiler is missing (nothing was measured).
UNAVAILABLE = 3

SHIM = """\
#include <valgrind/callgrind.h>
void veu_callgrind_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void veu_callgrind_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
int veu_running_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""


@dataclass
class Tree:
    path: Path
    label: str
    commit: str


@dataclass
class Measured:
    tree: Tree
    instructions: int
    snapshots: int
    errors: int
    api: str

    @property
    def per_snapshot(self) -> float:
        return self.instructions / self.snapshots if self.snapshots else 0.0


def missing_tools(valgrind: str) -> str | None:
    """Why this machine cannot run the benchmark, or None when it can."""
    if shutil.which(valgrind) is None:
        return f"valgrind not found ({valgrind!r}); install it (Debian: apt-get install valgrind)"
    if not HEADER.is_file():
        return f"{HEADER} not found; it comes with valgrind (Debian: apt-get install valgrind)"
    if shutil.which("gcc") is None:
        return "gcc not found; the callgrind shim is compiled at run time"
    return None


def build_shim(folder: Path) -> Path:
    source = folder / "callgrind_shim.c"
    source.write_text(SHIM)
    library = folder / "callgrind_shim.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O1",
            "-I",
            str(HEADER.parent.parent),
            "-o",
            str(library),
            str(source),
        ],
        check=True,
    )
    return library


def build_load(hosts: int, per_host: int, batch: int, settle_every: int) -> dict[str, object]:
    """The envelopes of bench_ingest's load (8-GPU snapshots, each host's chain in order,
    interleaved across hosts), signed with keys from fixed seeds, for one fixed site id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.server.builders import HostKit

    site_id = "site_" + hashlib.sha256(b"veu bench_instructions site").hexdigest()[:16]
    keys = [
        Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"host {i}".encode()).digest())
        for i in range(hosts)
    ]
    kits = [HostKit(site_id, index=i, key=key) for i, key in enumerate(keys)]
    built_at = time.time()
    start = datetime.fromtimestamp(built_at, UTC)
    streams = [
        [
            kit.next_envelope(
                collected_at=(start + timedelta(milliseconds=j)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            )
            for j in range(per_host)
        ]
        for kit in kits
    ]
    raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
    return {
        "site_id": site_id,
        "keys": [key.private_bytes(*raw, serialization.NoEncryption()).hex() for key in keys],
        "order": [
            base64.b64encode(body).decode()
            for bodies in zip(*streams, strict=True)
            for body in bodies
        ],
        "batch": batch,
        "settle_every": settle_every,
        "built_at": built_at,
    }


def describe(path: Path, label: str | None) -> Tree:
    path = path.resolve()
    if not (path / "server" / "__init__.py").is_file():
        raise SystemExit(f"--tree {path}: not a VEU Attest checkout (no server/__init__.py)")
    found = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    commit = found.stdout.strip() if found.returncode == 0 else "?"
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    if dirty.returncode == 0 and dirty.stdout.strip():
        commit += "+changes"
    return Tree(path, label or path.name, commit)


def total_instructions(callgrind_out: Path) -> int:
    """The collected ``Ir`` of a callgrind output file: its ``totals:`` line (callgrind 3.19
    writes ``summary: 0`` in the header when instrumentation starts switched off), else its
    ``summary:`` line."""
    found: dict[str, int] = {}
    with callgrind_out.open() as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("totals", "summary"):
                found[key] = int(value.split()[0])
    if not found:
        raise SystemExit(f"{callgrind_out}: no totals or summary line")
    return found.get("totals", found.get("summary", 0))


def measure(tree: Tree, load: Path, shim: Path, work: Path, python: str, valgrind: str) -> Measured:
    folder = work / hashlib.sha256(tree.label.encode()).hexdigest()[:12]  # labels are free text
    folder.mkdir()
    out, result, log = folder / "callgrind.out", folder / "result.json", folder / "valgrind.log"
    env = {**os.environ, "PYTHONPATH": str(tree.path), "PYTHONHASHSEED": "0"}
    command = [
        valgrind,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        f"--log-file={log}",
        python,
        str(DRIVER),
        str(load),
        str(shim),
        str(result),
    ]
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
    if done.returncode != 0 or not result.is_file():
        tail = (done.stderr + done.stdout)[-2000:]
        raise SystemExit(f"{tree.label}: the driver failed (exit {done.returncode}):\n{tail}")
    facts = json.loads(result.read_text())
    if not facts["under_valgrind"]:
        raise SystemExit(f"{tree.label}: the driver did not run under valgrind")
    if not Path(facts["server"]).is_relative_to(tree.path):
        raise SystemExit(f"{tree.label}: imported {facts['server']}, not the tree's server/")
    return Measured(
        tree, total_instructions(out), facts["snapshots"], facts["errors"], facts["api"]
    )


def markdown(runs: list[Measured], args: argparse.Namespace, version: str, seconds: float) -> str:
    load1, load5, load15 = os.getloadavg()
    reference = runs[0]
    lines = [
        SECTION,
        "",
        "`.venv/bin/python bench/bench_instructions.py --tree BEFORE --tree AFTER` (`--smoke` in",
        "CI via `tests/bench/test_bench_instructions_smoke.py`; see bench/README.md). The",
        "in-process ingest loop of `bench_ingest.py` (appraise, group-commit write, settling;",
        "SQLite; no HTTP) under `valgrind --tool=callgrind`, instrumentation on for the loop only;",
        "the same envelopes for every tree. Instruction counts hardly depend on the load of the",
        "shared box: unlike times, they can be compared across runs.",
        "",
        f"### Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- {args.hosts} hosts x {args.per_host} snapshots, batches of {args.batch}, settled "
        f"every {args.settle_every} and at the end",
        f"- {version}, Python {platform.python_version()}, {platform.machine()}; load average "
        f"{load1:.2f}/{load5:.2f}/{load15:.2f}; {seconds:.0f} s under valgrind",
        "",
        "| tree | commit | ingest API | snapshots | errors | instructions (loop) | "
        "instructions per snapshot | vs first |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        ratio = run.per_snapshot / reference.per_snapshot if reference.per_snapshot else 0.0
        lines.append(
            f"| {run.tree.label} | {run.tree.commit} | `{run.api}` | {run.snapshots} | "
            f"{run.errors} | {run.instructions:,} | **{run.per_snapshot / 1e6:.2f} M** | "
            f"{ratio:.3f} |"
        )
    lines.append("")
    for run in runs[1:]:
        change = (run.per_snapshot / reference.per_snapshot - 1) * 100
        over = run.per_snapshot > reference.per_snapshot * (1 + args.tolerance)
        verdict = "**over**" if over else "within"
        lines.append(
            f"- {run.tree.label} against {reference.tree.label}: {change:+.1f}% instructions "
            f"per snapshot ({verdict} the tolerance of +{args.tolerance * 100:.1f}%)"
        )
    if len(runs) > 1:
        lines.append("")
    return "\n".join(lines)


def over_tolerance(runs: list[Measured], tolerance: float) -> list[str]:
    reference = runs[0].per_snapshot
    return [
        f"{run.tree.label}: {run.per_snapshot / 1e6:.2f} M instructions per snapshot, "
        f"{(run.per_snapshot / reference - 1) * 100:+.1f}% against {runs[0].tree.label} "
        f"(tolerance {tolerance * 100:.1f}%)"
        for run in runs[1:]
        if run.per_snapshot > reference * (1 + tolerance)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a checkout to measure (repeatable; the first is the reference; default: this one)",
    )
    parser.add_argument(
        "--label", action="append", default=[], help="a name per --tree, in the same order"
    )
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="snapshots per group commit")
    parser.add_argument("--settle-every", type=int, default=256)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="fail when a tree costs more than the first by more than this share (0.02: 2%%)",
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run")
    parser.add_argument("--valgrind", default="valgrind")
    parser.add_argument("--smoke", action="store_true", help="2 hosts x 2 snapshots, batches of 2")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hosts, args.per_host, args.batch = 2, 2, 2
    if args.batch > args.hosts:
        # Hosts send their chains interleaved: a batch with two links of one chain would
        # appraise the second before the first is stored (a fork), as in bench_ingest.
        parser.error("--batch must not exceed --hosts")
    paths = args.tree or [REPO]
    if len(args.label) > len(paths):
        parser.error("more --label than --tree")
    trees = [
        describe(path, args.label[i] if i < len(args.label) else None)
        for i, path in enumerate(paths)
    ]
    if len({tree.label for tree in trees}) < len(trees):
        parser.error("two trees with the same label: give each a --label")
    missing = missing_tools(args.valgrind)
    if missing is not None:
        print(f"bench_instructions: cannot measure: {missing}", file=sys.stderr)
        return UNAVAILABLE
    version = subprocess.run(
        [args.valgrind, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()

    with tempfile.TemporaryDirectory(prefix="veu-bench-instructions-") as tmp:
        work = Path(tmp)
        shim = build_shim(work)
        load = work / "load.json"
        load.write_text(
            json.dumps(build_load(args.hosts, args.per_host, args.batch, args.settle_every))
        )
        begin = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(trees)) as pool:
            runs = list(
                pool.map(
                    lambda tree: measure(tree, load, shim, work, args.python, args.valgrind),
                    trees,
                )
            )
        seconds = time.perf_counter() - begin
    text = markdown(runs, args, version, seconds)
    print(text)
    if args.write and not args.smoke:
        from bench.bench_ingest import write_section

        write_section(text, SECTION)
    failed = sum(run.errors for run in runs)
    if failed:
        print(f"{failed} snapshots failed", file=sys.stderr)
        return 1
    worse = over_tolerance(runs, args.tolerance)
    for line in worse:
        print(f"more instructions than the reference: {line}", file=sys.stderr)
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
