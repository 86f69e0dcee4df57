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
from typing import Any, LiteralString, cast

from psycopg import sql

_Piece = tuple[sql.SQL | None, str | None]


@functools.lru_cache(maxsize=4096)
def _parse(template: str) -> tuple[_Piece, ...]:
    pieces: list[_Piece] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if spec or conversion:
            raise ValueError(f"no format spec or conversion allowed in {template!r}")
        pieces.append((sql.SQL(literal) if literal else None, field))
    return tuple(pieces)


def compose(template: LiteralString, *args: sql.Composable, **kwargs: sql.Composable) -> sql.Composed:
    parts: list[sql.Composable] = []
    auto = 0
    for literal, field in _parse(template):
        if literal is not None:
            parts.append(literal)
        if field is None:
            continue
        if field == "":
            parts.append(args[auto])
            auto += 1
        elif field.isdigit():
            parts.append(args[int(field)])
        else:
            parts.append(kwargs[field])
    return composed(parts)


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
        self._pieces: dict[str, str] = {}

    def __call__(self, statement: sql.Composable) -> str:
        out: list[str] = []
        append, pieces, conn = out.append, self._pieces, self.conn
        # Depth first without recursion: a stack of the Composed being walked.
        stack = [iter((statement,))]
        while stack:
            part = next(stack[-1], None)
            if part is None:
                stack.pop()
                continue
            kind = type(part)
            if kind is sql.Composed:
                stack.append(iter(cast(sql.Composed, part)))
            elif kind is sql.SQL:
                append(part.as_string(conn))
            elif kind is sql.Identifier or kind is sql.Literal:
                # The repr names the class and the value (its type too: Literal(1) is not
                # Literal(True)), so equal reprs render the same.
                key = repr(part)
                text = pieces.get(key)
                if text is None:
                    text = pieces[key] = part.as_string(conn)
                append(text)
            else:
                append(part.as_string(conn))
        return "".join(out)


_TEXT_NO_CONN = SqlText()


def as_text(statement: sql.Composable) -> str:
    """``statement.as_string(None)``, for the bodies planning quotes into ``DO`` blocks and
    functions (thousands at 1,000 tables): each identifier and literal is rendered once per
    process. The cache is dropped when it grows past 50,000 pieces (a long-lived process
    planning many schemas)."""
    if len(_TEXT_NO_CONN._pieces) > 50_000:
        _TEXT_NO_CONN._pieces.clear()
    return _TEXT_NO_CONN(statement)
