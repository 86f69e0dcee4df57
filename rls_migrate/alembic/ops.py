"""Alembic operations for row-level security, registered the standard way
(``Operations.register_operation`` + ``Operations.implementation_for``), so after
``import rls_migrate.alembic`` a revision can say::

    op.enable_rls("invoices")
    op.create_tenant_policy("invoices", "tenant_id", role="app_user", mode="observe")
    op.enforce_tenant_policy("invoices", "tenant_id", role="app_user")

Every operation is data with a ``reverse()`` (what autogenerate puts in ``downgrade()``).
Implementations resolve the table against the live catalog and take their SQL from the stage
modules, so they do what ``rls-migrate apply`` does:

* small DDL (RLS flags, policies, the tenant column and its sync trigger) runs in the
  migration's transaction, each table under ``lock_timeout`` in a savepoint that is retried
  with a jittered backoff when the lock is not granted in time;
* ``backfill_tenant_column`` and the ``CONCURRENTLY`` index operations run inside
  ``autocommit_block()``: batches, checkpoints, retries and the journal are the executor's;
* ``run_rls_step`` / ``undo_rls_step`` run one planned step exactly as ``apply`` /
  ``rollback`` would (they are what ``rls-migrate alembic render`` writes).

Tables are named the Alembic way: a raw table name and ``schema=`` (default: where the
search path finds it). ``parent`` and ``references`` use the playbook's syntax
(``"issue_id -> public.issues(id)"``, ``"public.accounts(id)"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.journal import Journal
from rls_migrate.playbook import Options
from rls_migrate.stages.common import PlanContext, TenantTable, regclass_text, with_partitions
from rls_migrate.stages.policies import (
    BASELINE_POLICY,
    OPERATIONS,
    TENANT_POLICY,
    observe_expression,
    recorder_function,
    recorder_signature,
    tenant_match,
)
from rls_migrate.steps import LOCKS_BY_LABEL, Estimate, Lock, StagePlan, Step

from .runtime import (
    Conn,
    RlsOperationError,
    driver_connection,
    ensure_toolkit_schema,
    options_from,
    qualified,
    require_online,
    require_toolkit_schema,
    role_sql,
    run_locked,
    target,
    translated_errors,
)

MODES = ("observe", "enforce")


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise RlsOperationError(f"mode must be 'observe' or 'enforce', got {mode!r}")
    return mode


# =========================================================================== RLS flags


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


# =========================================================================== tenant policies


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a tenant policy operation needs; every policy op carries one."""

    table_name: str
    column: str = "tenant_id"
    setting: str = "app.tenant_id"
    key_type: str = "bigint"
    role: str | None = None
    baseline: bool = True
    schema: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _PolicyOp(MigrateOperation):
    def __init__(self, table_name: str, column: str = "tenant_id", *,
                 setting: str = "app.tenant_id", key_type: str = "bigint",
                 role: str | None = None, baseline: bool = True,
                 schema: str | None = None) -> None:
        self.spec = PolicySpec(table_name, column, setting, key_type, role, baseline, schema)

    @property
    def table_name(self) -> str:
        return self.spec.table_name

    @property
    def schema(self) -> str | None:
        return self.spec.schema


@Operations.register_operation("create_tenant_policy")
class CreateTenantPolicyOp(_PolicyOp):
    """The toolkit's tenant policies on a table (and its partitions):

    * ``rls_migrate_tenant``, RESTRICTIVE, for ``role`` (default PUBLIC): in ``enforce``
      mode ``col = (SELECT <current tenant>)``; in ``observe`` mode true for every row but
      recording every row the enforced policy would reject (recorder functions in the
      ``rls_migrate`` schema, which is created or upgraded first);
    * with ``baseline=True``, ``rls_migrate_baseline``, PERMISSIVE (without a permissive
      policy every row is denied): ``USING (true)`` for PUBLIC in observe mode, the tenant
      match for ``role`` in enforce mode. Use ``baseline=False`` when the table has
      permissive policies of its own.

    RLS itself is switched with :class:`EnableRlsOp`."""

    def __init__(self, table_name: str, column: str = "tenant_id", *,
                 setting: str = "app.tenant_id", key_type: str = "bigint",
                 role: str | None = None, mode: str = "enforce", baseline: bool = True,
                 schema: str | None = None) -> None:
        super().__init__(table_name, column, setting=setting, key_type=key_type, role=role,
                         baseline=baseline, schema=schema)
        self.mode = _mode(mode)

    @classmethod
    def create_tenant_policy(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        setting: str = "app.tenant_id", key_type: str = "bigint", role: str | None = None,
        mode: str = "enforce", baseline: bool = True, schema: str | None = None,
    ) -> None:
        """Create the tenant policy (``mode``: observe or enforce)."""
        operations.invoke(cls(table_name, column, setting=setting, key_type=key_type,
                              role=role, mode=mode, baseline=baseline, schema=schema))

    def reverse(self) -> DropTenantPolicyOp:
        return DropTenantPolicyOp(**self.spec.kwargs(), mode=self.mode)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_tenant_policy", self.schema, self.table_name, self.spec.column,
                self.mode)


@Operations.register_operation("drop_tenant_policy")
class DropTenantPolicyOp(_PolicyOp):
    """Drop the toolkit's tenant (and baseline) policies and the observe recorders."""

    def __init__(self, table_name: str, column: str = "tenant_id", *,
                 setting: str = "app.tenant_id", key_type: str = "bigint",
                 role: str | None = None, mode: str = "enforce", baseline: bool = True,
                 schema: str | None = None) -> None:
        super().__init__(table_name, column, setting=setting, key_type=key_type, role=role,
                         baseline=baseline, schema=schema)
        self.mode = _mode(mode)

    @classmethod
    def drop_tenant_policy(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        setting: str = "app.tenant_id", key_type: str = "bigint", role: str | None = None,
        mode: str = "enforce", baseline: bool = True, schema: str | None = None,
    ) -> None:
        """Drop the tenant policy (``mode`` is what the downgrade recreates)."""
        operations.invoke(cls(table_name, column, setting=setting, key_type=key_type,
                              role=role, mode=mode, baseline=baseline, schema=schema))

    def reverse(self) -> CreateTenantPolicyOp:
        return CreateTenantPolicyOp(**self.spec.kwargs(), mode=self.mode)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("drop_tenant_policy", self.schema, self.table_name, self.spec.column)


@Operations.register_operation("observe_tenant_policy")
class ObserveTenantPolicyOp(_PolicyOp):
    """``ALTER POLICY`` back to observe mode (records, never filters): the kill switch."""

    @classmethod
    def observe_tenant_policy(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        setting: str = "app.tenant_id", key_type: str = "bigint", role: str | None = None,
        baseline: bool = True, schema: str | None = None,
    ) -> None:
        """Put the tenant policy in observe mode."""
        operations.invoke(cls(table_name, column, setting=setting, key_type=key_type,
                              role=role, baseline=baseline, schema=schema))

    def reverse(self) -> EnforceTenantPolicyOp:
        return EnforceTenantPolicyOp(**self.spec.kwargs())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("observe_tenant_policy", self.schema, self.table_name, self.spec.column)


@Operations.register_operation("enforce_tenant_policy")
class EnforceTenantPolicyOp(_PolicyOp):
    """``ALTER POLICY`` to the enforced ``col = (SELECT <current tenant>)``: the flip."""

    @classmethod
    def enforce_tenant_policy(
        cls, operations: Operations, table_name: str, column: str = "tenant_id", *,
        setting: str = "app.tenant_id", key_type: str = "bigint", role: str | None = None,
        baseline: bool = True, schema: str | None = None,
    ) -> None:
        """Enforce the tenant policy."""
        operations.invoke(cls(table_name, column, setting=setting, key_type=key_type,
                              role=role, baseline=baseline, schema=schema))

    def reverse(self) -> ObserveTenantPolicyOp:
        return ObserveTenantPolicyOp(**self.spec.kwargs())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("enforce_tenant_policy", self.schema, self.table_name, self.spec.column)


def _recorders(ctx: PlanContext, entry: TenantTable) -> list[sql.Composable]:
    out: list[sql.Composable] = []
    for operation in OPERATIONS:
        out += [recorder_function(ctx, entry, operation),
                sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(
                    recorder_signature(ctx, entry, operation))]
    return out


def _policy_statements(kind: str, mode: str, spec: PolicySpec, ctx: PlanContext,
                       entry: TenantTable) -> list[sql.Composable]:
    """The statements of one policy operation on one table: ``kind`` is create, drop or
    alter; ``mode`` the mode the policy ends in."""
    ident, role = entry.ident, role_sql(spec.role)
    tenant, base = sql.Identifier(TENANT_POLICY), sql.Identifier(BASELINE_POLICY)
    match = tenant_match(ctx, entry)
    if kind == "drop":
        return [sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(tenant, ident),
                *([sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(base, ident)]
                  if spec.baseline else []),
                *(sql.SQL("DROP FUNCTION IF EXISTS {}").format(
                    recorder_signature(ctx, entry, operation)) for operation in OPERATIONS)]
    out: list[sql.Composable] = []
    if mode == "observe":
        out += _recorders(ctx, entry)
        using: sql.Composable = observe_expression(ctx, entry, "read")
        check: sql.Composable = observe_expression(ctx, entry, "write")
        base_role: sql.Composable = sql.SQL("PUBLIC")
        base_expr: sql.Composable = sql.SQL("true")
    else:
        using = check = match
        base_role, base_expr = role, match
    if kind == "create":
        out += [sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(tenant, ident),
                sql.SQL("CREATE POLICY {} ON {} AS RESTRICTIVE FOR ALL TO {} USING ({})"
                        " WITH CHECK ({})").format(tenant, ident, role, using, check)]
        if spec.baseline:
            out += [sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(base, ident),
                    sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING ({})"
                            " WITH CHECK ({})").format(base, ident, base_role, base_expr,
                                                       base_expr)]
    else:
        out.append(sql.SQL("ALTER POLICY {} ON {} TO {} USING ({}) WITH CHECK ({})").format(
            tenant, ident, role, using, check))
        if spec.baseline:
            out.append(sql.SQL("ALTER POLICY {} ON {} TO {} USING ({}) WITH CHECK ({})").format(
                base, ident, base_role, base_expr, base_expr))
    return out


def _run_policy(operations: Operations, what: str, kind: str, mode: str,
                spec: PolicySpec) -> None:
    require_online(operations, what)
    if mode == "observe" and kind != "drop":
        # The recorders live in the toolkit's schema and write its sample table.
        with translated_errors():
            ensure_toolkit_schema(operations)
    conn = driver_connection(operations, what)
    options = options_from()
    qname = qualified(conn, spec.table_name, spec.schema)
    ctx, entry = target(conn, qname, spec.column, setting=spec.setting,
                        key_type=spec.key_type, role=spec.role, options=options)
    if entry.table.column(spec.column) is None:
        raise RlsOperationError(
            f"op.{what}: {qname} has no column {spec.column!r} (columns: "
            f"{', '.join(entry.table.column_names)})")
    if kind == "alter":
        missing = [str(e.qname) for e in with_partitions(ctx, entry)
                   if not any(p.name == TENANT_POLICY for p in e.table.policies)]
        if missing:
            raise RlsOperationError(
                f"op.{what}: no {TENANT_POLICY} policy on {', '.join(missing)}: create it "
                "first with op.create_tenant_policy")
    for part in with_partitions(ctx, entry):
        run_locked(conn, _policy_statements(kind, mode, spec, ctx, part), table=part.qname,
                   lock=Lock.ACCESS_EXCLUSIVE, options=options, what=what)


@Operations.implementation_for(CreateTenantPolicyOp)
def _create_tenant_policy(operations: Operations, operation: CreateTenantPolicyOp) -> None:
    _run_policy(operations, "create_tenant_policy", "create", operation.mode, operation.spec)


@Operations.implementation_for(DropTenantPolicyOp)
def _drop_tenant_policy(operations: Operations, operation: DropTenantPolicyOp) -> None:
    _run_policy(operations, "drop_tenant_policy", "drop", operation.mode, operation.spec)


@Operations.implementation_for(ObserveTenantPolicyOp)
def _observe_tenant_policy(operations: Operations, operation: ObserveTenantPolicyOp) -> None:
    _run_policy(operations, "observe_tenant_policy", "alter", "observe", operation.spec)


@Operations.implementation_for(EnforceTenantPolicyOp)
def _enforce_tenant_policy(operations: Operations, operation: EnforceTenantPolicyOp) -> None:
    _run_policy(operations, "enforce_tenant_policy", "alter", "enforce", operation.spec)


# =========================================================================== the tenant column


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


def _need_parent(parent: str | None, what: str) -> str:
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
    ctx, _ = target(conn, qname, spec.column, parent=_need_parent(spec.parent, what),
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


# =========================================================================== backfill


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
        ctx, _ = target(conn, qname, spec.column, parent=_need_parent(spec.parent, what),
                        parent_column=spec.parent_column, options=options)
        with translated_errors():
            steps = tuple(s for s in backfill.plan(ctx).steps if s.table == qname)
            with journal.MigrationLock(conn):
                Executor(conn, options, journal.Journal(conn)).run(
                    StagePlan("backfill", steps))


@Operations.implementation_for(ForgetTenantBackfillOp)
def _forget_tenant_backfill(operations: Operations, operation: ForgetTenantBackfillOp) -> None:
    from rls_migrate import journal

    conn = driver_connection(operations, "forget_tenant_backfill")
    spec = operation.backfill.spec
    if journal.schema_revision(conn) is not None:
        journal.reset_backfill(conn, qualified(conn, spec.table_name, spec.schema))


# =========================================================================== indexes


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


# =========================================================================== the toolkit's schema


@Operations.register_operation("upgrade_rls_migrate_schema")
class UpgradeRlsMigrateSchemaOp(MigrateOperation):
    """Create or upgrade the ``rls_migrate`` schema (journal, backfill checkpoints,
    violation samples) in this migration's transaction: the toolkit's own Alembic
    revisions, version table ``rls_migrate.alembic_version``."""

    def __init__(self, revision: str = "head") -> None:
        self.revision = revision

    @classmethod
    def upgrade_rls_migrate_schema(cls, operations: Operations,
                                   revision: str = "head") -> None:
        """Bring the toolkit's schema to ``revision``."""
        operations.invoke(cls(revision))

    def reverse(self) -> DowngradeRlsMigrateSchemaOp:
        return DowngradeRlsMigrateSchemaOp("base")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("upgrade_rls_migrate_schema", self.revision)


@Operations.register_operation("downgrade_rls_migrate_schema")
class DowngradeRlsMigrateSchemaOp(MigrateOperation):
    """Take the toolkit's schema down to ``revision`` (``base``: drop the journal)."""

    def __init__(self, revision: str = "base") -> None:
        self.revision = revision

    @classmethod
    def downgrade_rls_migrate_schema(cls, operations: Operations,
                                     revision: str = "base") -> None:
        """Take the toolkit's schema down to ``revision``."""
        operations.invoke(cls(revision))

    def reverse(self) -> UpgradeRlsMigrateSchemaOp:
        return UpgradeRlsMigrateSchemaOp("head")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("downgrade_rls_migrate_schema", self.revision)


@Operations.implementation_for(UpgradeRlsMigrateSchemaOp)
def _upgrade_schema(operations: Operations, operation: UpgradeRlsMigrateSchemaOp) -> None:
    with translated_errors():
        ensure_toolkit_schema(operations, operation.revision)


@Operations.implementation_for(DowngradeRlsMigrateSchemaOp)
def _downgrade_schema(operations: Operations, operation: DowngradeRlsMigrateSchemaOp) -> None:
    from alembic import command

    from rls_migrate.journal import alembic_config

    from .runtime import _HAVE_SCHEMA, keep_alembic_proxies

    _HAVE_SCHEMA.discard(driver_connection(operations, "downgrade_rls_migrate_schema"))
    with translated_errors(), keep_alembic_proxies():
        command.downgrade(alembic_config(connection=operations.get_bind()), operation.revision)


# =========================================================================== planned steps


@Operations.register_operation("run_rls_step")
class RunRlsStepOp(MigrateOperation):
    """One step of an rls-migrate plan, run as ``rls-migrate apply`` runs it: skipped when
    its done check passes; otherwise in its own short transaction under lock_timeout with
    retries (``transactional=False``: outside any, for CONCURRENTLY), inside
    ``autocommit_block()``; journaled in ``rls_migrate`` (so ``rls-migrate status`` shows
    it). Statements are SQL text, run as they are (no bind-parameter parsing)."""

    def __init__(self, step_id: str, *, stage: str, kind: str, table: str | None,
                 lock: str, statements: Sequence[str], transactional: bool = True,
                 done_check: str | None = None, seconds: float = 0.0,
                 options: Mapping[str, Any] | None = None,
                 inverse: Sequence[str] = (), inverse_lock: str = "none",
                 inverse_transactional: bool = True) -> None:
        if lock not in LOCKS_BY_LABEL or inverse_lock not in LOCKS_BY_LABEL:
            raise RlsOperationError(
                f"step {step_id}: lock must be one of {sorted(LOCKS_BY_LABEL)}")
        self.step_id, self.stage, self.kind, self.table = step_id, stage, kind, table
        self.lock, self.statements, self.transactional = lock, tuple(statements), transactional
        self.done_check, self.seconds, self.options = done_check, seconds, dict(options or {})
        self.inverse, self.inverse_lock = tuple(inverse), inverse_lock
        self.inverse_transactional = inverse_transactional

    @classmethod
    def run_rls_step(
        cls, operations: Operations, step_id: str, *, stage: str, kind: str,
        table: str | None, lock: str, statements: Sequence[str], transactional: bool = True,
        done_check: str | None = None, seconds: float = 0.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Run one planned step."""
        operations.invoke(cls(step_id, stage=stage, kind=kind, table=table, lock=lock,
                              statements=statements, transactional=transactional,
                              done_check=done_check, seconds=seconds, options=options))

    def reverse(self) -> UndoRlsStepOp:
        return UndoRlsStepOp(self.step_id, stage=self.stage, kind=self.kind, table=self.table,
                             lock=self.inverse_lock, statements=self.inverse,
                             transactional=self.inverse_transactional, options=self.options)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("run_rls_step", self.step_id)

    def step(self) -> Step:
        return Step(
            id=self.step_id, stage=self.stage, kind=self.kind,
            table=QualifiedName.parse(self.table) if self.table else None,
            description=self.step_id,
            statements=tuple(sql.SQL(s) for s in self.statements),
            lock=LOCKS_BY_LABEL[self.lock], transactional=self.transactional,
            done_check=sql.SQL(self.done_check) if self.done_check else None,
            inverse=tuple(sql.SQL(s) for s in self.inverse),
            inverse_lock=LOCKS_BY_LABEL[self.inverse_lock],
            inverse_transactional=self.inverse_transactional,
            estimate=Estimate(seconds=self.seconds))


@Operations.register_operation("undo_rls_step")
class UndoRlsStepOp(MigrateOperation):
    """The inverse of one planned step, run as ``rls-migrate rollback`` runs it: only when
    the journal has the step done, under lock_timeout with retries, journaled ``undone``."""

    def __init__(self, step_id: str, *, stage: str, kind: str, table: str | None,
                 lock: str, statements: Sequence[str], transactional: bool = True,
                 options: Mapping[str, Any] | None = None) -> None:
        if lock not in LOCKS_BY_LABEL:
            raise RlsOperationError(
                f"step {step_id}: lock must be one of {sorted(LOCKS_BY_LABEL)}")
        self.step_id, self.stage, self.kind, self.table = step_id, stage, kind, table
        self.lock, self.statements, self.transactional = lock, tuple(statements), transactional
        self.options = dict(options or {})

    @classmethod
    def undo_rls_step(
        cls, operations: Operations, step_id: str, *, stage: str, kind: str,
        table: str | None, lock: str, statements: Sequence[str], transactional: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Undo one planned step."""
        operations.invoke(cls(step_id, stage=stage, kind=kind, table=table, lock=lock,
                              statements=statements, transactional=transactional,
                              options=options))

    def reverse(self) -> RunRlsStepOp:
        raise NotImplementedError("undo_rls_step is the downgrade half of run_rls_step")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("undo_rls_step", self.step_id)

    def step(self) -> Step:
        return Step(
            id=self.step_id, stage=self.stage, kind=self.kind,
            table=QualifiedName.parse(self.table) if self.table else None,
            description=self.step_id, statements=(),
            inverse=tuple(sql.SQL(s) for s in self.statements),
            inverse_lock=LOCKS_BY_LABEL[self.lock], inverse_transactional=self.transactional)


def _emit_offline(operations: Operations, step_id: str, statements: Sequence[str],
                  transactional: bool, options: Options) -> None:
    """``alembic upgrade --sql``: the statements as a script, each transactional step in its
    own transaction under lock_timeout (no done check: the script runs them all)."""
    impl = operations.get_context().impl
    impl.static_output(f"-- {' '.join(step_id.splitlines())}")
    if transactional:
        impl.static_output("BEGIN;")
        impl.static_output(f"SET LOCAL lock_timeout = '{max(1, round(options.lock_timeout))}ms';")
    for statement in statements:
        impl.static_output(statement + ";")
    if transactional:
        impl.static_output("COMMIT;")


def _run_planned(operations: Operations, what: str, step: Step, raw: Sequence[str],
                 transactional: bool, overrides: Mapping[str, Any], undo: bool) -> None:
    from rls_migrate import journal
    from rls_migrate import planner as _planner  # noqa: F401  (stage kind handlers)
    from rls_migrate.executor import Executor

    options = options_from(overrides)
    context = operations.get_context()
    with context.autocommit_block():
        if context.as_sql:
            _emit_offline(operations, step.id, raw, transactional, options)
            return
        conn = driver_connection(operations, what)
        require_toolkit_schema(conn, what)
        with translated_errors(), journal.MigrationLock(conn):
            executor = Executor(conn, options, journal.Journal(conn))
            stage = StagePlan(step.stage, (step,))
            result = executor.rollback(stage) if undo else executor.run(stage)
            if undo and result.undone and step.kind == "add_column" and step.table:
                # As `rollback --drop-columns`: a later backfill starts from scratch.
                journal.reset_backfill(conn, step.table)


@Operations.implementation_for(RunRlsStepOp)
def _run_rls_step(operations: Operations, operation: RunRlsStepOp) -> None:
    _run_planned(operations, "run_rls_step", operation.step(), operation.statements,
                 operation.transactional, operation.options, undo=False)


@Operations.implementation_for(UndoRlsStepOp)
def _undo_rls_step(operations: Operations, operation: UndoRlsStepOp) -> None:
    _run_planned(operations, "undo_rls_step", operation.step(), operation.statements,
                 operation.transactional, operation.options, undo=True)


__all__ = [
    "AddTenantColumnOp", "BackfillTenantColumnOp", "CreateIndexConcurrentlyOp",
    "CreateTenantPolicyOp", "DisableRlsOp", "DowngradeRlsMigrateSchemaOp",
    "DropIndexConcurrentlyOp", "DropTenantColumnOp", "DropTenantPolicyOp", "EnableRlsOp",
    "EnforceTenantPolicyOp", "ForceRlsOp", "ForgetTenantBackfillOp", "NoForceRlsOp",
    "ObserveTenantPolicyOp", "RunRlsStepOp", "UndoRlsStepOp", "UpgradeRlsMigrateSchemaOp",
]
