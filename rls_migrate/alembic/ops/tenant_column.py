"""``op.add_tenant_column`` / ``drop_tenant_column``: the add-column stage (the tenant column,
its default and its sync trigger)."""

from __future__ import annotations

import dataclasses
from typing import Any

from alembic.operations import MigrateOperation, Operations

from rls_migrate.alembic.runtime import (
    Conn,
    RlsOperationError,
    driver_connection,
    ensure_toolkit_schema,
    options_from,
    qualified,
    run_locked,
    target,
    translated_errors,
)
from rls_migrate.catalog import QualifiedName
from rls_migrate.steps import Step


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """A derived table's tenant column: where its value comes from (``parent``), the tenant
    column on the parent, and optionally the tenant root for a NOT VALID foreign key."""

    table_name: str
    column: str = "tenant_id"
    parent: str = ""
    parent_column: str = "tenant_id"
    references: str | None = None
    schema: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def need_parent(parent: str | None, what: str) -> str:
    if not parent:
        raise RlsOperationError(f"op.{what} needs parent=, e.g. "
                                "'issue_id -> public.issues(id)'")
    return parent


class _ColumnOp(MigrateOperation):
    def __init__(self, table_name: str, column: str = "tenant_id", *, parent: str,
                 parent_column: str = "tenant_id", references: str | None = None,
                 schema: str | None = None) -> None:
        self.spec = ColumnSpec(table_name, column, parent, parent_column, references, schema)

    @property
    def table_name(self) -> str:
        return self.spec.table_name


@Operations.register_operation("add_tenant_column")
class AddTenantColumnOp(_ColumnOp):
    """The add-column stage for one table: the nullable tenant column (no default: a catalog
    change, no rewrite), the trigger that fills it for rows written from now on (from the
    parent row), and with ``references`` a NOT VALID foreign key to the tenant root."""

    @classmethod
    def add_tenant_column(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        parent: str, parent_column: str = "tenant_id", references: str | None = None,
        schema: str | None = None,
    ) -> None:
        """Add the tenant column and its sync trigger."""
        operations.invoke(cls(table_name, column, parent=parent, parent_column=parent_column,
                              references=references, schema=schema))

    def reverse(self) -> DropTenantColumnOp:
        return DropTenantColumnOp(**self.spec.kwargs())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_tenant_column", self.spec.schema, self.table_name, self.spec.column)


@Operations.register_operation("drop_tenant_column")
class DropTenantColumnOp(_ColumnOp):
    """Drop the tenant foreign key, the sync trigger and function, and the column (its
    values are lost; the backfill checkpoint is forgotten too)."""

    @classmethod
    def drop_tenant_column(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        parent: str, parent_column: str = "tenant_id", references: str | None = None,
        schema: str | None = None,
    ) -> None:
        """Drop the tenant column and everything add_tenant_column made."""
        operations.invoke(cls(table_name, column, parent=parent, parent_column=parent_column,
                              references=references, schema=schema))

    def reverse(self) -> AddTenantColumnOp:
        return AddTenantColumnOp(**self.spec.kwargs())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("drop_tenant_column", self.spec.schema, self.table_name, self.spec.column)


def _column_steps(conn: Conn, what: str, spec: ColumnSpec) -> tuple[QualifiedName, list[Step]]:
    from rls_migrate.stages import add_column

    qname = qualified(conn, spec.table_name, spec.schema)
    ctx, _ = target(conn, qname, spec.column, parent=need_parent(spec.parent, what),
                    parent_column=spec.parent_column, references=spec.references)
    steps = [s for s in add_column.plan(ctx).steps if s.table == qname
             and (s.kind != "add_foreign_key" or spec.references is not None)]
    return qname, steps


def _done(conn: Conn, step: Step) -> bool:
    if step.done_check is None:
        return False
    row = conn.execute(step.done_check).fetchone()
    return bool(row and row[0])


@Operations.implementation_for(AddTenantColumnOp)
def _add_tenant_column(operations: Operations, operation: AddTenantColumnOp) -> None:
    conn = driver_connection(operations, "add_tenant_column")
    with translated_errors():
        ensure_toolkit_schema(operations)  # the sync function lives there
    options = options_from()
    _, steps = _column_steps(conn, "add_tenant_column", operation.spec)
    for step in steps:
        if not _done(conn, step):
            assert step.table is not None
            run_locked(conn, step.statements, table=step.table, lock=step.lock,
                       options=options, what="add_tenant_column")


@Operations.implementation_for(DropTenantColumnOp)
def _drop_tenant_column(operations: Operations, operation: DropTenantColumnOp) -> None:
    from rls_migrate import journal

    conn = driver_connection(operations, "drop_tenant_column")
    options = options_from()
    qname, steps = _column_steps(conn, "drop_tenant_column", operation.spec)
    for step in reversed(steps):
        assert step.table is not None
        run_locked(conn, step.inverse, table=step.table, lock=step.inverse_lock,
                   options=options, what="drop_tenant_column")
    if journal.schema_revision(conn) is not None:
        # The column is gone: a later add and backfill must fill it again from the start.
        journal.reset_backfill(conn, qname)
