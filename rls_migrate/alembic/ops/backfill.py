"""``op.backfill_tenant_column`` / ``forget_tenant_backfill``: the backfill stage, run by the
executor inside ``autocommit_block()`` (batches, checkpoints, retries, the journal)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alembic.operations import MigrateOperation, Operations

from rls_migrate.alembic.ops.tenant_column import ColumnSpec, need_parent
from rls_migrate.alembic.runtime import (
    RlsOperationError,
    driver_connection,
    ensure_toolkit_schema,
    options_from,
    qualified,
    require_online,
    target,
    translated_errors,
)
from rls_migrate.playbook import Options
from rls_migrate.steps import StagePlan


@Operations.register_operation("backfill_tenant_column")
class BackfillTenantColumnOp(MigrateOperation):
    """Fill a derived table's tenant column from its parent in short keyset batches, each
    its own transaction with its checkpoint (inside ``autocommit_block()``): resumable after
    a kill, journaled like ``rls-migrate apply --stage backfill``. Options as the playbook's
    ``options.backfill`` (durations like ``"200ms"``); ``options`` overrides lock care."""

    def __init__(self, table_name: str, column: str = "tenant_id", *, parent: str,
                 parent_column: str = "tenant_id", schema: str | None = None,
                 batch_target: str | float = "200ms", batch_start_rows: int = 1000,
                 batch_max_rows: int = 50_000, pause: str | float = 0,
                 max_replica_lag: str | float | None = None, user_triggers: str = "skip",
                 orphans: str = "stop", options: Mapping[str, Any] | None = None) -> None:
        self.spec = ColumnSpec(table_name, column, parent, parent_column, None, schema)
        self.backfill = {"batch_target": batch_target, "batch_start_rows": batch_start_rows,
                         "batch_max_rows": batch_max_rows, "pause": pause,
                         "max_replica_lag": max_replica_lag, "user_triggers": user_triggers,
                         "orphans": orphans}
        self.options = dict(options or {})

    @property
    def table_name(self) -> str:
        return self.spec.table_name

    @classmethod
    def backfill_tenant_column(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        parent: str, parent_column: str = "tenant_id", schema: str | None = None,
        batch_target: str | float = "200ms", batch_start_rows: int = 1000,
        batch_max_rows: int = 50_000, pause: str | float = 0,
        max_replica_lag: str | float | None = None, user_triggers: str = "skip",
        orphans: str = "stop", options: Mapping[str, Any] | None = None,
    ) -> None:
        """Backfill the tenant column in batches (resumable)."""
        operations.invoke(cls(
            table_name, column, parent=parent, parent_column=parent_column, schema=schema,
            batch_target=batch_target, batch_start_rows=batch_start_rows,
            batch_max_rows=batch_max_rows, pause=pause, max_replica_lag=max_replica_lag,
            user_triggers=user_triggers, orphans=orphans, options=options))

    def reverse(self) -> ForgetTenantBackfillOp:
        return ForgetTenantBackfillOp(self)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("backfill_tenant_column", self.spec.schema, self.table_name, self.spec.column)

    def full_options(self) -> Options:
        base = options_from(self.options)
        try:
            backfill = base.backfill.model_validate({**base.backfill.model_dump(),
                                                     **self.backfill})
        except ValueError as exc:
            raise RlsOperationError(f"op.backfill_tenant_column: {exc}") from None
        return base.model_copy(update={"backfill": backfill})


@Operations.register_operation("forget_tenant_backfill", sourcename="forget")
class ForgetTenantBackfillOp(MigrateOperation):
    """The downgrade of a backfill: the values stay (a filled column is harmless), the
    checkpoint goes, so a later upgrade walks the table again."""

    def __init__(self, backfill: BackfillTenantColumnOp) -> None:
        self.backfill = backfill

    @classmethod
    def forget(cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
               parent: str, parent_column: str = "tenant_id",
               schema: str | None = None) -> None:
        """Forget the backfill checkpoint of a table."""
        operations.invoke(cls(BackfillTenantColumnOp(
            table_name, column, parent=parent, parent_column=parent_column, schema=schema)))

    def reverse(self) -> BackfillTenantColumnOp:
        return self.backfill

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("forget_tenant_backfill", self.backfill.spec.schema, self.backfill.table_name)


@Operations.implementation_for(BackfillTenantColumnOp)
def _backfill_tenant_column(operations: Operations, operation: BackfillTenantColumnOp) -> None:
    from rls_migrate import journal
    from rls_migrate import runner as _runner  # noqa: F401  (registers the backfill runner)
    from rls_migrate.executor import Executor
    from rls_migrate.migration_lock import MigrationLock
    from rls_migrate.stages import backfill

    what = "backfill_tenant_column"
    require_online(operations, what)
    options = operation.full_options()
    spec = operation.spec
    with translated_errors():
        ensure_toolkit_schema(operations)  # checkpoints; committed before the batches start
    with operations.get_context().autocommit_block():
        conn = driver_connection(operations, what)
        qname = qualified(conn, spec.table_name, spec.schema)
        ctx, _ = target(conn, qname, spec.column, parent=need_parent(spec.parent, what),
                        parent_column=spec.parent_column, options=options)
        with translated_errors():
            steps = tuple(s for s in backfill.plan(ctx).steps if s.table == qname)
            with MigrationLock(conn):
                Executor(conn, options, journal.Journal(conn)).run(
                    StagePlan("backfill", steps))


@Operations.implementation_for(ForgetTenantBackfillOp)
def _forget_tenant_backfill(operations: Operations, operation: ForgetTenantBackfillOp) -> None:
    from rls_migrate import journal

    conn = driver_connection(operations, "forget_tenant_backfill")
    spec = operation.backfill.spec
    if journal.schema_revision(conn) is not None:
        journal.reset_backfill(conn, qualified(conn, spec.table_name, spec.schema))
