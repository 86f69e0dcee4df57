"""observe: RLS on, policies that change no result but record every would-be violation.

Per table, one short transaction under lock_timeout: the two recorder functions (read and
write), a RESTRICTIVE tenant policy ``col = <tenant> OR record(col)`` for the application
role whose recorder returns true, and, where observe is the one turning RLS on, a PERMISSIVE
baseline ``USING (true)`` for everyone (without a permissive policy every row would be
denied) and ``ENABLE ROW LEVEL SECURITY``. Being RESTRICTIVE, the tenant policy can never
widen what other policies grant. Partitions get the same: a query that names a partition
uses the partition's own RLS.

The recorders live in the private ``rls_migrate`` schema: calling them from a policy needs
EXECUTE (granted to PUBLIC, explicitly, because hardened databases revoke the default), not
USAGE on the schema, so nobody can call them by name and forge evidence.

Rollback drops our policies and recorders, and turns RLS off only where observe turned it
on (see :func:`~rls_migrate.stages.policies.observe_enables_rls`)."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    exists_sql,
    regclass_literal,
    with_partitions,
)
from rls_migrate.stages.policies import (
    BASELINE_POLICY,
    OPERATIONS,
    TENANT_POLICY,
    observe_enables_rls,
    observe_expression,
    recorder_function,
    recorder_signature,
)
from rls_migrate.steps import Estimate, Lock, StagePlan, Step


def _notes(entry: TenantTable, enables: bool) -> list[str]:
    notes: list[str] = []
    if entry.table.is_partitioned:
        notes.append(f"{entry.qname}: its partitions get the same policies (a query that "
                     "names a partition uses the partition's own); a partition created "
                     "later needs them too: run plan and apply --stage observe again")
    theirs = [p for p in entry.table.policies
              if p.name not in (TENANT_POLICY, BASELINE_POLICY)]
    restrictive = [p.name for p in theirs if not p.permissive]
    if enables and restrictive:
        notes.append(f"risk: {entry.qname} has RLS off but restrictive policies "
                     f"({', '.join(restrictive)}) that start filtering when observe enables "
                     "RLS")
    if not enables and not any(p.permissive for p in theirs):
        notes.append(f"{entry.qname}: RLS is already on without a permissive policy (the "
                     "application role sees no rows today); observe leaves that as it is")
    return notes


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    app = sql.Identifier(ctx.playbook.roles.app)
    tenant_policy = sql.Identifier(TENANT_POLICY)
    baseline_policy = sql.Identifier(BASELINE_POLICY)
    notes: list[str] = [
        "while observing, statements that read a protected table run without parallel "
        "workers (the recorder keeps a per-statement marker, which parallel mode forbids); "
        "enforce has no recorder",
    ]
    for entry in (e for t in ctx.tenant_tables for e in with_partitions(ctx, t)):
        ident = entry.ident
        enables = observe_enables_rls(entry)
        notes += _notes(entry, enables)
        statements: list[sql.Composable] = []
        for operation in OPERATIONS:
            statements += [
                recorder_function(ctx, entry, operation),
                sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(
                    recorder_signature(ctx, entry, operation)),
            ]
        statements += [
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(tenant_policy, ident),
            sql.SQL("CREATE POLICY {} ON {} AS RESTRICTIVE FOR ALL TO {} USING ({}) WITH CHECK ({})"
                    ).format(tenant_policy, ident, app,
                             observe_expression(ctx, entry, "read"),
                             observe_expression(ctx, entry, "write")),
        ]
        inverse: list[sql.Composable] = []
        if enables:
            statements += [
                sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(baseline_policy, ident),
                sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING (true)"
                        " WITH CHECK (true)").format(baseline_policy, ident),
                sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ident),
            ]
            inverse.append(sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(ident))
        inverse += [
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(tenant_policy, ident),
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(baseline_policy, ident),
            *(sql.SQL("DROP FUNCTION IF EXISTS {}").format(
                recorder_signature(ctx, entry, operation)) for operation in OPERATIONS),
        ]
        steps.append(Step(
            id=f"observe:{entry.qname}",
            stage="observe",
            kind="observe_policy",
            table=entry.qname,
            description="restrictive tenant policy in observe mode (records, never filters)"
                        + (", a permissive baseline USING (true) and ENABLE ROW LEVEL SECURITY"
                           if enables else " beside the table's own policies"),
            statements=tuple(statements),
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=exists_sql(sql.SQL(
                "SELECT 1 FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid"
                " WHERE c.oid = {} AND c.relrowsecurity AND p.polname = {}").format(
                    regclass_literal(entry.qname), sql.Literal(TENANT_POLICY))),
            inverse=tuple(inverse),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
            why="the team sees every statement that would break before anything is enforced",
        ))
    return StagePlan("observe", tuple(steps), tuple(notes))
