"""``column IN <a list bound as ONE parameter>``, for statements on the ingest hot path.

SQLAlchemy's own ``column.in_(bindparam(..., expanding=True))`` renders one placeholder per value
on every execution (the "post-compile" step): for the model-registry lookup of a host's weight
digests that rendering cost more CPU than the query itself, and it grows with the number of
files. Bound as one parameter, the statement text is fixed, compiled once and (on PostgreSQL)
prepared once:

- PostgreSQL: ``column = ANY(%(values)s::VARCHAR[])``, the list sent as a text array;
- SQLite: ``column IN (SELECT value FROM json_each(?))``, the list sent as a JSON array.

Neither SQLAlchemy nor a maintained extension offers this portable form, hence the small
construct below (``sqlalchemy.ext.compiler`` is SQLAlchemy's documented way to add one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BindParameter, Boolean, ColumnElement, Dialect, String, TypeDecorator
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine


class TextList(TypeDecorator[Sequence[str]]):
    """A list of strings as one bound value: a text array on PostgreSQL, JSON elsewhere."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(String()))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Sequence[str] | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str):  # a str is a sequence of characters: surely a mistake
            raise TypeError("TextList takes a list of strings, not one string")
        return list(value) if dialect.name == "postgresql" else json.dumps(list(value))


class in_list(FunctionElement[bool]):
    """``in_list(column, bindparam("name", type_=TextList()))``: true where the column's value is
    one of the list's."""

    type = Boolean()
    inherit_cache = True
    name = "in_list"


def _parts(element: in_list, compiler: SQLCompiler, **kw: Any) -> tuple[str, str]:
    column, values = list(element.clauses)
    if not isinstance(values, BindParameter) or not isinstance(values.type, TextList):
        raise TypeError("in_list needs a bindparam of type TextList as its second argument")
    return compiler.process(column, **kw), compiler.process(values, **kw)


@compiles(in_list, "postgresql")
def _in_list_postgresql(element: in_list, compiler: SQLCompiler, **kw: Any) -> str:
    column, values = _parts(element, compiler, **kw)
    return f"{column} = ANY({values})"


@compiles(in_list)
def _in_list_json(element: in_list, compiler: SQLCompiler, **kw: Any) -> str:
    column, values = _parts(element, compiler, **kw)
    # Compiled SQL fragments (a column name and a placeholder), never values: no injection.
    return f"{column} IN (SELECT value FROM json_each({values}))"  # noqa: S608


def values_in(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    """``column`` is one of the list bound (at execution) to ``name``."""
    return in_list(column, BindParameter(name, type_=TextList()))
