"""What every schema of the corpus provides (:class:`RealSchema`), and loading one into a
fresh database: the framework's DDL, the roles and grants an application has, the generic
filler's rows and the application's history (deletions that leave NULLs and orphans).

Not a test module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from real_schemas.filler import FillSpec, fill
from rls_migrate import samples

Conn = psycopg.Connection[Any]
APP_ROLE, ADMIN_ROLE = samples.APP_ROLE, samples.ADMIN_ROLE
HERE = Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class RealSchema:
    """One application's schema, data and write path.

    ``write_path(conn, tenant)`` runs what the application does in one request, statement by
    statement in its ORM's order, inside a transaction that already acts as the application
    role with ``tenant`` set; it returns by how many rows it changed the tenant's tables whose
    change does not depend on the data (table -> rows added, net of what it deleted).
    ``sign_up_rows``: the rows it also makes for a new tenant (a sign-up), which the tenant
    does not see once RLS is enforced.
    ``history`` runs once after the filler: what the application did before the migration
    (deletions whose ``ON DELETE SET NULL`` or missing foreign keys leave NULL links and
    orphans). ``new_table`` is the first table the team adds after the migration, the way the
    framework writes it (``check`` must name it); ``global_uniques`` are the unique indexes
    an engineer of the app knows span tenants (``plan`` must name them among its risks)."""

    name: str
    ddl: Sequence[str]
    fill: FillSpec
    root: str  # the tenant root, as the playbook names it (schema-qualified)
    write_path: Callable[[Conn, Any], dict[str, int]]
    history: Callable[[Conn], None] | None = None
    sign_up_rows: Mapping[str, int] = dataclasses.field(default_factory=dict)
    new_table: Sequence[str] = ()  # DDL of a table the team adds next month, holding tenant data
    global_uniques: Sequence[tuple[str, str]] = ()  # (table, column): unique across tenants

    @property
    def playbook_path(self) -> Path:
        return HERE / f"{self.name}.yaml"

    def load(self, dsn: str) -> dict[str, int]:
        """Create the schema in the fresh database at ``dsn``, fill it, run its history;
        returns rows per table."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            samples.ensure_roles(conn)  # cluster-wide: in their own transactions
        with psycopg.connect(dsn) as conn:
            conn.execute(";\n".join(self.ddl).encode())  # one round trip (simple protocol)
            grant(conn)
            counts = fill(conn, self.fill)
            if self.history is not None:
                self.history(conn)
            conn.commit()
            conn.autocommit = True
            conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(
                sql.Identifier("public", t) for t in counts)))
        return counts


def grant(conn: Conn, schema: str = "public") -> None:
    """What an application's roles have: table and sequence rights, and nothing else (they
    own nothing, so RLS applies to them)."""
    roles = sql.SQL(", ").join(sql.Identifier(r) for r in (APP_ROLE, ADMIN_ROLE))
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, roles))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} "
                         "TO {}").format(ident, roles))
    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
        ident, roles))


@contextmanager
def as_app(conn: Conn, tenant: Any, role: str = APP_ROLE) -> Iterator[Conn]:
    """One committed transaction as the application role with ``tenant`` set per
    transaction (``set_config(..., true)``), as the application's pool does it."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(tenant)])
        yield conn


def one(conn: Conn, query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the one row ``query`` returns (an INSERT ... RETURNING id)."""
    row = conn.execute(query.encode(), list(params)).fetchone()
    assert row is not None, query
    return row[0]


def row_counts(conn: Conn) -> dict[str, int]:
    """Rows per table of ``public``, as the connection's role sees them."""
    tables = [r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition").fetchall()]
    counts = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("public", table))).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    return counts


def write(conn: Conn, schema: RealSchema, tenant: Any, *, enforced: bool) -> None:
    """The write path, committed, as the application with ``tenant`` set; the rows it wrote
    are all there for the application to see: its tenant's (all of them, even a row whose
    parent it deleted), and the sign-up's too while RLS does not filter."""
    def counts() -> dict[str, int]:
        if enforced:  # what the tenant sees
            return row_counts(conn)
        # Observe records the app's reads of other tenants' rows: count as the owner.
        conn.execute("RESET ROLE")
        try:
            return row_counts(conn)
        finally:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))

    with as_app(conn, tenant):
        before = counts()
        written = dict(schema.write_path(conn, tenant))
        after = counts()
    expected = dict(written)
    if not enforced:
        for table, rows in schema.sign_up_rows.items():
            expected[table] = expected.get(table, 0) + rows
    seen = {t: after[t] - before[t] for t in expected}
    assert seen == expected, f"{schema.name}, tenant {tenant}: rows written {seen}, expected " \
                             f"{expected}"
