"""How many rows a link leaves without a tenant, for the tables whose choice depends on it.

Discovery reads only the catalog; a table reachable only through links that may be NULL, or
owned one-to-one by a row that points at it, is a decision for the user, who needs the
numbers: how many rows have a NULL link (they get no tenant from it), and how many rows no
owner points at (they get no tenant from the owner). One read-only query per such table, under
a statement timeout; a table estimated above :data:`EXACT_ROWS` is counted on a block sample.

Example::

    counts = count_links(conn, graph)
    counts[QualifiedName("public", "OrganisationClaim")][0].text()
    # 'id <- public."Organisation"("organisationClaimId"): 3 of 120 rows have no owner'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.discover import Hop, TenantGraph

EXACT_ROWS = 2_000_000
"""Above this planner estimate, count on a sample of about this many rows' blocks."""
TIMEOUT_MS = 10_000


@dataclasses.dataclass(frozen=True)
class LinkCount:
    """For one link of a table: of ``rows`` rows, ``without`` have no parent through it (a
    NULL link) or, for a reverse link, no owner pointing at them. None: not counted."""

    hop: Hop
    rows: int | None
    without: int | None
    sampled: bool = False

    def text(self) -> str:
        if self.rows is None or self.without is None:
            return f"{self.hop}: not counted (the count timed out)"
        about = "~" if self.sampled else ""
        what = "have no owner pointing at them" if self.hop.reverse else (
            f"have {', '.join(self.hop.columns)} NULL")
        return (f"{self.hop}: {about}{self.without:,} of {about}{self.rows:,} rows {what}"
                + (" (counted on a sample)" if self.sampled else ""))


def count_links(conn: psycopg.Connection[Any], graph: TenantGraph,
                timeout_ms: int = TIMEOUT_MS) -> dict[QualifiedName, list[LinkCount]]:
    """Counts for every table whose classification has links that may leave rows without
    a tenant (``Classification.nullable_links``). Reads only; each table in its own
    transaction, rolled back."""
    out: dict[QualifiedName, list[LinkCount]] = {}
    for qname, entry in graph.tables.items():
        if entry.nullable_links:
            out[qname] = _count(conn, qname, entry.nullable_links, entry.row_estimate,
                                timeout_ms)
    return out


def _count(conn: psycopg.Connection[Any], qname: QualifiedName, hops: tuple[Hop, ...],
           estimate: int, timeout_ms: int) -> list[LinkCount]:
    sampled = estimate > EXACT_ROWS
    source = sql.SQL("{} AS t").format(qname.ident)
    if sampled:
        percent = max(100.0 * EXACT_ROWS / estimate, 0.01)
        source = sql.SQL("{} AS t TABLESAMPLE SYSTEM ({})").format(
            qname.ident, sql.Literal(round(percent, 4)))
    counts = [sql.SQL("count(*) FILTER (WHERE {})").format(_without(hop)) for hop in hops]
    query = sql.SQL("SELECT count(*), {} FROM {}").format(sql.SQL(", ").join(counts), source)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('statement_timeout', %s, true),"
                         " set_config('transaction_read_only', 'on', true)",
                         [f"{timeout_ms}ms"])
            row = conn.execute(query).fetchone()
    except psycopg.errors.QueryCanceled:
        return [LinkCount(hop, None, None) for hop in hops]
    assert row is not None
    return [LinkCount(hop, int(row[0]), int(n), sampled) for hop, n in zip(hops, row[1:],
                                                                          strict=True)]


def _without(hop: Hop) -> sql.Composable:
    if not hop.reverse:
        return sql.SQL(" OR ").join(sql.SQL("t.{} IS NULL").format(sql.Identifier(c))
                                    for c in hop.columns)
    match = sql.SQL(" AND ").join(
        sql.SQL("o.{} = t.{}").format(sql.Identifier(r), sql.Identifier(c))
        for c, r in zip(hop.columns, hop.ref_columns, strict=True))
    return sql.SQL("NOT EXISTS (SELECT 1 FROM {} AS o WHERE {})").format(
        hop.ref_table.ident, match)


def texts(counts: Mapping[QualifiedName, list[LinkCount]], qname: QualifiedName) -> list[str]:
    return [c.text() for c in counts.get(qname, ())]
