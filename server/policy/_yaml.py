"""YAML loading that remembers where every mapping, list and key came from.

Packs are written by people; a loader error that says only "bad value" wastes their afternoon.
Mappings load as :class:`Node` (a ``dict`` with ``line`` and ``key_lines``), lists as :class:`Seq`
(a ``list`` with ``line``). Duplicate keys are an error, not a silent overwrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from server.policy.errors import PackError


class Node(dict[str, Any]):
    """A YAML mapping with the line of the mapping and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class Seq(list[Any]):
    line: int = 0


class _Loader(yaml.SafeLoader):
    path: Path = Path("?")


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Node:
    loader.flatten_mapping(node)
    out = Node()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise PackError(loader.path, line, "bad_key", f"keys must be strings, got {key!r}")
        if key in out:
            raise PackError(loader.path, line, "duplicate_key", f"key {key!r} appears twice")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    out = Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def load_yaml(path: Path, text: str | None = None) -> Any:
    """Parse one YAML file; syntax errors become :class:`PackError` with the line."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PackError(path, 0, "unreadable", str(exc)) from exc
    loader = _Loader(text)
    loader.path = path
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise PackError(path, line, "yaml_syntax", str(exc.problem or exc)) from exc
    except yaml.YAMLError as exc:
        raise PackError(path, 0, "yaml_syntax", str(exc)) from exc
    finally:
        loader.dispose()


class Reader:
    """Typed field access on a :class:`Node` that reports errors at the right line."""

    def __init__(self, path: Path, node: Any, what: str, allowed: set[str]) -> None:
        if not isinstance(node, Node):
            line = getattr(node, "line", 0)
            raise PackError(path, line, "bad_type", f"{what} must be a mapping")
        self.path = path
        self.node = node
        self.what = what
        for key in node:
            if key not in allowed:
                raise PackError(
                    path,
                    node.line_of(key),
                    "unknown_key",
                    f"unknown key {key!r} in {what}; allowed: {', '.join(sorted(allowed))}",
                )

    def line(self, key: str | None = None) -> int:
        return self.node.line if key is None else self.node.line_of(key)

    def error(self, key: str | None, code: str, detail: str) -> PackError:
        return PackError(self.path, self.line(key), code, detail)

    def has(self, key: str) -> bool:
        return key in self.node and self.node[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        return self.node.get(key, default)

    def req(self, key: str) -> Any:
        if key not in self.node or self.node[key] is None:
            raise self.error(None, "missing_key", f"{self.what} needs {key!r}")
        return self.node[key]

    def str_(self, key: str, *, required: bool = True, default: str | None = None) -> str | None:
        value = self.req(key) if required else self.node.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            raise self.error(key, "bad_type", f"{self.what}.{key} must be a non-empty string")
        return value

    def rstr(self, key: str) -> str:
        value = self.str_(key)
        assert value is not None
        return value

    def seq(self, key: str, *, required: bool = True) -> Seq:
        value = self.req(key) if required else self.node.get(key)
        if value is None:
            empty = Seq()
            empty.line = self.line(key)
            return empty
        if not isinstance(value, Seq):
            raise self.error(key, "bad_type", f"{self.what}.{key} must be a list")
        return value
