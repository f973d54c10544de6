"""The layout's rules that import-linter does not express (the rest: pyproject.toml's contracts).

A module whose name starts with ``_`` is detail of its package: only modules of that package (or
its subpackages) may import it. Tests and benchmarks may reach in (they test the detail).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "agent", "server")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, importer: str, is_package: bool) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importer.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _private_owner(name: str) -> str | None:
    """The package that owns the first private part of ``name`` (None: nothing private)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for name in _imported(tree, importer, path.name == "__init__.py"):
                if name.split(".")[0] not in PACKAGES:
                    continue
                owner = _private_owner(name)
                if owner is None or not (owner and name.split(".")[len(owner.split("."))]):
                    continue
                if importer != owner and not importer.startswith(owner + "."):
                    found.append(f"{importer} imports {name} (private to {owner})")
    return found


def test_private_modules_are_imported_only_inside_their_package() -> None:
    assert _violations() == []


def test_the_check_sees_a_private_import_from_outside(tmp_path: Path) -> None:
    tree = ast.parse("from server.ingest._groupcommit import GroupCommitter\n")
    names = _imported(tree, "server.api.app", is_package=False)
    owners = {_private_owner(n) for n in names} - {None}
    assert owners == {"server.ingest"}
    assert not "server.api.app".startswith("server.ingest.")
