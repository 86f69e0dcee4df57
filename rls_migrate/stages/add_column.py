"""add-column: the tenant column on every derived table, the trigger that keeps it filled
for rows written from now on, and a NOT VALID foreign key to the tenant root.

``ADD COLUMN`` without a default is a catalog change: ACCESS EXCLUSIVE for milliseconds,
taken under lock_timeout and retried. Without the sync trigger the backfill would never
converge: rows inserted after a batch passed would stay empty."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.sqlcompose import compose, identifier
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    column_exists_check,
    columns_sql,
    constraint_exists_check,
    function_name,
    object_name,
    trigger_exists_check,
)
from rls_migrate.stages.sync_trigger import (
    body_text,
    create_function,
    function_current_check,
    owner_function_body,
    owner_trigger_name,
    sync_function_body,
    sync_trigger_name,
)
from rls_migrate.steps import Estimate, Later, Lock, StagePlan, Step


def tenant_fk_name(entry: TenantTable) -> str:
    return object_name("", entry.qname, f"_{entry.column}_rlsm_fkey")


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        if not entry.added:
            continue
        assert entry.parent is not None
        table = entry.table
        steps.append(_add_column_step(ctx, entry))
        steps.append(_sync_step(ctx, entry))
        if entry.qname in ctx.catalog.retired_sync:
            notes.append(f"{entry.qname}: the index stage retired its sync trigger"
                         f"{' and owner trigger' if entry.owned else ''} (sync_triggers: drop):"
                         " add-column does not create them again; rolling the index stage back "
                         "does")
        if entry.owned:
            steps.append(_owner_step(ctx, entry))
        if table.is_partitioned and ctx.catalog.major < 18:
            notes.append(f"{entry.qname}: PostgreSQL {ctx.catalog.major} cannot add a NOT VALID "
                         "foreign key on a partitioned table; the tenant foreign key is skipped "
                         "(NOT NULL and the policies still apply)")
            continue
        steps.append(_tenant_fk_step(ctx, entry))
    if not steps:
        notes.append("no derived table: every tenant table already carries the key")
    else:
        notes.append(PREPARED_SELECT_STAR)
    return StagePlan("add-column", tuple(steps), tuple(notes))


def _add_column_step(ctx: PlanContext, entry: TenantTable) -> Step:
    return Step(
        id=f"add_column:{entry.qname}",
        stage="add-column",
        kind="add_column",
        table=entry.qname,
        description=f"add {entry.column} {ctx.tenant_type(entry)} (nullable, no default: "
                    "a catalog-only change, no rewrite)",
        statements=Later(lambda: (compose("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
            entry.ident, identifier(entry.column), sql.SQL(ctx.tenant_type(entry))),)),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=Later(lambda: column_exists_check(entry.qname, entry.column)),
        inverse=Later(lambda: (compose("ALTER TABLE {} DROP COLUMN IF EXISTS {}",
                                       entry.ident, identifier(entry.column)),)),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        inverse_needs="drop_columns",
        estimate=Estimate(seconds=0.01),
        why="derived tables need their own tenant column so a policy can filter them "
            "without a join",
    )


def _tenant_fk_step(ctx: PlanContext, entry: TenantTable) -> Step:
    root = ctx.root
    fk = tenant_fk_name(entry)
    return Step(
        id=f"tenant_fk:{entry.qname}",
        stage="add-column",
        kind="add_foreign_key",
        table=entry.qname,
        description=f"foreign key {entry.column} -> {root}, checked at commit, NOT VALID "
                    "(validated by constrain without blocking writes)",
        # DEFERRABLE INITIALLY DEFERRED: an application that writes a tenant's rows
        # before the tenant row itself in one transaction (Prisma's nested create of an
        # organisation and its settings) commits as it did before the migration.
        statements=Later(lambda: (compose(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}"
            " ({}) DEFERRABLE INITIALLY DEFERRED NOT VALID", entry.ident,
            identifier(fk), identifier(entry.column), root.ident,
            identifier(ctx.playbook.tenant.key)),)),
        lock=Lock.SHARE_ROW_EXCLUSIVE,
        done_check=Later(lambda: constraint_exists_check(entry.qname, fk)),
        inverse=Later(lambda: (compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                                       entry.ident, identifier(fk)),)),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        why="the key must name an existing tenant; NOT VALID skips the scan of old rows",
    )


def _sync_step(ctx: PlanContext, entry: TenantTable) -> Step:
    assert entry.parent is not None
    trigger = sync_trigger_name(entry)
    source = (f"the row of {entry.parent.qname} that points at it, else the writer's tenant"
              if entry.owned else f"{entry.parent.qname}")
    return Step(
        id=f"sync_trigger:{entry.qname}",
        stage="add-column",
        kind="sync_trigger",
        table=entry.qname,
        description=f"trigger {trigger}: new and re-parented rows take {entry.column} from "
                    f"{source}; a link set to NULL keeps it",
        statements=Later(lambda: _sync_statements(ctx, entry)),
        lock=Lock.SHARE_ROW_EXCLUSIVE,
        done_check=Later(lambda: _unless_retired(ctx, entry, compose(
            "SELECT ({}) AND ({})", trigger_exists_check(entry.qname, trigger),
            function_current_check(function_name("sync", entry.qname),
                                   _sync_body(ctx, entry))))),
        inverse=Later(lambda: (
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(trigger), entry.ident),
            compose("DROP FUNCTION IF EXISTS {}()", function_name("sync", entry.qname)),
        )),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        why="without it the backfill never converges: rows written after a batch passed "
            "would stay empty",
    )


def _sync_body(ctx: PlanContext, entry: TenantTable) -> str:
    """The sync function's body, built once per plan: the step installs it and its done
    check compares the installed one with it."""
    return ctx.once(("sync_body", entry.qname),
                    lambda: body_text(sync_function_body(ctx, entry)))


def _sync_statements(ctx: PlanContext, entry: TenantTable) -> tuple[sql.Composable, ...]:
    assert entry.parent is not None
    ident = entry.ident
    fn = function_name("sync", entry.qname)
    trigger = identifier(sync_trigger_name(entry))
    return (
        create_function(fn, _sync_body(ctx, entry)),
        compose("DROP TRIGGER IF EXISTS {} ON {}", trigger, ident),
        compose("CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF {} ON {}"
                " FOR EACH ROW EXECUTE FUNCTION {}()", trigger,
                columns_sql(entry.parent.columns), ident, fn),
    )


def _unless_retired(ctx: PlanContext, entry: TenantTable, check: sql.Composed) -> sql.Composed:
    """The trigger's done check; once the index stage retired the table's triggers
    (``options.index.sync_triggers: drop``, journaled), done for good: a rerun of add-column
    must not put back what the application proved it no longer needs (the index stage's
    rollback does, and the journal then no longer has them retired)."""
    if entry.qname in ctx.catalog.retired_sync:
        return compose("SELECT true")
    return check


def _owner_step(ctx: PlanContext, entry: TenantTable) -> Step:
    """The AFTER trigger on the owner of a reverse one-to-one table."""
    assert entry.parent is not None
    owner = entry.parent.qname
    fn = function_name("owns", entry.qname)
    body = body_text(owner_function_body(ctx, entry))
    trigger = owner_trigger_name(entry)
    owner_tenant = ctx.playbook.tenant_column(owner) or ctx.playbook.tenant.column
    watched = tuple(dict.fromkeys((*entry.parent.ref_columns, owner_tenant)))
    return Step(
        id=f"owner_trigger:{entry.qname}",
        stage="add-column",
        kind="sync_trigger",
        table=owner,
        description=f"trigger {trigger} on {owner}: a row written or re-pointed there gives "
                    f"its tenant to the {entry.qname} row it points at",
        statements=(
            create_function(fn, body),
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(trigger), owner.ident),
            compose("CREATE TRIGGER {} AFTER INSERT OR UPDATE OF {} ON {}"
                    " FOR EACH ROW EXECUTE FUNCTION {}()", identifier(trigger),
                    columns_sql(watched), owner.ident, fn),
        ),
        lock=Lock.SHARE_ROW_EXCLUSIVE,
        done_check=_unless_retired(ctx, entry, compose(
            "SELECT ({}) AND ({})", trigger_exists_check(owner, trigger),
            function_current_check(fn, body))),
        inverse=(
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(trigger), owner.ident),
            compose("DROP FUNCTION IF EXISTS {}()", fn),
        ),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        why=f"{entry.qname} rows are often written before the row that owns them: they get "
            "their owner's tenant when it arrives",
    )


PREPARED_SELECT_STAR = (
    "a new column changes what `SELECT *` returns: a session that prepared such a statement on "
    "one of these tables gets 'cached plan must not change result type' (SQLSTATE 0A000) "
    "when it runs it again; with psycopg 3 (it prepares after 5 executions) on every run "
    "until the connection is replaced. Name the columns, or disable server-side prepares "
    "(psycopg: prepare_threshold=None), or recycle the application's pooled connections "
    "right after add-column")
