"""enforce: the flip. Per table, in one short transaction under lock_timeout:

* ``ALTER POLICY rls_migrate_tenant`` turns the observe expression into the enforced
  ``col = (SELECT <current tenant>)`` (``USING`` and ``WITH CHECK``);
* the permissive baseline ``USING (true)`` that observe added is either kept
  (``options.enforce.baseline: keep``: roles other than the application role keep every row,
  the restrictive tenant policy being ``TO <app>`` only) or replaced (``drop``, the
  default): the same policy, altered to grant the application role its tenant's rows only,
  so every other role without a policy of its own sees nothing;
* admin roles keep every row: ``roles.admin_mode: policy`` gives them a permissive
  ``USING (true)`` policy of their own (needed only where the baseline is replaced), and
  ``bypassrls`` requires the attribute (each step checks it, so a role changed since
  prepare stops the flip instead of locking the admins out);
* ``FORCE ROW LEVEL SECURITY`` where the playbook asks, or where the application role owns
  the table (an owner bypasses RLS otherwise).

Order: ``options.enforce.order`` first, then the rest parents first; partitions right after
their parent (a query that names a partition uses the partition's own policies). With
``options.enforce.pause_between_tables`` a pause step (a sleep in the runner, no transaction
open) separates two tables: a ramp. The inverse of every step is the kill switch: the same
table back to observe mode, in one short transaction under lock_timeout.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import PlaybookError
from rls_migrate.executor import Executor
from rls_migrate.outcomes import StepOutcome
from rls_migrate.sqlcompose import as_text, compose, identifier, sep
from rls_migrate.stages import write_truth
from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    TenantTable,
    regclass_literal,
    with_partitions,
)
from rls_migrate.stages.policies import (
    ADMIN_POLICY,
    BASELINE_POLICY,
    TENANT_POLICY,
    check_tenant_type,
    drop_legacy_recorders,
    install_recorders,
    observe_expression,
    tenant_match,
)
from rls_migrate.steps import Estimate, Later, Lock, StagePlan, Step

PAUSE_KIND = "enforce_pause"


@dataclasses.dataclass(frozen=True)
class TableEnforcement:
    """What the flip does to one table; the plan, the done check and verify read it."""

    entry: TenantTable
    force: bool  # FORCE ROW LEVEL SECURITY (and NO FORCE on rollback)
    force_reason: str
    replace_baseline: bool  # the USING (true) baseline becomes the app role's tenant match
    admin_policy: bool  # a permissive USING (true) policy for roles.admin


def manages_baseline(entry: TenantTable) -> bool:
    """Whether observe added (or adds) the permissive baseline on this table: RLS was off, or
    the baseline is there. The same rule as observe's; a table that had RLS of its own keeps
    its own permissive policies deciding what is visible, and enforce leaves them alone."""
    return not entry.table.rls_enabled or any(
        p.name == BASELINE_POLICY for p in entry.table.policies)


def app_owns(ctx: PlanContext, entry: TenantTable) -> bool:
    """The application role owns the table (or is a member of its owner): without FORCE,
    RLS does not apply to it there."""
    return entry.table.owner in ctx.catalog.role_memberships(ctx.playbook.roles.app)


def enforcement(ctx: PlanContext, entry: TenantTable) -> TableEnforcement:
    opts = ctx.playbook.options.enforce
    roles = ctx.playbook.roles
    if entry.plan.force_rls is not None:
        force, reason = entry.plan.force_rls, "tables.<table>.force_rls"
    elif opts.force_rls:
        force, reason = True, "options.enforce.force_rls"
    elif app_owns(ctx, entry):
        force, reason = True, f"the application role {roles.app!r} owns it"
    else:
        force, reason = False, ""
    replace = manages_baseline(entry) and opts.baseline == "drop"
    admin = bool(roles.admin) and roles.admin_mode == "policy" and replace
    return TableEnforcement(entry, force, reason, replace, admin)


def ordered(ctx: PlanContext) -> list[TenantTable]:
    """Tenant tables in flip order: ``options.enforce.order`` first, each partitioned table
    followed by its partitions."""
    tables = {e.qname: e for e in ctx.tenant_tables}
    order: list[QualifiedName] = []
    for name in ctx.playbook.options.enforce.order:
        try:
            qname = QualifiedName.parse(name)
        except ValueError as exc:
            raise PlaybookError(f"options.enforce.order: {exc}") from None
        if qname not in tables:
            raise PlaybookError(
                f"options.enforce.order: {qname} is not a tenant table of this playbook "
                "(strategy root, direct, derive or hint)")
        if qname not in order:
            order.append(qname)
    rank = {q: i for i, q in enumerate(order)}
    first = sorted(ctx.tenant_tables, key=lambda e: rank.get(e.qname, len(rank)))
    return [e for t in first for e in with_partitions(ctx, t)]


def _policy(name: str, entry: TenantTable) -> sql.Composed:
    return compose("SELECT 1 FROM pg_policy WHERE polrelid = {} AND polname = {}",
                   regclass_literal(entry.qname), sql.Literal(name))


def enforced_check(plan: TableEnforcement) -> sql.Composed:
    """True once every part of the flip is in place: the tenant policy calls no recorder
    (pg_depend links a policy to the functions it calls), the baseline no longer applies to
    PUBLIC, the admin policy exists, FORCE is on, as planned. A playbook that asks for more
    later (force_rls) makes the step run again."""
    entry = plan.entry
    parts = [compose(
        "EXISTS ({} AND NOT polpermissive AND NOT EXISTS (SELECT 1 FROM pg_depend d"
        " JOIN pg_proc f ON f.oid = d.refobjid JOIN pg_namespace n ON n.oid = f.pronamespace"
        " WHERE d.classid = 'pg_policy'::regclass AND d.objid = pg_policy.oid"
        " AND d.refclassid = 'pg_proc'::regclass AND n.nspname = {}))",
        _policy(TENANT_POLICY, entry), sql.Literal(TOOLKIT_SCHEMA))]
    if plan.replace_baseline:
        parts.append(compose("EXISTS ({} AND NOT polroles @> '{{0}}'::oid[])",
                             _policy(BASELINE_POLICY, entry)))
    if plan.admin_policy:
        parts.append(compose("EXISTS ({})", _policy(ADMIN_POLICY, entry)))
    if plan.force:
        parts.append(compose(
            "EXISTS (SELECT 1 FROM pg_class WHERE oid = {} AND relforcerowsecurity)",
            regclass_literal(entry.qname)))
    return compose("SELECT {}", sep(" AND ").join(parts))


def _require_bypassrls(admins: tuple[str, ...]) -> sql.Composed:
    """A guard that fails the step when an admin role lacks BYPASSRLS (admin_mode bypassrls):
    the flip would hide every row from it."""
    body = compose(
        "DECLARE missing text;\n"
        "BEGIN\n"
        "  SELECT string_agg(quote_ident(rolname), ', ') INTO missing FROM pg_roles\n"
        "   WHERE rolname = ANY ({}) AND NOT (rolbypassrls OR rolsuper);\n"
        "  IF missing IS NOT NULL THEN\n"
        "    RAISE EXCEPTION 'roles.admin_mode is bypassrls but % lack(s) BYPASSRLS: after the"
        " flip they would see no row. ALTER ROLE ... BYPASSRLS (as a superuser), or use"
        " admin_mode: policy', missing;\n"
        "  END IF;\n"
        "END", sql.Literal(list(admins)))
    return compose("DO {}", sql.Literal(as_text(body)))


def _steps_for(ctx: PlanContext, plan: TableEnforcement) -> Step:
    entry = plan.entry
    check_tenant_type(ctx, entry)
    roles = ctx.playbook.roles
    parts = [f"enforce: {roles.app} sees its tenant's rows only"]
    if plan.replace_baseline:
        parts.append(f"baseline USING (true) narrowed to {roles.app}'s tenant")
    if plan.admin_policy:
        parts.append(f"{ADMIN_POLICY} USING (true) for {', '.join(roles.admin)}")
    if plan.force:
        parts.append(f"FORCE ROW LEVEL SECURITY ({plan.force_reason})")
    return Step(
        id=f"enforce:{entry.qname}",
        stage="enforce",
        kind="enforce_policy",
        table=entry.qname,
        description="; ".join(parts),
        statements=Later(lambda: _enforce_statements(ctx, plan)),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=Later(lambda: enforced_check(plan)),
        inverse=Later(lambda: _kill_switch(ctx, plan)),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="the flip, gated on a clean observe report; its inverse is the kill switch "
            "(rollback --to observe)",
    )


def _enforce_statements(ctx: PlanContext, plan: TableEnforcement) -> tuple[sql.Composable, ...]:
    entry = plan.entry
    ident = entry.ident
    roles = ctx.playbook.roles
    match = tenant_match(ctx, entry)
    statements: list[sql.Composable] = []
    if roles.admin and roles.admin_mode == "bypassrls":
        statements.append(_require_bypassrls(roles.admin))
    statements.append(compose("ALTER POLICY {} ON {} USING ({}) WITH CHECK ({})",
                              identifier(TENANT_POLICY), ident, match, match))
    # Nothing flags statements any more: observe's write-truth triggers go (under the lock
    # this step holds anyway); the kill switch puts them back.
    statements += write_truth.remove(entry)
    if plan.replace_baseline:
        # ALTER, not DROP: the baseline's presence is how observe's rollback knows it turned
        # RLS on (and must turn it off again).
        statements.append(compose("ALTER POLICY {} ON {} TO {} USING ({}) WITH CHECK ({})",
                                  identifier(BASELINE_POLICY), ident,
                                  identifier(roles.app), match, match))
    if plan.admin_policy:
        admin = identifier(ADMIN_POLICY)
        admins = sep(", ").join(identifier(r) for r in roles.admin)
        statements += [
            compose("DROP POLICY IF EXISTS {} ON {}", admin, ident),
            compose("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO {} USING (true)"
                    " WITH CHECK (true)", admin, ident, admins)]
    if plan.force:
        statements.append(compose("ALTER TABLE {} FORCE ROW LEVEL SECURITY", ident))
    return tuple(statements)


def _kill_switch(ctx: PlanContext, plan: TableEnforcement) -> tuple[sql.Composable, ...]:
    """The inverse: back to observe. It installs the recorders it points the policy at, so
    it works even where they are gone, or are those of an older version."""
    entry = plan.entry
    ident = entry.ident
    inverse: list[sql.Composable] = [
        *install_recorders(ctx, entry),
        compose("ALTER POLICY {} ON {} USING ({}) WITH CHECK ({})",
                identifier(TENANT_POLICY), ident, observe_expression(ctx, entry, "read"),
                observe_expression(ctx, entry, "write")),
        *drop_legacy_recorders(ctx, entry),
        *write_truth.install(ctx, entry)]
    if plan.replace_baseline:
        inverse.append(compose("ALTER POLICY {} ON {} TO PUBLIC USING (true) WITH CHECK (true)",
                               identifier(BASELINE_POLICY), ident))
    if plan.admin_policy:
        inverse.append(compose("DROP POLICY IF EXISTS {} ON {}", identifier(ADMIN_POLICY),
                               ident))
    if plan.force:
        inverse.append(compose("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY", ident))
    return tuple(inverse)


def _pause(entry: TenantTable, check: sql.SQL | sql.Composed, seconds: float) -> Step:
    """A pause before flipping ``entry``. It is "done" once that table is enforced, so a
    resumed or repeated ramp pauses exactly before the tables it still flips."""
    return Step(
        id=f"enforce_pause:{entry.qname}",
        stage="enforce",
        kind=PAUSE_KIND,
        table=None,
        description=f"pause {seconds:g} s before enforcing {entry.qname} "
                    "(options.enforce.pause_between_tables)",
        # What a psql script runs; `apply` sleeps in the runner instead, holding no
        # transaction (no snapshot that would hold back vacuum).
        statements=(compose("SELECT pg_sleep({})", sql.Literal(seconds)),),
        transactional=False,
        done_check=check,
        estimate=Estimate(seconds=seconds),
        why="a ramp: watch the application between two tables",
    )


def plan(ctx: PlanContext) -> StagePlan:
    opts = ctx.playbook.options.enforce
    roles = ctx.playbook.roles
    notes: list[str] = []
    if roles.admin:
        names = ", ".join(roles.admin)
        if roles.admin_mode == "bypassrls":
            notes.append(f"admin roles {names} keep every row through their BYPASSRLS "
                         "attribute (admin_mode: bypassrls; each step checks they have it)")
        elif opts.baseline == "drop":
            notes.append(f"admin roles {names} keep every row through a permissive policy "
                         f"{ADMIN_POLICY} USING (true) for them (admin_mode: policy); the "
                         "restrictive tenant policy applies to the application role only")
        else:
            notes.append(f"admin roles {names} keep every row through the kept baseline "
                         "USING (true) (baseline: keep); the restrictive tenant policy applies "
                         "to the application role only")
    if opts.baseline == "keep":
        notes.append("baseline: keep: every role but the application role keeps seeing every "
                     "row (verify warns about the USING (true) policy left in place)")
    else:
        notes.append(f"baseline: drop: roles other than {roles.app} and the admin roles see no "
                     "row of the tenant tables after the flip")
    steps: list[Step] = []
    pause_s = opts.pause_between_tables / 1000.0
    forced: list[str] = []
    for entry in ordered(ctx):
        enforce = enforcement(ctx, entry)
        step = _steps_for(ctx, enforce)
        if pause_s > 0 and steps and not entry.table.is_partition:
            assert step.done_check is not None
            steps.append(_pause(entry, step.done_check, pause_s))
        steps.append(step)
        if enforce.force and not entry.table.is_partition:
            forced.append(f"{entry.qname} ({enforce.force_reason})")
    if forced:
        notes.append("FORCE ROW LEVEL SECURITY on " + ", ".join(forced) + ": the owner is "
                     "filtered too, so later data work as the owner (a backfill of a new "
                     "table) needs BYPASSRLS or a tenant context; rollback --to observe sets "
                     "NO FORCE again")
    if opts.order:
        notes.append("order: " + ", ".join(opts.order) + " first (options.enforce.order)")
    return StagePlan("enforce", tuple(steps), tuple(notes))


@Executor.register(PAUSE_KIND)
def run_pause(executor: Executor, step: Step) -> StepOutcome:
    """Sleep between two tables, outside any transaction (the executor's sleep: tests inject
    it; Ctrl-C interrupts it like any step)."""
    started = dt.datetime.now(dt.UTC)
    executor.log.info("enforce.pause", seconds=step.estimate.seconds, step=step.id)
    executor.sleep(step.estimate.seconds)
    return StepOutcome.finish(step, "done", started=started,
                              details={"paused_s": step.estimate.seconds})
