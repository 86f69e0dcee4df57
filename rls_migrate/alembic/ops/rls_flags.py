"""``op.enable_rls`` / ``disable_rls`` / ``force_rls`` / ``no_force_rls``: the RLS flags of a
table and, for a partitioned table, of every partition (the enforce stage's flags)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from psycopg import sql

from rls_migrate.alembic.runtime import (
    Conn,
    driver_connection,
    options_from,
    qualified,
    run_locked,
)
from rls_migrate.catalog import QualifiedName
from rls_migrate.stages.common import regclass_text
from rls_migrate.steps import Lock


@Operations.register_operation("enable_rls")
class EnableRlsOp(MigrateOperation):
    """``ALTER TABLE ... ENABLE ROW LEVEL SECURITY`` (and ``FORCE`` with ``force=True``), on
    the table and, for a partitioned table, on every partition."""

    def __init__(self, table_name: str, *, force: bool = False,
                 schema: str | None = None) -> None:
        self.table_name, self.force, self.schema = table_name, force, schema

    @classmethod
    def enable_rls(cls, operations: Operations, table_name: str, *, force: bool = False,
                   schema: str | None = None) -> None:
        """Turn row-level security on (``force``: for the table owner too)."""
        operations.invoke(cls(table_name, force=force, schema=schema))

    def reverse(self) -> DisableRlsOp:
        return DisableRlsOp(self.table_name, force=self.force, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("enable_rls", self.schema, self.table_name, self.force)


@Operations.register_operation("disable_rls")
class DisableRlsOp(MigrateOperation):
    """``ALTER TABLE ... DISABLE ROW LEVEL SECURITY`` (``force=True``: ``NO FORCE`` too)."""

    def __init__(self, table_name: str, *, force: bool = False,
                 schema: str | None = None) -> None:
        self.table_name, self.force, self.schema = table_name, force, schema

    @classmethod
    def disable_rls(cls, operations: Operations, table_name: str, *, force: bool = False,
                    schema: str | None = None) -> None:
        """Turn row-level security off (``force``: and ``NO FORCE``)."""
        operations.invoke(cls(table_name, force=force, schema=schema))

    def reverse(self) -> EnableRlsOp:
        return EnableRlsOp(self.table_name, force=self.force, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("disable_rls", self.schema, self.table_name, self.force)


@Operations.register_operation("force_rls")
class ForceRlsOp(MigrateOperation):
    """``ALTER TABLE ... FORCE ROW LEVEL SECURITY``: policies apply to the owner too."""

    def __init__(self, table_name: str, *, schema: str | None = None) -> None:
        self.table_name, self.schema = table_name, schema

    @classmethod
    def force_rls(cls, operations: Operations, table_name: str, *,
                  schema: str | None = None) -> None:
        """Apply the policies to the table owner too."""
        operations.invoke(cls(table_name, schema=schema))

    def reverse(self) -> NoForceRlsOp:
        return NoForceRlsOp(self.table_name, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("force_rls", self.schema, self.table_name)


@Operations.register_operation("no_force_rls")
class NoForceRlsOp(MigrateOperation):
    """``ALTER TABLE ... NO FORCE ROW LEVEL SECURITY``: the owner bypasses RLS again."""

    def __init__(self, table_name: str, *, schema: str | None = None) -> None:
        self.table_name, self.schema = table_name, schema

    @classmethod
    def no_force_rls(cls, operations: Operations, table_name: str, *,
                     schema: str | None = None) -> None:
        """Let the table owner bypass the policies again."""
        operations.invoke(cls(table_name, schema=schema))

    def reverse(self) -> ForceRlsOp:
        return ForceRlsOp(self.table_name, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("no_force_rls", self.schema, self.table_name)


def _tables_of(conn: Conn, qname: QualifiedName) -> list[QualifiedName]:
    """``qname`` and every partition below it: a query naming a partition uses the
    partition's own RLS settings."""
    rows = conn.execute(
        "WITH RECURSIVE parts(oid, depth) AS (SELECT %s::regclass::oid, 0 UNION ALL"
        " SELECT i.inhrelid, p.depth + 1 FROM pg_inherits i JOIN parts p ON i.inhparent = p.oid"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relispartition)"
        " SELECT n.nspname, c.relname FROM parts p JOIN pg_class c ON c.oid = p.oid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY p.depth, n.nspname, c.relname",
        [regclass_text(qname)]).fetchall()
    return [QualifiedName(str(schema), str(name)) for schema, name in rows]


def _alter_flags(operations: Operations, what: str, table_name: str, schema: str | None,
                 clauses: Sequence[str]) -> None:
    conn = driver_connection(operations, what)
    options = options_from()
    for qname in _tables_of(conn, qualified(conn, table_name, schema)):
        statements = [sql.SQL("ALTER TABLE {} {}").format(qname.ident, sql.SQL(clause))
                      for clause in clauses]
        run_locked(conn, statements, table=qname, lock=Lock.ACCESS_EXCLUSIVE, options=options,
                   what=what)


@Operations.implementation_for(EnableRlsOp)
def _enable_rls(operations: Operations, operation: EnableRlsOp) -> None:
    clauses = ["ENABLE ROW LEVEL SECURITY"] + (["FORCE ROW LEVEL SECURITY"]
                                                 if operation.force else [])
    _alter_flags(operations, "enable_rls", operation.table_name, operation.schema, clauses)


@Operations.implementation_for(DisableRlsOp)
def _disable_rls(operations: Operations, operation: DisableRlsOp) -> None:
    clauses = (["NO FORCE ROW LEVEL SECURITY"] if operation.force else []) + [
        "DISABLE ROW LEVEL SECURITY"]
    _alter_flags(operations, "disable_rls", operation.table_name, operation.schema, clauses)


@Operations.implementation_for(ForceRlsOp)
def _force_rls(operations: Operations, operation: ForceRlsOp) -> None:
    _alter_flags(operations, "force_rls", operation.table_name, operation.schema,
                 ["FORCE ROW LEVEL SECURITY"])


@Operations.implementation_for(NoForceRlsOp)
def _no_force_rls(operations: Operations, operation: NoForceRlsOp) -> None:
    _alter_flags(operations, "no_force_rls", operation.table_name, operation.schema,
                 ["NO FORCE ROW LEVEL SECURITY"])
