"""enforce: the flip. ``ALTER POLICY`` turns each observe expression into the enforced
``col = <current tenant>``; FORCE ROW LEVEL SECURITY where asked; admin roles keep access.
Each table in its own short transaction under lock_timeout, in the playbook's order."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    exists_sql,
    regclass_literal,
    with_partitions,
)
from rls_migrate.stages.policies import (
    ADMIN_POLICY,
    BASELINE_POLICY,
    TENANT_POLICY,
    observe_expression,
    tenant_match,
)
from rls_migrate.steps import Estimate, Lock, StagePlan, Step


def ordered(ctx: PlanContext) -> list[TenantTable]:
    order = [QualifiedName.parse(n) for n in ctx.playbook.options.enforce.order]
    rank = {q: i for i, q in enumerate(order)}
    tables = sorted(ctx.tenant_tables, key=lambda e: rank.get(e.qname, len(rank)))
    # Partitions right after their parent: each one is queried directly too.
    return [e for t in tables for e in with_partitions(ctx, t)]


def plan(ctx: PlanContext) -> StagePlan:
    opts = ctx.playbook.options.enforce
    roles = ctx.playbook.roles
    steps: list[Step] = []
    notes: list[str] = []
    if roles.admin:
        notes.append(
            f"admin roles {', '.join(roles.admin)} keep every row through "
            + ("a permissive policy USING (true) for them (restrictive tenant policy applies "
               "to the application role only)" if roles.admin_mode == "policy" else
               "their BYPASSRLS attribute"))
    for entry in ordered(ctx):
        ident = entry.ident
        force = entry.plan.force_rls if entry.plan.force_rls is not None else opts.force_rls
        match = tenant_match(ctx, entry)
        statements: list[sql.Composable] = [
            sql.SQL("ALTER POLICY {} ON {} USING ({}) WITH CHECK ({})").format(
                sql.Identifier(TENANT_POLICY), ident, match, match)]
        inverse: list[sql.Composable] = [
            sql.SQL("ALTER POLICY {} ON {} USING ({}) WITH CHECK ({})").format(
                sql.Identifier(TENANT_POLICY), ident, observe_expression(ctx, entry, "read"),
                observe_expression(ctx, entry, "write"))]
        if roles.admin and roles.admin_mode == "policy":
            admins = sql.SQL(", ").join(sql.Identifier(r) for r in roles.admin)
            statements += [
                sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(ADMIN_POLICY),
                                                                 ident),
                sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING (true)"
                        " WITH CHECK (true)").format(sql.Identifier(ADMIN_POLICY), ident, admins)]
            inverse.append(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(
                sql.Identifier(ADMIN_POLICY), ident))
        app = sql.Identifier(roles.app)
        if opts.baseline == "drop":
            # The app role still needs one permissive policy: the tenant match itself.
            statements += [
                sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(BASELINE_POLICY),
                                                                 ident),
                sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING ({})"
                        " WITH CHECK ({})").format(sql.Identifier(BASELINE_POLICY), ident, app,
                                                   match, match)]
            inverse += [
                sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(BASELINE_POLICY),
                                                                 ident),
                sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING (true)"
                        " WITH CHECK (true)").format(sql.Identifier(BASELINE_POLICY), ident)]
        if force and not entry.table.rls_forced:
            statements.append(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(ident))
            inverse.append(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(ident))
        steps.append(Step(
            id=f"enforce:{entry.qname}",
            stage="enforce",
            kind="enforce_policy",
            table=entry.qname,
            description="enforce: rows of other tenants disappear for the application role"
                        + (", FORCE ROW LEVEL SECURITY" if force else ""),
            statements=tuple(statements),
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=exists_sql(sql.SQL(
                "SELECT 1 FROM pg_policy WHERE polrelid = {} AND polname = {}"
                " AND pg_get_expr(polqual, polrelid) NOT LIKE {}").format(
                    regclass_literal(entry.qname), sql.Literal(TENANT_POLICY),
                    sql.Literal("%observe_%"))),
            inverse=tuple(reversed(inverse)),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
            why="the flip, gated on a clean observe report",
        ))
    return StagePlan("enforce", tuple(steps), tuple(notes))
