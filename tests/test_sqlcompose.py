"""compose() must produce exactly what sql.SQL(...).format(...) produces."""

from __future__ import annotations

import pytest
from psycopg import sql

from rls_migrate.sqlcompose import SqlText, as_text, compose, sep

CASES = [
    ("ALTER TABLE {} ADD COLUMN {} bigint", (sql.Identifier("public", "t"), sql.Identifier("c")), {}),
    ("SELECT {0}, {0} FROM {1}", (sql.Identifier("a"), sql.Identifier("t")), {}),
    ("CREATE POLICY {name} ON {table} USING ({expr})", (),
     {"name": sql.Identifier("p"), "table": sql.Identifier("s", "Odd \"Name\""),
      "expr": sql.SQL("x = {}").format(sql.Literal("it's"))}),
    ("SELECT '{{}}' || {}", (sql.Literal(1),), {}),
    ("no placeholders", (), {}),
]


@pytest.mark.parametrize(("template", "args", "kwargs"), CASES)
def test_same_as_psycopg_format(template: str, args: tuple[sql.Composable, ...],
                                kwargs: dict[str, sql.Composable]) -> None:
    expected = sql.SQL(template).format(*args, **kwargs)
    got = compose(template, *args, **kwargs)
    assert got.as_string(None) == expected.as_string(None)


def test_same_parts_as_psycopg_format() -> None:
    # Built without psycopg's per-part check, but the same tree: what iterates a Composed
    # (SQL.join over it, for_params) sees the same parts.
    args = (sql.Identifier("a"), sql.SQL("x"), sql.Literal(2))
    got, expected = compose("{} {} {}!", *args), sql.SQL("{} {} {}!").format(*args)
    assert type(got) is sql.Composed and list(got) == list(expected)


@pytest.mark.parametrize("parts", [[], [sql.Identifier("a")],
                                   [sql.Identifier("a"), sql.Literal("b"), sql.SQL("c")]])
def test_sep_join_is_sql_join(parts: list[sql.Composable]) -> None:
    got, expected = sep(" AND ").join(iter(parts)), sql.SQL(" AND ").join(parts)
    assert list(got) == list(expected)
    assert got.as_string(None) == expected.as_string(None)


def test_sql_text_renders_what_as_string_renders() -> None:
    # Equal values of different types (1, True, 1.0) must not share a cached rendering;
    # unhashable values go by their repr.
    statement = compose("SELECT {}, {}, {}, {}, {}, {} FROM {}", sql.Literal(1),
                        sql.Literal(True), sql.Literal(1.0), sql.Literal([1, 2]),
                        sql.Literal("it's"), sql.Literal(1), sql.Identifier("s", "Odd \"N\""))
    text = SqlText()
    assert text(statement) == text(statement) == statement.as_string(None)
    assert as_text(statement) == statement.as_string(None)


def test_rejects_format_specs() -> None:
    with pytest.raises(ValueError, match="format spec"):
        compose("SELECT {:>10}", sql.Literal(1))


def test_for_params_keeps_percent_in_names_and_literals(empty_db: str) -> None:
    """A '%' in an identifier or literal is not a placeholder once escaped; the template's
    own %s still is."""
    import psycopg

    from rls_migrate.sqlcompose import for_params

    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(compose("CREATE TABLE {} ({} int, {} text)", sql.Identifier("pct%s"),
                             sql.Identifier("%(x)s"), sql.Identifier("100%")))
        insert = compose("INSERT INTO {} ({}, {}) VALUES (%s, {} || %s)", sql.Identifier("pct%s"),
                         sql.Identifier("%(x)s"), sql.Identifier("100%"), sql.Literal("50% "))
        with pytest.raises(psycopg.ProgrammingError):
            conn.execute(insert, [1, "off"])
        conn.execute(for_params(insert), [1, "off"])
        row = conn.execute(for_params(compose("SELECT {} FROM {} WHERE {} = %s",
                                              sql.Identifier("100%"), sql.Identifier("pct%s"),
                                              sql.Identifier("%(x)s"))), [1]).fetchone()
        assert row == ("50% off",)
