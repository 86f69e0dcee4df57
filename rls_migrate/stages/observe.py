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

from rls_migrate.sqlcompose import as_text, compose, identifier
from rls_migrate.stages import write_truth
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
    check_tenant_type,
    drop_legacy_recorders,
    install_recorders,
    observe_enables_rls,
    observe_expression,
    recorder_signature,
)
from rls_migrate.steps import Estimate, Later, Lock, StagePlan, Step

PARAMETER_SETTING = "log_parameter_max_length_on_error"


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
    notes: list[str] = [
        "while observing, statements that read a protected table run without parallel "
        "workers (the recorder keeps a per-statement marker, which parallel mode forbids); "
        "enforce has no recorder",
        "the recorder runs at most once per statement, table and operation (an InitPlan): "
        "its counters in pg_stat_user_functions count statements, not rows",
        "write-truth triggers (observe-writes steps, SHARE ROW EXCLUSIVE: writes wait, reads "
        "go on): a recorded UPDATE or DELETE notes whether it changed another tenant's row, "
        "so replay can judge one whose rows are gone; other statements pay a setting read "
        "and a comparison per changed row; enforce removes them",
    ]
    capture = _capture_parameters(ctx)
    if capture is not None:
        steps.append(capture)
        notes.append(
            f"{PARAMETER_SETTING} = {ctx.playbook.options.observe.capture_parameters} for "
            f"{ctx.playbook.roles.app} in this database (options.observe.capture_parameters): "
            "the server log gets the bound parameters of each recorded statement, for "
            "report --confirm. New sessions pick it up (restart pooled connections); errors "
            "the application receives carry a CONTEXT line with their parameters too; "
            "rollback of observe resets it")
    else:
        notes.append("options.observe.capture_parameters is 0: statements sent with bound "
                     "parameters cannot be replayed, and the enforce gate refuses them as "
                     "unconfirmable")
    for entry in (e for t in ctx.tenant_tables for e in with_partitions(ctx, t)):
        check_tenant_type(ctx, entry)
        enables = observe_enables_rls(entry)
        notes += _notes(entry, enables)
        steps.append(_policy_step(ctx, entry, enables))
        steps.append(write_truth.step(ctx, entry))
    return StagePlan("observe", tuple(steps), tuple(notes))


def _policy_step(ctx: PlanContext, entry: TenantTable, enables: bool) -> Step:
    return Step(
        id=f"observe:{entry.qname}",
        stage="observe",
        kind="observe_policy",
        table=entry.qname,
        description="restrictive tenant policy in observe mode (records, never filters)"
                    + (", a permissive baseline USING (true) and ENABLE ROW LEVEL SECURITY"
                       if enables else " beside the table's own policies"),
        statements=Later(lambda: _policy_statements(ctx, entry, enables)),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=Later(lambda: exists_sql(compose(
            "SELECT 1 FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid"
            " WHERE c.oid = {} AND c.relrowsecurity AND p.polname = {}",
            regclass_literal(entry.qname), sql.Literal(TENANT_POLICY)))),
        inverse=Later(lambda: _policy_inverse(ctx, entry, enables)),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="the team sees every statement that would break before anything is enforced",
    )


def _policy_statements(ctx: PlanContext, entry: TenantTable,
                       enables: bool) -> tuple[sql.Composable, ...]:
    ident = entry.ident
    tenant_policy = identifier(TENANT_POLICY)
    baseline_policy = identifier(BASELINE_POLICY)
    statements: list[sql.Composable] = install_recorders(ctx, entry)
    statements += [
        compose("DROP POLICY IF EXISTS {} ON {}", tenant_policy, ident),
        compose("CREATE POLICY {} ON {} AS RESTRICTIVE FOR ALL TO {} USING ({})"
                " WITH CHECK ({})", tenant_policy, ident, identifier(ctx.playbook.roles.app),
                observe_expression(ctx, entry, "read"),
                observe_expression(ctx, entry, "write")),
        *drop_legacy_recorders(ctx, entry),
    ]
    if enables:
        statements += [
            compose("DROP POLICY IF EXISTS {} ON {}", baseline_policy, ident),
            compose("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING (true)"
                    " WITH CHECK (true)", baseline_policy, ident),
            compose("ALTER TABLE {} ENABLE ROW LEVEL SECURITY", ident),
        ]
    return tuple(statements)


def _policy_inverse(ctx: PlanContext, entry: TenantTable,
                    enables: bool) -> tuple[sql.Composable, ...]:
    ident = entry.ident
    inverse: list[sql.Composable] = []
    if enables:
        inverse.append(compose("ALTER TABLE {} DISABLE ROW LEVEL SECURITY", ident))
    inverse += [
        compose("DROP POLICY IF EXISTS {} ON {}", identifier(TENANT_POLICY), ident),
        compose("DROP POLICY IF EXISTS {} ON {}", identifier(BASELINE_POLICY), ident),
        *(compose("DROP FUNCTION IF EXISTS {}", recorder_signature(ctx, entry, operation))
          for operation in OPERATIONS),
    ]
    return tuple(inverse)


def _role_setting(role: str, value: int | None) -> sql.Composed:
    """``ALTER ROLE <app> IN DATABASE <this one> SET|RESET ...``: the database is whichever
    the step runs in, so the statement is built on the server (format %I)."""
    if value is None:
        body = compose("BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I RESET {}', {},"
                       " current_database()); END", sql.SQL(PARAMETER_SETTING), sql.Literal(role))
    else:
        body = compose("BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET {} = %s', {},"
                       " current_database(), {}); END", sql.SQL(PARAMETER_SETTING),
                       sql.Literal(role), sql.Literal(value))
    return compose("DO {}", sql.Literal(as_text(body)))


def _capture_parameters(ctx: PlanContext) -> Step | None:
    """The application role's sessions log the bound parameters of a statement with any
    message it raises, the recorder's LOG line included."""
    size = ctx.playbook.options.observe.capture_parameters
    if not size:
        return None
    role = ctx.playbook.roles.app
    return Step(
        id="observe:capture-parameters",
        stage="observe",
        kind="observe_parameters",
        table=None,
        description=f"ALTER ROLE {role} IN DATABASE <this one> SET {PARAMETER_SETTING} = "
                    f"{size} (bound parameters of recorded statements in the server log)",
        statements=(_role_setting(role, size),),
        lock=Lock.NONE,
        done_check=exists_sql(compose(
            "SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = current_database() AND s.setrole = (SELECT r.oid FROM pg_roles r WHERE r.rolname = {})"
            " AND {} = ANY (s.setconfig)", sql.Literal(role),
            sql.Literal(f"{PARAMETER_SETTING}={size}"))),
        inverse=(_role_setting(role, None),),
        inverse_lock=Lock.NONE,
        estimate=Estimate(seconds=0.01),
        why="a statement sent with parameters can only be replayed (report --confirm) with "
            "them",
    )
