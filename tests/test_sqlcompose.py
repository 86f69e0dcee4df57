"""compose() must produce exactly what sql.SQL(...).format(...) produces."""

from __future__ import annotations

import pytest
from psycopg import sql

from rls_migrate.sqlcompose import compose

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
