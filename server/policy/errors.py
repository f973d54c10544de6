"""The one error a policy pack can raise while loading: it names the file and line at fault."""

from __future__ import annotations

from pathlib import Path


class PackError(Exception):
    """A pack that cannot be loaded. ``code`` is stable; ``detail`` is for a person.

    Every error names the file and the (1-based) line at fault, so a compliance officer who edits
    YAML can go straight to the mistake. ``line`` is 0 when the fault is the file as a whole.
    """

    def __init__(self, path: Path | str, line: int, code: str, detail: str) -> None:
        self.path = Path(path)
        self.line = line
        self.code = code
        self.detail = detail
        super().__init__(f"{self.path}:{line}: {code}: {detail}")


class PolicyEvaluationError(Exception):
    """An expression failed at run time; the engine turns it into a cannot-attest finding."""
