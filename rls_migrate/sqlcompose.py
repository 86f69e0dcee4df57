"""``compose(template, *args, **kwargs)``: ``sql.SQL(template).format(...)`` for hot paths;
:class:`SqlText`: ``statement.as_string(conn)`` for many statements.

Same placeholders (``{}``, ``{0}``, ``{name}``, ``{{``/``}}`` escapes) and the same result
(a ``sql.Composed`` whose values are Composables), but the template is parsed once and
cached: planning 1,000 tables composes about 100,000 statements, and psycopg re-parses the
template on every ``format`` call. Templates are literal strings, never user input.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Iterable
from typing import Any, LiteralString

from psycopg import sql

_Op = sql.SQL | int | str
"""A template's pieces: its SQL text, and for each placeholder the index of a positional
argument (``{}`` numbered here) or the name of a keyword one."""


@functools.lru_cache(maxsize=4096)
def _parse(template: str) -> tuple[_Op, ...]:
    ops: list[_Op] = []
    auto = 0
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if spec or conversion:
            raise ValueError(f"no format spec or conversion allowed in {template!r}")
        if literal:
            ops.append(sql.SQL(literal))
        if field is None:
            continue
        if field == "":
            ops.append(auto)
            auto += 1
        elif field.isdigit():
            ops.append(int(field))
        else:
            ops.append(field)
    return tuple(ops)


def compose(template: LiteralString, *args: sql.Composable, **kwargs: sql.Composable) -> sql.Composed:
    ops = _parse(template)
    out = _new_composed(sql.Composed)  # as composed() does, inline: 170,000 calls a plan
    if kwargs:
        out._obj = [args[op] if type(op) is int else kwargs[op] if type(op) is str
                    else op for op in ops]  # type: ignore[misc]
    else:
        out._obj = [args[op] if type(op) is int else op for op in ops]  # type: ignore[misc]
    return out


class _Separator:
    """``sep(", ").join(parts)``: ``sql.SQL(", ").join(parts)`` without psycopg's per-part
    check (see :func:`composed`); the result holds the same parts."""

    def __init__(self, text: LiteralString) -> None:
        self.sql = sql.SQL(text)

    def join(self, parts: Iterable[sql.Composable]) -> sql.Composed:
        out: list[sql.Composable] = []
        separator = self.sql
        for part in parts:
            if out:
                out.append(separator)
            out.append(part)
        return composed(out)


@functools.lru_cache(maxsize=65536)
def identifier(*names: str) -> sql.Identifier:
    """``sql.Identifier(*names)``, one object per name: an Identifier checks its arguments
    when made (a microsecond), and planning 1,000 tables asks for the same few thousand
    names about 100,000 times. Identifiers are immutable, so sharing them is safe."""
    return sql.Identifier(*names)


@functools.lru_cache(maxsize=64)
def sep(text: LiteralString) -> _Separator:
    return _Separator(text)


def composed(parts: list[sql.Composable]) -> sql.Composed:
    """``sql.Composed(parts)`` without its per-part check (an ``isinstance`` against an ABC,
    a quarter of planning's time at 1,000 tables): every part here is typed ``Composable``
    already. A part that is not one would fail at rendering, never be sent unquoted."""
    out = _new_composed(sql.Composed)
    out._obj = parts
    return out


_new_composed = sql.Composed.__new__


def for_params(query: sql.SQL | sql.Composed) -> sql.SQL | sql.Composed:
    """``query`` made safe to execute with bound parameters: psycopg reads every ``%`` of the
    final text as a placeholder, including one inside a quoted identifier or literal
    (``"100%"``), so those are doubled; the template's own ``%s`` stay placeholders.
    Queries executed without parameters need no such care."""
    if isinstance(query, sql.Composed):
        return sql.Composed([_escaped(part) for part in query])
    return query


def _escaped(part: sql.Composable) -> sql.Composable:
    if isinstance(part, sql.Composed):
        return sql.Composed([_escaped(p) for p in part])
    if isinstance(part, sql.Identifier | sql.Literal):
        text = part.as_string(None)
        if "%" in text:
            return sql.SQL(text.replace("%", "%%"))
    return part


class SqlText:
    """Statements as text, exactly as ``statement.as_string(conn)`` renders them, for many
    statements at once: SQL fragments are taken as they are, and each distinct identifier or
    literal is rendered by psycopg once (with ``conn``: exact quoting) and reused. A plan of
    1,000 tables holds about 400,000 pieces, mostly the same few thousand identifiers, and
    ``as_string`` looks the connection's encoding up again for every piece."""

    def __init__(self, conn: Any = None) -> None:
        self.conn = conn
        self._pieces: dict[object, str] = {}  # literals
        self._names: dict[tuple[str, ...], str] = {}  # identifiers

    def __call__(self, statement: sql.Composable) -> str:
        out: list[str] = []
        self._walk((statement,), out.append)
        return "".join(out)

    def _walk(self, parts: Iterable[sql.Composable], append: Callable[[str], None]) -> None:
        # The kinds by how often they come (a plan of 1,000 tables walks 2.5 million parts).
        names, conn = self._names, self.conn
        for part in parts:
            kind = type(part)
            if kind is _SQL:
                append(part._obj)
            elif kind is _COMPOSED:
                self._walk(part._obj, append)
            elif kind is _IDENTIFIER:
                text = names.get(part._obj)  # its names, a tuple of strings
                if text is None:
                    text = names[part._obj] = part.as_string(conn)
                append(text)
            elif kind is _LITERAL:
                append(self._literal(part))
            else:
                append(part.as_string(conn))

    def _literal(self, part: sql.Composable) -> str:
        # The value and its type: Literal(1) is not Literal(True).
        value = part._obj
        key: object = (type(value), value)
        try:
            text = self._pieces.get(key)
        except TypeError:  # unhashable (a list): its repr says as much
            key = repr(part)
            text = self._pieces.get(key)
        if text is None:
            text = self._pieces[key] = part.as_string(self.conn)
        return text


_SQL, _COMPOSED, _IDENTIFIER, _LITERAL = sql.SQL, sql.Composed, sql.Identifier, sql.Literal
_TEXT_NO_CONN = SqlText()


def as_text(statement: sql.Composable) -> str:
    """``statement.as_string(None)``, for the bodies planning quotes into ``DO`` blocks and
    functions (thousands at 1,000 tables): each identifier and literal is rendered once per
    process. The cache is dropped when it grows past 50,000 pieces (a long-lived process
    planning many schemas)."""
    if len(_TEXT_NO_CONN._pieces) + len(_TEXT_NO_CONN._names) > 50_000:
        _TEXT_NO_CONN._pieces.clear()
        _TEXT_NO_CONN._names.clear()
    return _TEXT_NO_CONN(statement)
