"""The expression layer: CEL through ``common-expression-language`` (Rust ``cel`` crate bindings).

Why this library: it is a maintained CEL implementation and on our own conditions it evaluates
about 20x faster than ``cel-python`` (numbers in docs/policy.md), which is what keeps the
per-snapshot cost of 100 weight files x several per-file conditions in the low milliseconds.

What loading checks, so that a mistake is a :class:`PackError` at load and never a silent pass:

1. The expression parses.
2. Every root identifier is a variable of the condition's scope (or a comprehension variable), and
   every global function is one CEL defines. ``files.all(f, f.encryptd)`` is caught too: the first
   field after a known variable must exist in that variable's sample.
3. It evaluates to a bool on the scope's sample facts (catches type mismatches: int + string).

At run time an expression that raises is reported by the engine as "cannot attest", never a pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cel

from server.policy.errors import PolicyEvaluationError

_TOKEN = re.compile(
    r"""
    (?P<str>[rRbB]{0,2}(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[uU]?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ws>\s+)
  | (?P<op>.)
    """,
    re.S | re.X,
)
_MACROS = {"all", "exists", "exists_one", "map", "filter"}
_KEYWORDS = {"true", "false", "null", "in"}
GLOBAL_FUNCTIONS = {
    "size", "has", "int", "uint", "double", "string", "bool", "bytes", "type", "dyn",
    "duration", "timestamp", "matches", "max", "min",
}  # fmt: skip


class ExpressionError(Exception):
    """An expression that does not compile or references something that does not exist."""


def _tokens(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup or "op"
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def references(source: str) -> tuple[set[str], set[str], set[tuple[str, str]], set[str]]:
    """(root variables, global functions, (root, first field) pairs, comprehension variables)."""
    toks = _tokens(source)
    roots: set[str] = set()
    funcs: set[str] = set()
    fields: set[tuple[str, str]] = set()
    bound: set[str] = set()
    for i, (kind, text) in enumerate(toks):
        if kind != "id" or text in _KEYWORDS:
            continue
        prev = toks[i - 1] if i > 0 else ("", "")
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if prev == ("op", "."):
            if (
                text in _MACROS
                and nxt == ("op", "(")
                and i + 2 < len(toks)
                and toks[i + 2][0] == "id"
            ):
                bound.add(toks[i + 2][1])
            continue
        if nxt == ("op", "("):
            funcs.add(text)
            continue
        roots.add(text)
        if nxt != ("op", ".") or i + 2 >= len(toks) or toks[i + 2][0] != "id":
            fields.add((text, ""))  # used as a whole (e.g. a list handed to a macro)
        if nxt == ("op", ".") and i + 2 < len(toks) and toks[i + 2][0] == "id":
            after = toks[i + 3] if i + 3 < len(toks) else ("", "")
            if after != ("op", "("):
                fields.add((text, toks[i + 2][1]))
            else:
                fields.add((text, ""))  # a method on the variable itself
    return roots - bound, funcs, {f for f in fields if f[0] not in bound}, bound


#: Verdicts remembered per compiled expression before the memo is cleared.
MEMO_LIMIT = 100_000


@dataclass(frozen=True)
class Expression:
    source: str
    program: cel.Program
    roots: frozenset[str]
    params_used: frozenset[str]
    #: For each root the expression reads only through fields (``file.encrypted``), those
    #: fields: only they are converted into CEL values (the conversion dominates the cost).
    #: A root read as a whole is absent.
    root_fields: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)

    #: Verdicts by fingerprint of the inputs (see :meth:`holds_memo`). Bounded; owned by this
    #: compiled expression, so reloading a pack starts empty.
    memo: dict[str, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def holds_memo(self, variables: Mapping[str, Any], fingerprint: str) -> bool:
        """:meth:`holds`, remembered by ``fingerprint`` (an exact encoding of the inputs).

        Expressions are pure functions of their variables, so the same inputs give the same
        verdict. Most evidence repeats from one snapshot of a host to the next (the same weight
        files, the same GPUs); converting each item into CEL values dominates evaluation cost,
        and this skips it for everything seen before.
        """
        cached = self.memo.get(fingerprint)
        if cached is not None:
            return cached
        verdict = self.holds(variables)
        if len(self.memo) >= MEMO_LIMIT:
            self.memo.clear()
        self.memo[fingerprint] = verdict
        return verdict

    def holds(self, variables: Mapping[str, Any]) -> bool:
        """True when the condition holds. Anything but a bool is an evaluation error."""
        inputs: dict[str, Any] = {}
        for k in self.roots:
            value = variables[k]
            only = self.root_fields.get(k)
            if only is not None and isinstance(value, dict):
                value = {f: value[f] for f in only if f in value}
            inputs[k] = value
        try:
            result = self.program.execute(inputs)
        except (ValueError, TypeError, RuntimeError, KeyError) as exc:
            raise PolicyEvaluationError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, bool):
            raise PolicyEvaluationError(f"expression returned {type(result).__name__}, not a bool")
        return result


def compile_expression(source: str, sample: Mapping[str, Any]) -> Expression:
    """Compile and check ``source`` against the variables (and sample values) of its scope."""
    try:
        program = cel.compile(source)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ExpressionError(f"does not compile: {str(exc).splitlines()[0]}") from exc
    roots, funcs, fields, _bound = references(source)
    unknown = sorted(r for r in roots if r not in sample)
    if unknown:
        raise ExpressionError(
            f"unknown variable(s) {', '.join(unknown)}; this scope has {', '.join(sorted(sample))}"
        )
    bad_funcs = sorted(f for f in funcs if f not in GLOBAL_FUNCTIONS)
    if bad_funcs:
        raise ExpressionError(f"unknown function(s) {', '.join(bad_funcs)}")
    for root, name in sorted(fields):
        value = sample.get(root)
        if name and isinstance(value, Mapping) and name not in value:
            raise ExpressionError(
                f"{root} has no field {name!r}; it has {', '.join(sorted(value))}"
            )
    params_used = frozenset(name for root, name in fields if root == "params" and name)
    whole = {root for root, name in fields if not name}
    root_fields = {
        root: frozenset(name for r, name in fields if r == root)
        for root in roots
        if root not in whole
    }
    expr = Expression(source, program, frozenset(roots), params_used, root_fields)
    try:
        expr.holds(sample)
    except PolicyEvaluationError as exc:
        raise ExpressionError(f"fails on the scope's sample facts: {exc}") from exc
    return expr
