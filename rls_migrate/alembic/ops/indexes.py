"""``op.create_index_concurrently`` / ``drop_index_concurrently``: the index stage's concurrent
builds, run by the executor inside ``autocommit_block()``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from psycopg import sql

from rls_migrate.alembic.runtime import (
    RlsOperationError,
    driver_connection,
    options_from,
    qualified,
    require_online,
    run_locked,
    target,
    translated_errors,
)
from rls_migrate.journal import Journal
from rls_migrate.steps import Lock, StagePlan


@Operations.register_operation("create_index_concurrently")
class CreateIndexConcurrentlyOp(MigrateOperation):
    """``CREATE [UNIQUE] INDEX CONCURRENTLY`` inside ``autocommit_block()``: writes go on
    while it builds. An INVALID leftover of a failed build is dropped and built again; a
    partitioned table gets an index ``ON ONLY`` the parent, a concurrent build per
    partition, and ``ATTACH PARTITION`` (the index stage's steps)."""

    def __init__(self, index_name: str, table_name: str, columns: Sequence[str], *,
                 unique: bool = False, schema: str | None = None) -> None:
        self.index_name, self.table_name = index_name, table_name
        self.columns, self.unique, self.schema = tuple(columns), unique, schema

    @classmethod
    def create_index_concurrently(
        cls, operations: Operations, index_name: str, table_name: str,
        columns: Sequence[str], *, unique: bool = False, schema: str | None = None,
    ) -> None:
        """Build an index without blocking writes."""
        operations.invoke(cls(index_name, table_name, columns, unique=unique, schema=schema))

    def reverse(self) -> DropIndexConcurrentlyOp:
        return DropIndexConcurrentlyOp(self.index_name, self.table_name, self.columns,
                                       unique=self.unique, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_index_concurrently", self.schema, self.table_name, self.index_name)


@Operations.register_operation("drop_index_concurrently")
class DropIndexConcurrentlyOp(MigrateOperation):
    """``DROP INDEX CONCURRENTLY IF EXISTS`` inside ``autocommit_block()`` (an index on a
    partitioned table cannot be dropped concurrently: a plain, brief ``DROP INDEX`` under
    lock_timeout, which takes its partitions' indexes with it)."""

    def __init__(self, index_name: str, table_name: str, columns: Sequence[str] = (), *,
                 unique: bool = False, schema: str | None = None) -> None:
        self.index_name, self.table_name = index_name, table_name
        self.columns, self.unique, self.schema = tuple(columns), unique, schema

    @classmethod
    def drop_index_concurrently(
        cls, operations: Operations, index_name: str, table_name: str,
        columns: Sequence[str] = (), *, unique: bool = False, schema: str | None = None,
    ) -> None:
        """Drop an index without blocking reads or writes (``columns``: for the reverse)."""
        operations.invoke(cls(index_name, table_name, columns, unique=unique, schema=schema))

    def reverse(self) -> CreateIndexConcurrentlyOp:
        if not self.columns:
            raise ValueError("drop_index_concurrently needs columns= to be reversed")
        return CreateIndexConcurrentlyOp(self.index_name, self.table_name, self.columns,
                                         unique=self.unique, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("drop_index_concurrently", self.schema, self.table_name, self.index_name)


class _NoJournal(Journal):
    """A journal that records nothing: a user's index is not a toolkit step."""

    def record(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def step_status(self, step_id: str) -> str | None:
        return None


@Operations.implementation_for(CreateIndexConcurrentlyOp)
def _create_index_concurrently(operations: Operations,
                               operation: CreateIndexConcurrentlyOp) -> None:
    from rls_migrate.executor import Executor
    from rls_migrate.stages.index.shapes import IndexShape
    from rls_migrate.stages.index.tenant_index import index_steps

    what = "create_index_concurrently"
    require_online(operations, what)
    if not operation.columns:
        raise RlsOperationError(f"op.{what}: columns must not be empty")
    with operations.get_context().autocommit_block():
        conn = driver_connection(operations, what)
        options = options_from()
        qname = qualified(conn, operation.table_name, operation.schema)
        ctx, entry = target(conn, qname, operation.columns[0], options=options)
        steps = index_steps(ctx, entry, operation.index_name,
                            IndexShape.of_columns(operation.columns), f"op.{what}",
                            unique=operation.unique)
        with translated_errors():
            Executor(conn, options, _NoJournal(conn)).run(StagePlan("index", tuple(steps)))


@Operations.implementation_for(DropIndexConcurrentlyOp)
def _drop_index_concurrently(operations: Operations,
                             operation: DropIndexConcurrentlyOp) -> None:
    what = "drop_index_concurrently"
    require_online(operations, what)
    with operations.get_context().autocommit_block():
        conn = driver_connection(operations, what)
        qname = qualified(conn, operation.table_name, operation.schema)
        index = sql.Identifier(qname.schema, operation.index_name)
        row = conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            [qname.schema, operation.index_name]).fetchone()
        if row is None:
            return
        if row[0] == "I":
            run_locked(conn, [sql.SQL("DROP INDEX IF EXISTS {}").format(index)], table=qname,
                       lock=Lock.ACCESS_EXCLUSIVE, options=options_from(), what=what)
        else:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index))
