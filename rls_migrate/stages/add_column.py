"""add-column: the tenant column on every derived table, the trigger that keeps it filled
for rows written from now on, and a NOT VALID foreign key to the tenant root.

``ADD COLUMN`` without a default is a catalog change: ACCESS EXCLUSIVE for milliseconds,
taken under lock_timeout and retried. Without the sync trigger the backfill would never
converge: rows inserted after a batch passed would stay empty."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.sqlcompose import compose
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    column_exists_check,
    columns_sql,
    constraint_exists_check,
    function_name,
    object_name,
    parent_match,
    trigger_exists_check,
)
from rls_migrate.steps import Estimate, Lock, StagePlan, Step

SYNC_TRIGGER_PREFIX = "rls_migrate_sync_"


def sync_trigger_name(entry: TenantTable) -> str:
    return object_name(SYNC_TRIGGER_PREFIX, entry.qname)


def tenant_fk_name(entry: TenantTable) -> str:
    return object_name("", entry.qname, f"_{entry.column}_rlsm_fkey")


def sync_function_body(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """PL/pgSQL: fill the tenant column from the parent row on INSERT (when empty) and when
    the row moves to another parent."""
    assert entry.parent is not None and entry.parent_column is not None
    col = sql.Identifier(entry.column)
    new_fk = sql.SQL(", ").join(compose("NEW.{}", sql.Identifier(c))
                                for c in entry.parent.columns)
    old_fk = sql.SQL(", ").join(compose("OLD.{}", sql.Identifier(c))
                                for c in entry.parent.columns)
    match = parent_match(entry, "NEW")
    return compose("BEGIN\n"
        "  IF TG_OP = 'INSERT' AND NEW.{col} IS NOT NULL THEN RETURN NEW; END IF;\n"
        "  IF TG_OP = 'UPDATE' AND ROW({new_fk}) IS NOT DISTINCT FROM ROW({old_fk})\n"
        "     AND NEW.{col} IS NOT NULL THEN RETURN NEW; END IF;\n"
        "  SELECT p.{pcol} INTO NEW.{col} FROM {parent} AS p WHERE {match};\n"
        "  RETURN NEW;\n"
        "END", col=col, new_fk=new_fk, old_fk=old_fk, pcol=sql.Identifier(entry.parent_column),
             parent=entry.parent.qname.ident, match=match)


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        if not entry.added:
            continue
        assert entry.parent is not None
        table = entry.table
        ident = entry.ident
        col = sql.Identifier(entry.column)
        steps.append(Step(
            id=f"add_column:{entry.qname}",
            stage="add-column",
            kind="add_column",
            table=entry.qname,
            description=f"add {entry.column} {ctx.key_column_type()} (nullable, no default: "
                        "a catalog-only change, no rewrite)",
            statements=(compose("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                ident, col, sql.SQL(ctx.key_column_type())),),
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=column_exists_check(entry.qname, entry.column),
            inverse=(compose("ALTER TABLE {} DROP COLUMN IF EXISTS {}", ident, col),),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            inverse_needs="drop_columns",
            estimate=Estimate(seconds=0.01),
            why="derived tables need their own tenant column so a policy can filter them "
                "without a join",
        ))
        fn = function_name("sync", entry.qname)
        body = sync_function_body(ctx, entry)
        trigger = sync_trigger_name(entry)
        fk_cols = columns_sql(entry.parent.columns)
        steps.append(Step(
            id=f"sync_trigger:{entry.qname}",
            stage="add-column",
            kind="sync_trigger",
            table=entry.qname,
            description=f"trigger {trigger}: new and re-parented rows take {entry.column} from "
                        f"{entry.parent.qname}",
            statements=(
                compose("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql"
                    " SET search_path = pg_catalog, pg_temp AS {body}", fn=fn, body=sql.Literal(body.as_string(None))),
                compose("DROP TRIGGER IF EXISTS {} ON {}", sql.Identifier(trigger), ident),
                compose("CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF {} ON {}"
                    " FOR EACH ROW EXECUTE FUNCTION {}()", sql.Identifier(trigger), fk_cols, ident, fn),
            ),
            lock=Lock.SHARE_ROW_EXCLUSIVE,
            done_check=trigger_exists_check(entry.qname, trigger),
            inverse=(
                compose("DROP TRIGGER IF EXISTS {} ON {}", sql.Identifier(trigger), ident),
                compose("DROP FUNCTION IF EXISTS {}()", fn),
            ),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            why="without it the backfill never converges: rows written after a batch passed "
                "would stay empty",
        ))
        root = ctx.root
        if table.is_partitioned and ctx.catalog.major < 18:
            notes.append(f"{entry.qname}: PostgreSQL {ctx.catalog.major} cannot add a NOT VALID "
                         "foreign key on a partitioned table; the tenant foreign key is skipped "
                         "(NOT NULL and the policies still apply)")
            continue
        fk = tenant_fk_name(entry)
        steps.append(Step(
            id=f"tenant_fk:{entry.qname}",
            stage="add-column",
            kind="add_foreign_key",
            table=entry.qname,
            description=f"foreign key {entry.column} -> {root}, NOT VALID (validated by "
                        "constrain without blocking writes)",
            statements=(compose("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) NOT VALID", ident, sql.Identifier(fk), col, root.ident,
                     sql.Identifier(ctx.playbook.tenant.key)),),
            lock=Lock.SHARE_ROW_EXCLUSIVE,
            done_check=constraint_exists_check(entry.qname, fk),
            inverse=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                ident, sql.Identifier(fk)),),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            why="the key must name an existing tenant; NOT VALID skips the scan of old rows",
        ))
    if not steps:
        notes.append("no derived table: every tenant table already carries the key")
    else:
        notes.append(PREPARED_SELECT_STAR)
    return StagePlan("add-column", tuple(steps), tuple(notes))


PREPARED_SELECT_STAR = (
    "a new column changes what `SELECT *` returns: a session that prepared such a statement on "
    "one of these tables gets 'cached plan must not change result type' (SQLSTATE 0A000) "
    "when it runs it again; with psycopg 3 (it prepares after 5 executions) on every run "
    "until the connection is replaced. Name the columns, or disable server-side prepares "
    "(psycopg: prepare_threshold=None), or recycle the application's pooled connections "
    "right after add-column")
