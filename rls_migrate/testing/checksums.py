"""Order-independent checksums of every table in a schema: the "nothing lost" check.

A stage that adds and fills a ``tenant_id`` column must leave every other column of every row
unchanged; :func:`table_checksums` before and after (with ``tenant_id`` excluded) proves it::

    before = table_checksums(conn)
    run_the_stage()
    assert table_checksums(conn) == before

Each value is ``"<row count>:<md5>"``, where the md5 is taken over the sorted md5s of each
row's text (all columns but the excluded ones, in column order), so physical row order,
``ctid`` and updates that rewrite a row with the same values do not matter. Partitions are
skipped: their parent's checksum covers their rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import Any, Final

import psycopg
from psycopg import sql

__all__ = ["CANONICAL_SETTINGS", "table_checksums"]

CANONICAL_SETTINGS: Final[tuple[tuple[str, str], ...]] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)
"""Settings that change how values print as text; checksums are computed under these, so
sessions with different settings get the same checksums."""

_TABLES: Final = """
SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum) FILTER (
           WHERE a.attname IS NOT NULL AND NOT (a.attname = ANY(%(excluded)s))
       )
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a
         ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = %(schema)s
   AND n.nspname <> 'rls_migrate'
   AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition
 GROUP BY c.relname
 ORDER BY c.relname
"""


@contextlib.contextmanager
def _canonical_settings(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Apply :data:`CANONICAL_SETTINGS` for the block and restore what was there."""
    changed: list[tuple[str, str]] = []
    for name, value in CANONICAL_SETTINGS:
        row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
        current = str(row[0]) if row else ""
        if current != value:
            changed.append((name, current))
            conn.execute("SELECT set_config(%s, %s, false)", [name, value])
    try:
        yield
    finally:
        # In an aborted transaction this fails, and the rollback restores the settings.
        with contextlib.suppress(psycopg.Error):
            for name, old in changed:
                conn.execute("SELECT set_config(%s, %s, false)", [name, old])


def table_checksums(
    conn: psycopg.Connection[Any],
    *,
    exclude_columns: Collection[str] = ("tenant_id",),
    schema: str = "public",
) -> dict[str, str]:
    """``{table: "<rows>:<md5>"}`` for every ordinary and partitioned table of ``schema``
    (partitions themselves are left out: their parent includes their rows; the
    ``rls_migrate`` schema is never checksummed). The md5 covers every column except
    ``exclude_columns`` and does not depend on row order."""
    with _canonical_settings(conn):
        tables = conn.execute(
            _TABLES, {"schema": schema, "excluded": list(exclude_columns)}
        ).fetchall()
        result: dict[str, str] = {}
        for name, columns in tables:
            row_text: sql.Composable
            if columns:
                row_text = sql.SQL("ROW({})::text").format(
                    sql.SQL(", ").join(sql.Identifier("t", c) for c in columns)
                )
            else:
                row_text = sql.SQL("''")
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) "
                "FROM (SELECT md5({}) AS h FROM {} AS t) AS s"
            ).format(row_text, sql.Identifier(schema, name))
            row = conn.execute(query).fetchone()
            assert row is not None
            result[str(name)] = f"{row[0]}:{row[1]}"
    return result
