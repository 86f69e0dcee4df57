"""observe: RLS on, policies that change no result but record every would-be violation.

Per table, one short transaction under lock_timeout: ENABLE ROW LEVEL SECURITY, a PERMISSIVE
baseline ``USING (true)`` where the table has no permissive policy (without one every row
would be denied), and a RESTRICTIVE tenant policy ``col = <tenant> OR record(col)`` whose
recorder returns true. Being RESTRICTIVE, it can never widen what other policies grant."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    exists_sql,
    regclass_literal,
    with_partitions,
)
from rls_migrate.stages.policies import (
    BASELINE_POLICY,
    TENANT_POLICY,
    observe_expression,
    recorder,
    recorder_function,
)
from rls_migrate.steps import Estimate, Lock, StagePlan, Step


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    app = sql.Identifier(ctx.playbook.roles.app)
    schema = sql.Identifier(TOOLKIT_SCHEMA)
    notes: list[str] = []
    for entry in (e for t in ctx.tenant_tables for e in with_partitions(ctx, t)):
        if entry.table.is_partitioned:
            notes.append(f"{entry.qname}: its partitions get the same policies (a query that "
                         "names a partition uses the partition's own); a partition created "
                         "later needs them too: run plan and apply --stage observe again")
        ident = entry.ident
        has_permissive = any(p.permissive and p.name != BASELINE_POLICY
                             for p in entry.table.policies)
        statements: list[sql.Composable] = [
            recorder_function(ctx, entry, "read"),
            recorder_function(ctx, entry, "write"),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(schema),
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(TENANT_POLICY), ident),
            sql.SQL("CREATE POLICY {} ON {} AS RESTRICTIVE FOR ALL TO {} USING ({}) WITH CHECK ({})"
                    ).format(sql.Identifier(TENANT_POLICY), ident, app,
                             observe_expression(ctx, entry, "read"),
                             observe_expression(ctx, entry, "write")),
        ]
        if not has_permissive:
            statements += [
                sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(
                    sql.Identifier(BASELINE_POLICY), ident),
                sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING (true)"
                        " WITH CHECK (true)").format(sql.Identifier(BASELINE_POLICY), ident),
            ]
        statements.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ident))
        inverse: list[sql.Composable] = []
        if not entry.table.rls_enabled:
            inverse.append(sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(ident))
        inverse += [
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(TENANT_POLICY), ident),
            sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(BASELINE_POLICY),
                                                             ident),
            sql.SQL("DROP FUNCTION IF EXISTS {}").format(recorder(entry, "read")),
            sql.SQL("DROP FUNCTION IF EXISTS {}").format(recorder(entry, "write")),
        ]
        steps.append(Step(
            id=f"observe:{entry.qname}",
            stage="observe",
            kind="observe_policy",
            table=entry.qname,
            description="ENABLE RLS with a restrictive tenant policy in observe mode (records, "
                        "never filters)" + ("" if has_permissive else
                                            " and a permissive baseline USING (true)"),
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
