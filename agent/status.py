"""``veu-agent status [--json]``: what the daemon last reported, checked against the disk.

The daemon writes ``state_dir/status.json`` atomically after every change. This module reads it and
adds what can be seen directly (is the daemon's process alive, the spool's current depth and bytes,
the chain head, the key id), so the answer is right even when the daemon is stopped or never ran.

Exit codes: 0 healthy; 1 needs attention (spool full, envelopes rejected or corrupt, the last
delivery failed, or the daemon is not running); 3 nothing to report (no key, no status).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from agent.spool import CORRUPT, REJECTED, SUFFIX
from contract.errors import KeyFormatError
from contract.keys import key_id as compute_key_id
from contract.keys import load_public_pem

STATUS_NAME = "status.json"
EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_NOTHING = 3


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spool_facts(spool_dir: Path) -> dict[str, Any]:
    depth = used = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(spool_dir):
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                depth += 1
                with contextlib.suppress(OSError):
                    used += entry.stat(follow_symlinks=False).st_size

    aside = 0

    def count(folder: str) -> int:
        nonlocal aside
        found = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(spool_dir / folder):
                with contextlib.suppress(OSError):
                    aside += entry.stat(follow_symlinks=False).st_size
                found += entry.name.endswith(SUFFIX)
        return found

    return {
        "depth": depth,
        "bytes": used,
        "rejected": count(REJECTED),
        "corrupt": count(CORRUPT),
        "quarantined_bytes": aside,
        "directory": str(spool_dir),
    }


def _key_id(state_dir: Path) -> str | None:
    from agent import keys

    try:
        return compute_key_id(load_public_pem((state_dir / keys.PUBLIC_NAME).read_bytes()))
    except (OSError, KeyFormatError):
        return None


def collect(state_dir: Path) -> dict[str, Any] | None:
    """The status as a dict (the daemon's report, refreshed from disk), or None if nothing."""
    reported = _read_json(state_dir / STATUS_NAME)
    key_id = _key_id(state_dir)
    if reported is None and key_id is None:
        return None
    status: dict[str, Any] = dict(reported or {"state": "never-run"})
    status.setdefault("key_id", key_id)
    if key_id is not None and status.get("key_id") != key_id:
        status["key_id"] = key_id
        status["note"] = "the host key changed since the daemon last wrote its status"
    if status.get("state") == "running" and not _alive(status.get("pid")):
        status["state"] = "dead"
    head = _read_json(state_dir / "head.json")
    if head is not None and head.get("key_id") == key_id:
        status["chain_head"] = {"seq": head.get("seq"), "digest": head.get("digest")}
    spool = dict(status.get("spool") or {})
    spool.update(_spool_facts(state_dir / "spool"))
    status["spool"] = spool
    enrolled = _read_json(state_dir / "enrollment.json")
    if enrolled is not None:
        status.setdefault("site_id", enrolled.get("site_id"))
        status.setdefault("host_id", enrolled.get("host_id"))
        if not status.get("verifier"):
            status["verifier"] = enrolled.get("server_url")
    status["attention"] = _attention(status)
    return status


def _attention(status: dict[str, Any]) -> list[str]:
    reasons: list[str] = []
    state = status.get("state")
    if state != "running":
        reasons.append(f"the daemon is not running (state: {state})")
    spool = status.get("spool") or {}
    if spool.get("full"):
        reasons.append(
            "SPOOL FULL: no new snapshots until deliveries make room"
            + (f" ({spool['full_detail']})" if spool.get("full_detail") else "")
        )
    if spool.get("rejected"):
        reasons.append(
            f"{spool['rejected']} envelope(s) rejected by the verifier, kept in "
            f"{spool.get('directory')}/{REJECTED}"
        )
    if spool.get("corrupt"):
        reasons.append(
            f"{spool['corrupt']} damaged spool file(s) quarantined in "
            f"{spool.get('directory')}/{CORRUPT}"
        )
    if status.get("consecutive_failures"):
        reasons.append(f"{status['consecutive_failures']} delivery attempt(s) failed in a row")
    return reasons


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_text(status: dict[str, Any]) -> str:
    spool = status.get("spool") or {}
    head = status.get("chain_head") or {}
    last_snapshot = status.get("last_snapshot") or {}
    last_success = status.get("last_success") or {}
    last_error = status.get("last_error") or {}
    state = status.get("state")
    pid = f" (pid {status['pid']})" if state == "running" and status.get("pid") else ""
    limit = f" of {_size(spool['max_bytes'])}" if spool.get("max_bytes") else ""
    lines = [
        f"veu-agent: {state}{pid}, status written {status.get('updated_at') or 'never'}",
        f"key id:         {status.get('key_id') or '-'}",
        f"site:           {status.get('site_id') or '-'}",
        f"verifier:       {status.get('verifier') or '-'}",
        "chain head:     "
        + (f"seq {head.get('seq')}  digest {head.get('digest')}" if head else "none yet"),
        f"spool:          {spool.get('depth', 0)} envelope(s), {_size(spool.get('bytes'))}{limit}"
        + ("  FULL" if spool.get("full") else ""),
        f"quarantined:    {spool.get('rejected', 0)} rejected, {spool.get('corrupt', 0)} corrupt"
        + (
            f" ({_size(spool['quarantined_bytes'])}, counted against the spool limit)"
            if spool.get("quarantined_bytes")
            else ""
        ),
        "last snapshot:  "
        + (
            f"{last_snapshot.get('at')}  seq {last_snapshot.get('seq')} "
            f"({last_snapshot.get('reason')})"
            if last_snapshot
            else "-"
        ),
        "last delivery:  "
        + (f"{last_success.get('at')}  seq {last_success.get('seq')}" if last_success else "-"),
        f"last check-in:  {status.get('last_checkin_at') or '-'}",
        "last error:     "
        + (
            f"{last_error.get('at')}  {last_error.get('code')}: {last_error.get('detail')}"
            if last_error
            else "-"
        ),
        f"next snapshot:  {status.get('next_snapshot_at') or '-'}",
        f"next check-in:  {status.get('next_checkin_at') or '-'}",
    ]
    for rejection in status.get("recent_rejections") or []:
        lines.append(
            f"rejected:       seq {rejection.get('seq')} {rejection.get('code')}: "
            f"{rejection.get('detail')}"
        )
    if status.get("note"):
        lines.append(f"note:           {status['note']}")
    for reason in status.get("attention") or []:
        lines.append(f"ATTENTION:      {reason}")
    return "\n".join(lines)


def render(state_dir: Path, as_json: bool) -> tuple[str, int]:
    """(text to print, exit code) for ``veu-agent status``."""
    status = collect(state_dir)
    if status is None:
        detail = (
            f"no agent state in {state_dir}: run `veu-agent init` and `veu-agent enroll`, "
            "then start `veu-agent run`"
        )
        if as_json:
            return json.dumps({"code": "no_status", "detail": detail}), EXIT_NOTHING
        return detail, EXIT_NOTHING
    code = EXIT_ATTENTION if status["attention"] else EXIT_OK
    if as_json:
        return json.dumps(status, indent=2, sort_keys=True), code
    return format_text(status), code
