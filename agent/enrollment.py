"""What the agent remembers about its verifier after ``veu-agent enroll``.

``state_dir/enrollment.json``: server URL, site, host id, and the verifier's result-signing public
key, so that ``attest`` can check signed results offline of any other trust store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from contract.fsutil import atomic_write

ENROLLMENT_NAME = "enrollment.json"


class EnrollmentError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Enrollment:
    server_url: str
    site_id: str
    host_id: str
    key_id: str
    verifier_key: str  # PEM
    verifier_key_id: str


def save(state_dir: Path, enrollment: Enrollment) -> None:
    atomic_write(
        state_dir / ENROLLMENT_NAME,
        json.dumps(asdict(enrollment), indent=2).encode(),
        mode=0o600,
    )


def load(state_dir: Path) -> Enrollment | None:
    path = state_dir / ENROLLMENT_NAME
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnrollmentError("corrupt_enrollment", f"{path} is unreadable: {exc}") from exc
    try:
        return Enrollment(**{k: str(data[k]) for k in Enrollment.__dataclass_fields__})
    except (KeyError, TypeError) as exc:
        raise EnrollmentError(
            "corrupt_enrollment", f"{path} lacks {exc}; run `veu-agent enroll` again"
        ) from exc
