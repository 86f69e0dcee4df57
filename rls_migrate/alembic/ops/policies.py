"""``op.create_tenant_policy`` / ``drop_tenant_policy`` / ``observe_tenant_policy`` /
``enforce_tenant_policy``: the observe and enforce stages' policies and recorders."""

from __future__ import annotations

import dataclasses
from typing import Any

from alembic.operations import MigrateOperation, Operations
from psycopg import sql

from rls_migrate.alembic.runtime import (
    RlsOperationError,
    driver_connection,
    ensure_toolkit_schema,
    options_from,
    qualified,
    require_online,
    role_sql,
    run_locked,
    target,
    translated_errors,
)
from rls_migrate.stages import write_truth
from rls_migrate.stages.common import PlanContext, TenantTable, with_partitions
from rls_migrate.stages.policies import (
    BASELINE_POLICY,
    OPERATIONS,
    TENANT_POLICY,
    drop_legacy_recorders,
    install_recorders,
    observe_expression,
    recorder_signature,
    tenant_match,
)
from rls_migrate.steps import Lock

MODES = ("observe", "enforce")


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise RlsOperationError(f"mode must be 'observe' or 'enforce', got {mode!r}")
    return mode


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


class PolicyOp(MigrateOperation):
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
class CreateTenantPolicyOp(PolicyOp):
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
class DropTenantPolicyOp(PolicyOp):
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
class ObserveTenantPolicyOp(PolicyOp):
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
class EnforceTenantPolicyOp(PolicyOp):
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
    return install_recorders(ctx, entry)


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
                    recorder_signature(ctx, entry, operation)) for operation in OPERATIONS),
                *drop_legacy_recorders(ctx, entry), *write_truth.remove(entry)]
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
    if mode == "observe":
        # The write-truth triggers, as the observe stage installs them (see
        # rls_migrate.stages.write_truth); enforced, nothing flags a statement: they go.
        out += [*drop_legacy_recorders(ctx, entry), *write_truth.install(ctx, entry)]
    else:
        out += write_truth.remove(entry)
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
